"""Token budgets of the training data, measured once when the data is loaded, before the grain pipeline is built.

Every example's query is encoded in its stage's format and every distinct document once, so the texts cut to
``text.max_query_tokens`` / ``text.max_doc_tokens`` are counted, logged in one line and reported in the run's
metrics (``data/*`` at the first step). Stage-2 examples whose teacher trace is longer than
``text.max_reasoning_tokens`` are **skipped**: stage 2 teaches the model to emit ``<embtoken>`` where the trace
ends, so a trace cut mid-sentence would teach it to stop reasoning there. ``data.keep_cut_reasoning=true`` keeps
them, cut (still counted). A query or document cut to its budget is kept: inference cuts it the same way.

Skipping happens on the example list, before shuffling, so the pipeline stays a deterministic function of the data
and the config, and a resumed run sees the same batches.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from t1_jax.data.examples import TrainExample
from t1_jax.data.readers import DataError

log = logging.getLogger(__name__)

_SHOWN = 3  # locations listed per count in the log line


def _where(sources: list[str]) -> str:
    return f" ({', '.join(sources[:_SHOWN])}{' ...' if len(sources) > _SHOWN else ''})" if sources else ""


@dataclasses.dataclass
class BudgetReport:
    """What the token budgets cut; ``*_cut`` lists hold the examples' ``file:line`` locations."""

    query_kind: str
    limits: dict[str, int]  # text.max_*_tokens -> value
    keep_cut_reasoning: bool = False
    examples: int = 0  # examples measured (before skipping)
    queries_cut: list[str] = dataclasses.field(default_factory=list)  # among the kept examples
    traces_cut: list[str] = dataclasses.field(default_factory=list)
    documents: int = 0  # distinct (text, domain) documents of the kept examples
    documents_cut: int = 0

    @property
    def skipped(self) -> int:
        return 0 if self.keep_cut_reasoning else len(self.traces_cut)

    @property
    def kept(self) -> int:
        return self.examples - self.skipped

    def __str__(self) -> str:
        parts = [f"{self.examples} examples"]
        if self.traces_cut:
            what = "kept, cut there (data.keep_cut_reasoning)" if self.keep_cut_reasoning else "skipped"
            parts.append(f"{len(self.traces_cut)} teacher traces longer than text.max_reasoning_tokens="
                         f"{self.limits['max_reasoning_tokens']} {what}{_where(self.traces_cut)}")
        parts.append(f"{len(self.queries_cut)} of the {self.kept} trained queries cut to text.max_query_tokens="
                     f"{self.limits['max_query_tokens']}{_where(self.queries_cut)}")
        parts.append(f"{self.documents_cut} of {self.documents} documents cut to text.max_doc_tokens="
                     f"{self.limits['max_doc_tokens']}")
        return "training data: " + "; ".join(parts)

    def metrics(self) -> dict[str, float]:
        return {"examples": self.examples, "examples_kept": self.kept, "queries_cut": len(self.queries_cut),
                "traces_cut": len(self.traces_cut), "traces_skipped": self.skipped, "documents": self.documents,
                "documents_cut": self.documents_cut}


def apply_budgets(examples: Sequence[TrainExample], formatter, query_kind: str, keep_cut_reasoning: bool = False,
                  chunk_size: int = 1024) -> tuple[list[TrainExample], BudgetReport]:
    """The examples that train (stage-2 examples with a cut trace left out unless ``keep_cut_reasoning``) and the
    report of what the budgets cut. ``query_kind``: the pipeline's query format (``t1_jax.data.pipeline``)."""
    cfg = formatter.cfg
    limits = {n: getattr(cfg, n) for n in ("max_query_tokens", "max_reasoning_tokens", "max_doc_tokens")}
    report = BudgetReport(query_kind, limits, keep_cut_reasoning, examples=len(examples))
    with_reasoning = query_kind == "query_with_reasoning"
    kept: list[TrainExample] = []
    for start in range(0, len(examples), chunk_size):
        part = examples[start:start + chunk_size]
        rows = [(e.query, e.reasoning or "") if with_reasoning else e.query for e in part]
        for example, enc in zip(part, formatter.encode_many(query_kind, rows, [e.domain for e in part])):
            if enc.reasoning_truncated:
                report.traces_cut.append(example.source)
                if not keep_cut_reasoning:
                    continue
            if enc.text_truncated:
                report.queries_cut.append(example.source)
            kept.append(example)
    documents = list(dict.fromkeys((text, e.domain) for e in kept for text in (*e.positives, *e.negatives)))
    report.documents = len(documents)
    for start in range(0, len(documents), chunk_size):
        texts, domains = zip(*documents[start:start + chunk_size])
        report.documents_cut += sum(e.text_truncated for e in formatter.encode_many("document", texts, domains))
    (log.warning if report.traces_cut or report.queries_cut or report.documents_cut else log.info)("%s", report)
    if not kept:
        raise DataError(f"every one of the {len(examples)} training examples has a teacher trace longer than "
                        f"text.max_reasoning_tokens={limits['max_reasoning_tokens']}: raise it, or set "
                        f"data.keep_cut_reasoning=true to train on the cut traces")
    return kept, report
