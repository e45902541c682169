"""TREC run files (``qid Q0 docid rank score tag``) and qrels files, read and written.

Qrels reading lives in :mod:`t1_jax.data.readers` (training uses it too) and is re-exported here.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from t1_jax import fs
from t1_jax.data.readers import DataError, numbered_fields, read_qrels  # noqa: F401  (re-export)
from t1_jax.retrieval.metrics import rank


def read_run(path: str) -> dict[str, dict[str, float]]:
    """A TREC run -> ``{qid: {docid: score}}``. A document listed twice for one query is an error."""
    run: dict[str, dict[str, float]] = {}
    for line_no, fields in numbered_fields(path):
        if len(fields) != 6:
            raise DataError(f"{path}:{line_no}: expected 'qid Q0 docid rank score tag', got {len(fields)} fields")
        qid, _, docid, _, score, _ = fields
        try:
            value = float(score)
        except ValueError:
            raise DataError(f"{path}:{line_no}: score {score!r} is not a number") from None
        if not math.isfinite(value):  # a nan ranks nowhere consistently: the metrics would follow line order
            raise DataError(f"{path}:{line_no}: score {score!r} is not finite")
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataError(f"{path}:{line_no}: document {docid!r} appears twice for query {qid!r}")
        docs[docid] = value
    if not run:
        raise DataError(f"{path}: the run is empty")
    return run


def write_run(path: str, run: Mapping[str, Mapping[str, float]], tag: str = "t1",
              k: Optional[int] = None) -> None:
    """Write ``run`` in trec_eval order (ranks 1..k per query), atomically."""
    if any(ch.isspace() for ch in tag) or not tag:
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
    lines = []
    for qid, scores in run.items():
        for r, docid in enumerate(rank(scores)[:k], start=1):
            if any(ch.isspace() for ch in docid) or any(ch.isspace() for ch in qid):
                raise ValueError(f"ids in a TREC run cannot contain whitespace: query {qid!r}, document {docid!r}")
            if not math.isfinite(scores[docid]):
                raise ValueError(f"TREC run scores must be finite: query {qid!r}, document {docid!r} has "
                                 f"{scores[docid]!r}")
            lines.append(f"{qid} Q0 {docid} {r} {float(scores[docid])!r} {tag}\n")  # repr: exact round trip
    fs.write_text(path, "".join(lines))  # local: written beside and renamed; gs://: one object


def run_from_arrays(query_ids: Sequence[str], scores_br: np.ndarray, doc_ids_br) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` from top-k arrays (``doc_ids_br`` may hold strings or be an object array)."""
    scores_br = np.asarray(scores_br, dtype=np.float64)
    if scores_br.shape[0] != len(query_ids):
        raise ValueError(f"{len(query_ids)} query ids for {scores_br.shape[0]} rows of scores")
    run = {}
    for qid, scores, docs in zip(query_ids, scores_br, doc_ids_br):
        run[qid] = {str(d): float(s) for d, s in zip(docs, scores) if np.isfinite(s)}
    return run


def write_qrels(path: str, qrels: Mapping[str, Mapping[str, int]]) -> None:
    fs.write_text(path, "".join(f"{qid} 0 {docid} {int(rel)}\n" for qid, docs in qrels.items()
                                for docid, rel in docs.items()))
