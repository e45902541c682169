"""Tune a built ScaNN tree-AH index to a recall target, measured against exact search at build time.

How many leaves a query must visit (and how many candidates must be re-scored exactly) to find its true top-k depends
on the data, not only on its size: on clustered embeddings a few percent of the leaves suffice, on iid random vectors
(no neighbourhood structure) nearly all of them. So ``t1 index`` does not trust a size formula alone. After building,
it samples ``num_queries`` rows, computes their exact top-k with a float32 numpy scan, and walks a schedule of search
settings from the size-based default upward until recall@k reaches the target:

1. double ``leaves_to_search`` (default, 2x, 4x, ... up to every leaf);
2. with every leaf searched, double ``reorder_k`` (up to the corpus size, where the search is exact).

The first setting that reaches the target is kept and written to the index's ``meta.json`` with every trial, so the
speed/recall trade-off of an index is on record. Knobs the user set explicitly are never changed. Sampled documents
stand in for queries unless real query embeddings are given (``t1 index --tune-queries q.npy``); a document query's
own row is excluded from both its exact and its approximate neighbours.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TuneResult:
    num_leaves_to_search: int
    reorder_k: int
    recall: float  # recall@k at the chosen setting
    reached: bool  # recall >= target
    k: int
    num_queries: int
    source: str  # "documents" (sampled rows, self excluded) or "queries" (given query embeddings)
    trials: tuple[tuple[int, int, float], ...]  # (leaves_to_search, reorder_k, recall) in the order tried

    def summary(self, target: float) -> str:
        first = self.trials[0]
        return (f"search tuned to recall@{self.k} {self.recall:.3f} (target {target}) on {self.num_queries} "
                f"{self.source}: leaves_to_search {first[0]} -> {self.num_leaves_to_search}, reorder_k {first[1]} -> "
                f"{self.reorder_k}, {len(self.trials)} trial(s)")


def exact_top_k(q_bd: np.ndarray, emb_ed: np.ndarray, k: int, exclude_rows: Optional[np.ndarray] = None,
                block: int = 65_536) -> np.ndarray:
    """Row indices [B, R] (R = k) of the k largest inner products per query (float32 scan in blocks of documents).

    numpy, not ``ExactIndex``: it runs while ScaNN holds its copy of the corpus, and a JAX copy on top would double
    the memory of a 1M x 2560 build; blocks also read a memory-mapped corpus without loading it whole.

    ``exclude_rows[i]`` (when given) is a document row that query ``i`` must not return (its own row)."""
    b = q_bd.shape[0]
    best_s_br = np.full((b, k), -np.inf, np.float32)
    best_rows_br = np.full((b, k), -1, np.int64)
    for start in range(0, emb_ed.shape[0], block):
        s_be = q_bd @ emb_ed[start:start + block].T
        if exclude_rows is not None:
            local = exclude_rows - start
            hit = (local >= 0) & (local < s_be.shape[1])
            s_be[np.nonzero(hit)[0], local[hit]] = -np.inf
        s_all = np.concatenate([best_s_br, s_be], axis=1)
        rows_be = np.broadcast_to(np.arange(start, start + s_be.shape[1]), s_be.shape)
        rows_all = np.concatenate([best_rows_br, rows_be], axis=1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s_br = np.take_along_axis(s_all, top, axis=1)
        best_rows_br = np.take_along_axis(rows_all, top, axis=1)
    return best_rows_br


def recall_at_k(got_br: np.ndarray, ref_br: np.ndarray) -> float:
    """Mean over queries of |got ∩ ref| / k (the usual ANN recall@k)."""
    k = ref_br.shape[1]
    return float(np.mean([len(set(g[:k].tolist()) & set(r.tolist())) / k for g, r in zip(got_br, ref_br)]))


def _schedule(start: int, stop: int) -> list[int]:
    values, v = [], max(1, start)
    while v < stop:
        values.append(v)
        v *= 2
    return values + [stop]


def tune_search(index, emb_ed: np.ndarray, target: float, k: int = 10, queries: Optional[np.ndarray] = None,
                num_queries: int = 500, seed: int = 0, tune_leaves: bool = True,
                tune_reorder: bool = True) -> TuneResult:
    """Walk the schedule in the module docstring on ``index`` (an ``Index`` built over ``emb_ed``)."""
    s = index.settings
    n = emb_ed.shape[0]
    k = min(k, n - 1)
    if queries is None:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(num_queries, n), replace=False))
        q_bd, exclude, source = emb_ed[rows], rows, "documents"
    else:
        q_bd, exclude, source = np.ascontiguousarray(queries, dtype=np.float32), None, "queries"
    ref = exact_top_k(q_bd, emb_ed, k, exclude)

    def measure(leaves: int, reorder: int) -> float:
        extra = 0 if exclude is None else 1
        _, got = index.search_indices(q_bd, k + extra, leaves_to_search=leaves, reorder_k=max(reorder, k + extra))
        if exclude is not None:  # drop each query's own row, keep the first k of the rest
            got = np.stack([r[r != own][:k] for r, own in zip(got, exclude)])
        return recall_at_k(got, ref)

    leaves, reorder = s.num_leaves_to_search, s.reorder_k
    plan = [(leaves, reorder)]
    if tune_leaves:
        plan += [(v, reorder) for v in _schedule(leaves, s.num_leaves)[1:]]
    if tune_reorder:
        plan += [(plan[-1][0], v) for v in _schedule(reorder, n)[1:]]
    trials = []
    for leaves, reorder in plan:
        trials.append((leaves, reorder, measure(leaves, reorder)))
        log.info("tuning: leaves_to_search=%d reorder_k=%d recall@%d=%.4f", leaves, reorder, k, trials[-1][2])
        if trials[-1][2] >= target:
            break
    leaves, reorder, recall = trials[-1]
    return TuneResult(leaves, reorder, recall, recall >= target, k, len(q_bd), source, tuple(trials))
