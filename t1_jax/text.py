"""Tokenizer loading (+ ``<embtoken>``) and every T1 input format, in one place.

Sequences (``ids`` are what the model reads; ``E`` is ``<embtoken>``):

* document:              ``doc_template(instruction, text) E``                        -- one forward pass
* query prompt:          ``chat(user = query_template(instruction, query))``           -- ends with the generation
                         prompt (``<|im_start|>assistant\\n``); the sampler continues from here
* query with reasoning:  ``query prompt + reasoning E``; ``loss_mask`` is 1 on the reasoning tokens and on ``E``
* direct query (stage 1): ``query prompt E`` (``direct_query_format=chat``) or ``query_template(...) E`` (``plain``)

Each piece is tokenized on its own and the pieces are concatenated, so the token ids of the prompt are exactly the
ids the sampler is given, and the reasoning tokens are exactly what a model generates after it. User text (queries,
documents, reasoning) is tokenized with ``split_special_tokens`` so a literal ``<embtoken>`` or ``<|im_end|>`` in the
data can never become a control token. Truncation cuts the user text, never the template or the ``<embtoken>``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, Optional, Sequence

from t1_jax.config import ModelConfig, TextConfig

log = logging.getLogger("t1_jax.text")

# Built-in instructions for the 12 BRIGHT domains. Our wording (BRIGHT and T1 publish none we copy); override or
# extend with text.query_domain_instructions / text.doc_domain_instructions.
_STACKEXCHANGE_DOC = "Represent this web passage for retrieval."
DOMAIN_QUERY_INSTRUCTIONS: dict[str, str] = {
    "biology": "Given a biology question from a StackExchange post, find passages that help answer it.",
    "earth-science": "Given an earth science question from a StackExchange post, find passages that help answer it.",
    "economics": "Given an economics question from a StackExchange post, find passages that help answer it.",
    "psychology": "Given a psychology question from a StackExchange post, find passages that help answer it.",
    "robotics": "Given a robotics question from a StackExchange post, find passages that help answer it.",
    "stackoverflow": "Given a programming question from Stack Overflow, find passages that help answer it.",
    "sustainable-living": "Given a sustainable living question from a StackExchange post, find passages that help "
                          "answer it.",
    "leetcode": "Given a coding problem, find other problems whose solutions use the same algorithm or technique.",
    "pony": "Given a coding task in the Pony language, find documentation passages that the solution needs.",
    "aops": "Given a competition math problem, find other problems solved with the same technique.",
    "theoremqa-questions": "Given a math or science problem, find other problems solved with the same theorem.",
    "theoremqa-theorems": "Given a math or science problem, find the theorems that help solve it.",
}
DOMAIN_DOC_INSTRUCTIONS: dict[str, str] = {
    **{d: _STACKEXCHANGE_DOC for d in ("biology", "earth-science", "economics", "psychology", "robotics",
                                       "stackoverflow", "sustainable-living")},
    "leetcode": "Represent this coding problem and its solution for retrieval.",
    "pony": "Represent this Pony language documentation passage for retrieval.",
    "aops": "Represent this math problem and its solution for retrieval.",
    "theoremqa-questions": "Represent this math or science problem and its solution for retrieval.",
    "theoremqa-theorems": "Represent this theorem for retrieval.",
}
BRIGHT_DOMAINS: tuple[str, ...] = tuple(DOMAIN_QUERY_INSTRUCTIONS)

_QUERY_SLOT = "\u2063T1_QUERY_SLOT\u2063"  # a marker no chat template rewrites; replaced by the query tokens


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One model input. ``loss_mask[t] == 1``: ``ids[t]`` is a training target (predicted from position t-1)."""

    ids: tuple[int, ...]
    loss_mask: Optional[tuple[int, ...]]
    text_truncated: bool  # the query or document text was cut to its budget
    reasoning_truncated: bool = False  # query_with_reasoning: the reasoning was cut to text.max_reasoning_tokens

    @property
    def truncated(self) -> bool:
        return self.text_truncated or self.reasoning_truncated

    def __len__(self) -> int:
        return len(self.ids)


TOKENIZER_SUBDIR = "tokenizer"  # a model folder's own tokenizer (with <embtoken>): ``<model>/tokenizer``
# Any of these in a folder means it holds a tokenizer (what transformers reads; T1 needs tokenizer.json in the end).
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def has_tokenizer(folder: str) -> bool:
    """Whether ``folder`` holds tokenizer files (``TOKENIZER_MARKERS``)."""
    from t1_jax import fs

    return any(fs.exists(fs.join(folder, f)) for f in TOKENIZER_MARKERS)


def _looks_like_path(name: str) -> bool:
    """A name that can only be a folder, never a hub id ("org/name"): absolute, relative with ./ or ../, gs://, or
    more than one "/"."""
    from t1_jax import fs

    return fs.is_url(name) or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def read_tokenizer(path_or_id: str):
    """A fast HF tokenizer from a folder (tokenizer.json + tokenizer_config.json) or a hub id, as it is."""
    from transformers import AutoTokenizer

    from t1_jax import fs

    if not path_or_id:
        raise ValueError("no tokenizer given: set text.tokenizer to a folder with tokenizer.json or a hub id")
    if _looks_like_path(path_or_id) and not fs.exists(path_or_id):
        raise ValueError(f"tokenizer folder {path_or_id} does not exist")
    if fs.isdir(path_or_id) and not has_tokenizer(path_or_id):
        found = fs.listdir(path_or_id)  # transformers would answer with advice about sentencepiece
        raise ValueError(f"tokenizer folder {path_or_id} has no tokenizer.json (T1 needs a fast tokenizer: "
                         f"tokenizer.json + tokenizer_config.json); it holds {found[:8] if found else 'nothing'}")
    try:
        with fs.local_copy(path_or_id) as local_path:  # a gs:// folder is downloaded (the tokenizer is read whole)
            tokenizer = AutoTokenizer.from_pretrained(local_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a tokenizer from {path_or_id!r}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {path_or_id!r} is not a fast (tokenizers-backed) tokenizer; T1 needs one")
    return tokenizer


def add_emb_token(tokenizer, emb_token: str = "<embtoken>") -> bool:
    """Add ``emb_token`` as a special token when the vocabulary lacks it (it then gets the next free id: 151669 for
    Qwen3); True when it was added. The model's embedding rows are grown by the model code, not here."""
    from tokenizers import AddedToken

    if emb_token in tokenizer.get_vocab():
        return False
    tokenizer.add_tokens([AddedToken(emb_token, special=True, normalized=False)], special_tokens=True)
    return True


def load_tokenizer(path_or_id: str, emb_token: str = "<embtoken>"):
    """:func:`read_tokenizer` with ``emb_token`` added (:func:`add_emb_token`)."""
    tokenizer = read_tokenizer(path_or_id)
    add_emb_token(tokenizer, emb_token)
    return tokenizer


def save_tokenizer(tokenizer, directory: str) -> None:
    """Write ``tokenizer`` (tokenizer.json, tokenizer_config.json, chat template ...) to ``directory`` (local or
    gs://); :func:`load_tokenizer` reads it back with the same ids."""
    from t1_jax import fs

    with fs.local_output_dir(directory) as local_dir:
        tokenizer.save_pretrained(local_dir)


# --------------------------------------------------------------------------------------------------------------------
# Formatter
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Frame:
    """Token ids around a user-text slot: ``prefix + text[:budget] + suffix``."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    budget: int  # max tokens of user text
    lead: str  # the template's spaces before the slot, tokenized with the text (" Why", as a joint encode would)


class T1Formatter:
    """Builds the token sequences of every T1 format from a tokenizer and a TextConfig."""

    def __init__(self, tokenizer, cfg: TextConfig):
        errors = cfg.validate()
        if errors:
            raise ValueError("invalid text config: " + "; ".join(errors))
        self.tokenizer = tokenizer
        self.cfg = cfg
        vocab = tokenizer.get_vocab()
        if cfg.emb_token not in vocab:
            raise ValueError(f"tokenizer has no {cfg.emb_token!r}; load it with t1_jax.text.load_tokenizer")
        self.emb_token_id: int = int(vocab[cfg.emb_token])
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        eos += [vocab[t] for t in cfg.stop_tokens if t in vocab]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(int(i) for i in eos))
        if not self.eos_token_ids:
            raise ValueError(f"tokenizer has no eos token and none of text.stop_tokens {cfg.stop_tokens}")
        if self.emb_token_id in self.eos_token_ids:
            raise ValueError(f"{cfg.emb_token!r} must differ from the end-of-sequence tokens")
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = int(pad) if pad is not None else self.eos_token_ids[0]
        self._query_instructions = {**DOMAIN_QUERY_INSTRUCTIONS, **dict(cfg.query_domain_instructions)}
        self._doc_instructions = {**DOMAIN_DOC_INSTRUCTIONS, **dict(cfg.doc_domain_instructions)}
        if cfg.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("text.use_chat_template is true but the tokenizer has no chat_template; give one or set "
                             "text.use_chat_template=false")
        self._frames: dict[tuple[str, Optional[str]], _Frame] = {}

    # ---------------------------------------------------------------------------------------------------- texts
    def instruction(self, side: str, domain: Optional[str] = None) -> str:
        """The instruction for ``side`` ("query" or "doc") and an optional BRIGHT-style domain."""
        default, table = ((self.cfg.query_instruction, self._query_instructions) if side == "query"
                          else (self.cfg.doc_instruction, self._doc_instructions))
        if domain is None or not self.cfg.domain_instructions:
            return default
        if domain not in table:  # BRIGHT's hub copy spells domains with underscores (earth_science)
            domain = domain.replace("_", "-")
        if domain not in table:
            raise ValueError(f"no {side} instruction for domain {domain!r}; known: {', '.join(sorted(table))} "
                             f"(add one with text.{side}_domain_instructions)")
        return table[domain]

    def query_prompt_text(self, query: str, domain: Optional[str] = None) -> str:
        """The query prompt as a string (what ``query_prompt`` tokenizes, before truncation)."""
        return self._prompt_template(domain).replace(_QUERY_SLOT, query)

    def _prompt_template(self, domain: Optional[str]) -> str:
        content = self.cfg.query_template.format(instruction=self.instruction("query", domain), query=_QUERY_SLOT)
        if not self.cfg.use_chat_template:
            return content + "\n"
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)
        if rendered.count(_QUERY_SLOT) != 1:
            raise ValueError("the tokenizer's chat template does not keep the user message verbatim")
        return rendered

    # ---------------------------------------------------------------------------------------------------- frames
    def _tokenize_template(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False)) if text else ()

    def _frame(self, kind: str, domain: Optional[str]) -> _Frame:
        key = (kind, domain)
        if key not in self._frames:
            if kind == "document":
                template = self.cfg.doc_template.format(instruction=self.instruction("doc", domain), text=_QUERY_SLOT)
                limit, tail = self.cfg.max_doc_tokens, 1
            elif kind == "plain_query":
                template = self.cfg.query_template.format(instruction=self.instruction("query", domain),
                                                          query=_QUERY_SLOT)
                limit, tail = self.cfg.max_query_tokens, 0
            else:  # the query prompt
                template, limit, tail = self._prompt_template(domain), self.cfg.max_query_tokens, 0
            before, after = template.split(_QUERY_SLOT)
            stripped = before.rstrip(" \t")
            lead, before = before[len(stripped):], stripped
            prefix, suffix = self._tokenize_template(before), self._tokenize_template(after)
            budget = limit - tail - len(prefix) - len(suffix)
            if budget < 1:
                raise ValueError(f"the {kind} template alone takes {len(prefix) + len(suffix) + tail} tokens, leaving "
                                 f"no room for text within {limit}; raise the text.max_*_tokens limit")
            self._frames[key] = _Frame(prefix, suffix, budget, lead)
        return self._frames[key]

    def _user_tokens(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        out = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [list(ids) for ids in out]

    # ---------------------------------------------------------------------------------------------------- batches
    def encode_many(self, kind: str, rows: Sequence, domains: Optional[Sequence[Optional[str]]] = None
                    ) -> list[Encoded]:
        """Encode many rows of one kind (see ``ENCODERS``); tokenization is batched. Rows: a text, or for
        ``query_with_reasoning`` a ``(query, reasoning)`` pair."""
        if kind not in ENCODERS:
            raise ValueError(f"unknown encoding kind {kind!r}; one of {', '.join(ENCODERS)}")
        rows = list(rows)
        domains = list(domains) if domains is not None else [None] * len(rows)
        if len(domains) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(domains)} domains")
        with_reasoning = kind == "query_with_reasoning"
        texts = [r[0] if with_reasoning else r for r in rows]
        for i, t in enumerate(texts):
            if not isinstance(t, str) or (with_reasoning and not isinstance(rows[i][1], str)):
                raise TypeError(f"row {i} of {kind}: expected {ENCODERS[kind]}, got {rows[i]!r:.80}")
        frame_kind = {"document": "document", "query_direct": "plain_query"
                      if self.cfg.direct_query_format == "plain" else "prompt"}.get(kind, "prompt")
        frames = [self._frame(frame_kind, d) for d in domains]
        bodies = self._user_tokens([f.lead + t for f, t in zip(frames, texts)])
        reasonings = self._user_tokens([r[1] for r in rows]) if with_reasoning else [None] * len(rows)
        out = []
        for frame, body, reasoning in zip(frames, bodies, reasonings):
            cut, cut_reasoning = len(body) > frame.budget, False
            ids = frame.prefix + tuple(body[:frame.budget]) + frame.suffix
            mask = None
            if kind == "query_with_reasoning":
                cut_reasoning = len(reasoning) > self.cfg.max_reasoning_tokens
                tail = tuple(reasoning[:self.cfg.max_reasoning_tokens]) + (self.emb_token_id,)
                mask = (0,) * len(ids) + (1,) * len(tail)
                ids = ids + tail
            elif kind != "query_prompt":
                ids = ids + (self.emb_token_id,)
            out.append(Encoded(ids=ids, loss_mask=mask, text_truncated=cut, reasoning_truncated=cut_reasoning))
        return out

    # ---------------------------------------------------------------------------------------------------- one row
    def document(self, text: str, domain: Optional[str] = None) -> Encoded:
        """``instruction + text + <embtoken>``; the text is cut to fit ``max_doc_tokens``."""
        return self.encode_many("document", [text], [domain])[0]

    def query_prompt(self, query: str, domain: Optional[str] = None) -> Encoded:
        """The chat-formatted instruction + query, up to where the model starts its reasoning."""
        return self.encode_many("query_prompt", [query], [domain])[0]

    def query_with_reasoning(self, query: str, reasoning: str, domain: Optional[str] = None) -> Encoded:
        """``query prompt + reasoning + <embtoken>``; loss_mask marks the reasoning tokens and the ``<embtoken>``."""
        return self.encode_many("query_with_reasoning", [(query, reasoning)], [domain])[0]

    def query_direct(self, query: str, domain: Optional[str] = None) -> Encoded:
        """Stage-1 query without reasoning: the prompt then ``<embtoken>`` (or plain ``instruction + query``)."""
        return self.encode_many("query_direct", [query], [domain])[0]

    def decode_reasoning(self, generated_ids: Iterable[int]) -> str:
        """Text of generated tokens up to (not including) the first ``<embtoken>`` or end-of-sequence token."""
        stops = {self.emb_token_id, *self.eos_token_ids}
        kept = []
        for token in generated_ids:
            token = int(token)
            if token in stops:
                break
            kept.append(token)
        return self.tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(self, ids: Iterable[int]) -> str:
        """Every token as text, special tokens included (for reading what the model saw)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)


ENCODERS: dict[str, str] = {  # kind -> what one row is
    "document": "document text",
    "query_prompt": "query text",
    "query_direct": "query text",
    "query_with_reasoning": "(query, reasoning) pair",
}


# --------------------------------------------------------------------------------------------------------------------
# Batches, truncation reporting, model config
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TruncationStats:
    """How many encoded texts were cut to fit their token budget."""

    total: int = 0
    truncated: int = 0

    def add(self, encoded: Iterable[Encoded]) -> "TruncationStats":
        for e in encoded:
            self.total += 1
            self.truncated += int(e.truncated)
        return self

    @property
    def fraction(self) -> float:
        return self.truncated / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.truncated}/{self.total} texts truncated ({100 * self.fraction:.1f}%)"


def batch_encode(formatter: T1Formatter, kind: str, rows: Sequence, domains: Optional[Sequence] = None,
                 chunk_size: int = 1024, name: str = "",
                 progress: Optional[Callable[[Iterable, int], Iterable]] = None
                 ) -> tuple[list[Encoded], TruncationStats]:
    """Encode ``rows`` of one kind in chunks; returns the encodings and a TruncationStats (logged when any was cut).

    ``progress``: optional wrapper ``(iterable, total) -> iterable`` (e.g. ``t1_jax.observe.progress``) over chunks.
    """
    rows = list(rows)
    starts = range(0, len(rows), chunk_size)
    if progress is not None:
        starts = progress(starts, (len(rows) + chunk_size - 1) // chunk_size)
    out: list[Encoded] = []
    for start in starts:
        chunk_domains = None if domains is None else list(domains[start:start + chunk_size])
        out.extend(formatter.encode_many(kind, rows[start:start + chunk_size], chunk_domains))
    stats = TruncationStats().add(out)
    if stats.truncated:
        log.warning("%s%s: %s", f"{name} " if name else "", kind, stats)
    return out, stats


def pad_batch(encoded: Sequence[Encoded], length: int, pad_id: int):
    """Right-pad to ``length``: dict of numpy ``ids_bt`` (int32), ``valid_bt`` and ``loss_mask_bt`` (0/1 int32),
    ``lengths_b``. Raises when a sequence is longer than ``length``."""
    import numpy as np

    ids_bt = np.full((len(encoded), length), pad_id, np.int32)
    valid_bt = np.zeros((len(encoded), length), np.int32)
    loss_bt = np.zeros((len(encoded), length), np.int32)
    for b, e in enumerate(encoded):
        if len(e.ids) > length:
            raise ValueError(f"sequence {b} has {len(e.ids)} tokens, more than the padded length {length}")
        ids_bt[b, :len(e.ids)] = e.ids
        valid_bt[b, :len(e.ids)] = 1
        if e.loss_mask is not None:
            loss_bt[b, :len(e.ids)] = e.loss_mask
    return {"ids_bt": ids_bt, "valid_bt": valid_bt, "loss_mask_bt": loss_bt,
            "lengths_b": valid_bt.sum(axis=1).astype(np.int32)}


def model_config_for_tokenizer(model_cfg: ModelConfig, formatter: T1Formatter) -> ModelConfig:
    """``model_cfg`` with emb_token_id, eos_token_ids and pad_token_id taken from the formatter's tokenizer.

    vocab_size is left as is: growing the embedding/LM-head rows is the model code's job (Qwen3's padded 151,936-row
    table already has room for id 151669). ``len(formatter.tokenizer)`` is the smallest valid vocab_size.
    """
    return dataclasses.replace(model_cfg, emb_token_id=formatter.emb_token_id, eos_token_ids=formatter.eos_token_ids,
                               pad_token_id=formatter.pad_token_id)


def formatter_from_config(cfg: TextConfig) -> T1Formatter:
    """Load ``cfg.tokenizer`` (adding ``<embtoken>``) and build the formatter."""
    return T1Formatter(load_tokenizer(cfg.tokenizer, cfg.emb_token), cfg)
