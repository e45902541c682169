"""The teacher's prompt for ``t1 generate``: what a large Qwen3 is asked so that its answer is the reasoning a
retriever needs before it embeds a query. Our wording and our design (docs/generate.md); override the template with
``--prompt TEXT`` or ``--prompt-file FILE``.

The user message is ``template.format(task=..., query=...)``, rendered with the tokenizer's chat template (generation
prompt added, Qwen3's thinking block turned off: ``enable_thinking=False``, which other templates ignore). ``task``
is the record's own instruction field when it has one, else the instruction of its BRIGHT-style domain (the
record's ``domain`` or ``--domain``; the tables of ``t1_jax.text`` plus ``text.query_domain_instructions``), else
:data:`DEFAULT_TASK`. The query text is tokenized on its own (``split_special_tokens``: a literal ``<|im_end|>`` in
a query stays text) and cut so that the whole prompt fits ``text.max_query_tokens`` (as the student's prompt does:
``t1_jax.text``); the template is never cut.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from t1_jax.config import TextConfig
from t1_jax.text import DOMAIN_QUERY_INSTRUCTIONS

DEFAULT_TASK = "Given a search query, find documents that help answer it."

DEFAULT_TEMPLATE = (
    "{task}\n\n"
    "Query: {query}\n\n"
    "Before any document is searched, write the reasoning a retriever needs for this query, as one short paragraph "
    "of plain text (no lists, no headings, at most 150 words): what the query is really asking, in plain words; "
    "which concepts, technical terms, names, methods or theorems a relevant document would contain, including ones "
    "the query does not mention; and what distinguishes a relevant document from one that only shares the query's "
    "words. Do not write the documents themselves.")

_SLOT = "\u2063T1_TEACHER_QUERY\u2063"  # a marker no chat template rewrites; replaced by the query tokens


@dataclasses.dataclass(frozen=True)
class TeacherPrompt:
    """How a record becomes the teacher's prompt (see the module doc)."""

    template: str = DEFAULT_TEMPLATE  # the user message: {task} and {query} filled in
    default_task: str = DEFAULT_TASK  # the task line of records without an instruction or a domain
    default_domain: Optional[str] = None  # --domain: the domain of records without their own
    instruction_field: str = "instruction"  # a record's own task line
    max_query_tokens: int = 256  # the whole prompt (template + query); the query text is cut to fit

    def validate(self) -> list[str]:
        errors = []
        if self.template.count("{query}") != 1:
            errors.append("the teacher prompt must contain {query} exactly once")
        try:
            self.template.format(task="", query="")
        except (KeyError, IndexError, ValueError) as e:
            errors.append(f"the teacher prompt may hold only {{task}} and {{query}} in braces (write literal braces "
                          f"as {{{{ and }}}}): {e!r}")
        if self.max_query_tokens <= 0:
            errors.append(f"max_query_tokens must be positive, got {self.max_query_tokens}")
        return errors


def domain_tasks(text_cfg: TextConfig) -> dict[str, str]:
    """Domain -> task line: the built-in BRIGHT table with ``text.query_domain_instructions`` on top (empty when
    ``text.domain_instructions`` is off)."""
    if not text_cfg.domain_instructions:
        return {}
    return {**DOMAIN_QUERY_INSTRUCTIONS, **dict(text_cfg.query_domain_instructions)}


class TeacherPrompter:
    """Token ids of teacher prompts; the template around the query is tokenized once per task line."""

    def __init__(self, tokenizer, prompt: TeacherPrompt):
        errors = prompt.validate()
        if errors:
            raise ValueError("; ".join(errors))
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the teacher's tokenizer has no chat template (t1 generate prompts a chat model)")
        self.tokenizer, self.prompt = tokenizer, prompt
        self._frames: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = {}

    def text(self, query: str, task: str) -> str:
        """The whole prompt as text (for logs and docs); the ids come from :meth:`ids`."""
        return self._rendered(task).replace(_SLOT, query)

    def _rendered(self, task: str) -> str:
        content = self.prompt.template.format(task=task, query=_SLOT)
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False)
        if rendered.count(_SLOT) != 1:
            raise ValueError("the tokenizer's chat template does not keep the user message verbatim")
        return rendered

    def _frame(self, task: str):
        if task not in self._frames:
            before, after = self._rendered(task).split(_SLOT)
            stripped = before.rstrip(" \t")  # the spaces before the query are tokenized with it (" What", not " ")
            encode = self.tokenizer.encode
            self._frames[task] = (tuple(encode(stripped, add_special_tokens=False)) if stripped else (),
                                  tuple(encode(after, add_special_tokens=False)) if after else (),
                                  before[len(stripped):])
        return self._frames[task]

    def ids(self, queries: list[str], tasks: list[str]) -> tuple[list[list[int]], int]:
        """(prompt ids per query, how many queries were cut to ``max_query_tokens``)."""
        frames = [self._frame(t) for t in tasks]
        bodies = self.tokenizer([f[2] + q for f, q in zip(frames, queries)], add_special_tokens=False,
                                split_special_tokens=True)["input_ids"] if queries else []
        out, cut = [], 0
        for (prefix, suffix, _), body in zip(frames, bodies):
            budget = self.prompt.max_query_tokens - len(prefix) - len(suffix)
            if budget < 1:
                raise ValueError(f"the teacher prompt's template alone takes {len(prefix) + len(suffix)} tokens, "
                                 f"leaving no room for the query within text.max_query_tokens="
                                 f"{self.prompt.max_query_tokens}; raise it or shorten the prompt")
            out.append(list(prefix) + list(body[:budget]) + list(suffix))
            cut += len(body) > budget
        return out, cut
