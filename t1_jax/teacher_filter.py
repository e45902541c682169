"""``t1 generate --filter``: keep a teacher trace only when it helps its own example retrieve its positive.

A trace is *judged* on the record it was written for: the record's candidates are its ``positives`` and
``negatives`` (texts, or ``{"text": ...}`` objects), the query side is the query with the trace, and the trace is
kept when the best-ranked positive is within the top ``top_k`` of the candidates. A filtered-out trace is written
like a trace cut at the budget: an empty ``reasoning`` (stage 2 skips it) with the text in
``teacher.filtered_reasoning``; ``teacher.filter`` holds ``{method, rank, top_k, kept}``. Records without a positive
or without any negative cannot be judged and keep their trace (``rank`` null).

Scorers (a registry: name -> class with ``ranks(rows) -> list[Optional[int]]``), our choices:

* ``bm25``: BM25 (``t1_jax.retrieval.bm25``, Lucene settings) with the query text ``query + " " + trace`` over one
  index of every candidate of every record in the input (so a candidate's IDF does not depend on which traces are
  being judged together, and a resumed run judges exactly as an uninterrupted one).
* ``t1``: a T1 checkpoint (``--filter-checkpoint``): the query embedded as stage 2 embeds it (query prompt + trace +
  ``<embtoken>``, one forward pass), candidates as documents, cosine similarity.

Ties rank pessimistically (a positive tied with a negative ranks below it), so a trace that does not separate the
positive from a negative is not kept.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from t1_jax.data.readers import DataError
from t1_jax.teacher_io import TeacherRecord


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    method: str  # a key of FILTERS
    top_k: int = 1
    checkpoint: Optional[str] = None  # the T1 model of method "t1"

    def validate(self) -> list[str]:
        errors = []
        if self.method not in FILTERS:
            errors.append(f"--filter {self.method!r} is not a filter (choose from {', '.join(sorted(FILTERS))})")
        if self.top_k < 1:
            errors.append(f"--filter-top-k must be >= 1, got {self.top_k}")
        if self.method == "t1" and not self.checkpoint:
            errors.append("--filter t1 needs --filter-checkpoint DIR (a T1 model that scores the traces)")
        if self.method != "t1" and self.checkpoint:
            errors.append(f"--filter-checkpoint is only used by --filter t1 (got --filter {self.method})")
        return errors


def candidates(record: TeacherRecord) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The record's (positive texts, negative texts); ``file:line`` errors for malformed fields."""
    out = []
    for field in ("positives", "negatives"):
        value = record.obj.get(field, [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise DataError(f"{record.where}: field {field!r} must be a list of texts, got {type(value).__name__}")
        texts = []
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                item = f"{item['title']} {item['text']}".strip() if item.get("title") else item["text"]
            if not isinstance(item, str):
                raise DataError(f"{record.where}: field {field!r} holds {type(item).__name__}; --filter needs texts "
                                f"(or {{\"text\": ...}} objects)")
            if item.strip():
                texts.append(item)
        out.append(tuple(texts))
    return out[0], out[1]


def rank_of_positive(scores_e: np.ndarray, n_positive: int) -> int:
    """1-based rank of the best positive (the first ``n_positive`` scores) among all; ties count against it."""
    best = float(np.max(scores_e[:n_positive]))
    return 1 + int(np.sum(scores_e[n_positive:] >= best))


class BM25Scorer:
    def __init__(self, records: Sequence[TeacherRecord], settings: FilterSettings, mesh=None):
        from t1_jax.retrieval.bm25 import BM25Index

        texts = sorted({t for r in records for group in candidates(r) for t in group})
        if not texts:
            raise DataError("--filter bm25: no record has positives or negatives to rank")
        self._row = {t: i for i, t in enumerate(texts)}
        self._index = BM25Index([str(i) for i in range(len(texts))], texts)

    def ranks(self, rows: Sequence[tuple[TeacherRecord, str]]) -> list[Optional[int]]:
        out = []
        for record, trace in rows:
            pos, neg = candidates(record)
            if not pos or not neg:
                out.append(None)
                continue
            scores = self._index.scores(f"{record.query} {trace}")
            out.append(rank_of_positive(scores[[self._row[t] for t in pos + neg]], len(pos)))
        return out


class T1Scorer:
    def __init__(self, records: Sequence[TeacherRecord], settings: FilterSettings, mesh=None):
        from t1_jax.encoder import Encoder

        self._encoder = Encoder.from_checkpoint(settings.checkpoint, mesh)

    def ranks(self, rows: Sequence[tuple[TeacherRecord, str]]) -> list[Optional[int]]:
        judged = [(i, r, t, *candidates(r)) for i, (r, t) in enumerate(rows)]
        judged = [j for j in judged if j[3] and j[4]]
        out: list[Optional[int]] = [None] * len(rows)
        if not judged:
            return out
        enc = self._encoder
        fmt = enc.formatter
        queries = fmt.encode_many("query_with_reasoning", [(r.query, t) for _, r, t, _, _ in judged],
                                  [r.obj.get("domain") for _, r, _, _, _ in judged])
        q_bd = enc.embed_encoded(queries, desc="filter queries")
        docs = [d for *_, pos, neg in judged for d in pos + neg]
        domains = [r.obj.get("domain") for _, r, _, pos, neg in judged for _ in pos + neg]
        d_ed = enc.encode_documents(docs, domains)
        start = 0
        for (i, _, _, pos, neg), q_d in zip(judged, q_bd):
            n = len(pos) + len(neg)
            out[i] = rank_of_positive(d_ed[start:start + n] @ q_d, len(pos))
            start += n
        return out


FILTERS: dict[str, Callable] = {"bm25": BM25Scorer, "t1": T1Scorer}


def make_scorer(records: Sequence[TeacherRecord], settings: FilterSettings, mesh=None):
    errors = settings.validate()
    if errors:
        raise ValueError("; ".join(errors))
    return FILTERS[settings.method](records, settings, mesh)


def verdict(settings: FilterSettings, rank: Optional[int]) -> dict:
    """``teacher.filter`` of one trace: kept when unjudged or ranked within top_k."""
    return {"method": settings.method, "rank": rank, "top_k": settings.top_k,
            "kept": rank is None or rank <= settings.top_k}
