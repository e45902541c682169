"""IR metrics with trec_eval semantics: nDCG@k, Recall@k, MRR@k, MAP@k and MAP over graded qrels.

Conventions (each checked against ``pytrec_eval`` in tests/test_retrieval_metrics.py):
- A ranking sorts documents by score, descending; equal scores are broken by document id in *descending* string order
  (what trec_eval does, so reported numbers do not depend on the order a run was written in).
- nDCG uses linear gains (the relevance grade; negative grades count 0) and ``1/log2(rank + 1)`` discounts; the ideal
  ranking is every judged document sorted by grade. Recall, MRR and MAP count a document as relevant when its grade
  is >= 1.
- MAP@k and MAP divide by the number of relevant documents of the query (as trec_eval's ``map_cut``/``map``).
- BRIGHT: ``excluded`` ids of a query are removed from its ranking before anything is scored.
- Averages run over every judged query; a judged query absent from the run scores 0 on every metric (trec_eval ``-c``).
  Run queries without judgements are ignored. ``pytrec_eval`` instead leaves absent queries out of its output.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

RELEVANCE_LEVEL = 1


def rank(scores: Mapping[str, float], excluded: Optional[set] = None) -> list[str]:
    """Document ids in trec_eval order: score descending, then id descending; ``excluded`` ids dropped."""
    items = scores.items() if not excluded else ((d, s) for d, s in scores.items() if d not in excluded)
    return [d for d, _ in sorted(items, key=lambda ds: (float(ds[1]), ds[0]), reverse=True)]


def metric_names(ks: Sequence[int]) -> list[str]:
    names = []
    for k in ks:
        names += [f"nDCG@{k}", f"Recall@{k}", f"MRR@{k}", f"MAP@{k}"]
    return names + ["MAP"]


def query_metrics(ranking: Sequence[str], judgements: Mapping[str, int], ks: Sequence[int]) -> dict[str, float]:
    """Every metric of one query from its ranked document ids and its judgements."""
    num_rel = sum(1 for g in judgements.values() if g >= RELEVANCE_LEVEL)
    ideal = sorted((g for g in judgements.values() if g > 0), reverse=True)
    gains = [max(judgements.get(d, 0), 0) for d in ranking]
    relevant = [judgements.get(d, 0) >= RELEVANCE_LEVEL for d in ranking]
    # Running sums over the ranking: DCG, relevant count, sum of precision at relevant ranks, first relevant rank.
    out: dict[str, float] = {}
    dcg_prefix = [0.0]
    for i, g in enumerate(gains):
        dcg_prefix.append(dcg_prefix[-1] + (g / math.log2(i + 2) if g else 0.0))
    hits_prefix = [0]
    ap_prefix = [0.0]
    first_hit = None
    for i, r in enumerate(relevant):
        hits_prefix.append(hits_prefix[-1] + r)
        ap_prefix.append(ap_prefix[-1] + (hits_prefix[-1] / (i + 1) if r else 0.0))
        if r and first_hit is None:
            first_hit = i + 1
    for k in ks:
        cut = min(k, len(ranking))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"nDCG@{k}"] = dcg_prefix[cut] / idcg if idcg > 0 else 0.0
        out[f"Recall@{k}"] = hits_prefix[cut] / num_rel if num_rel else 0.0
        out[f"MRR@{k}"] = 1.0 / first_hit if first_hit is not None and first_hit <= k else 0.0
        out[f"MAP@{k}"] = ap_prefix[cut] / num_rel if num_rel else 0.0
    out["MAP"] = ap_prefix[-1] / num_rel if num_rel else 0.0
    return out


def per_query(run: Run, qrels: Qrels, ks: Sequence[int] = (10, 100),
              excluded: Optional[Mapping[str, set]] = None) -> dict[str, dict[str, float]]:
    """Metrics of every judged query (absent from the run: all zeros)."""
    if not qrels:
        raise ValueError("evaluate: the qrels are empty (no judged query)")
    if any(k <= 0 for k in ks):
        raise ValueError(f"evaluate: cut-offs must be positive, got {tuple(ks)}")
    excluded = excluded or {}
    empty: dict[str, float] = {}
    return {qid: query_metrics(rank(run.get(qid, empty), excluded.get(qid)), judged, ks)
            for qid, judged in qrels.items()}


def evaluate_run(run: Run, qrels: Qrels, ks: Sequence[int] = (10, 100), excluded: Optional[Mapping[str, set]] = None,
                 return_per_query: bool = False):
    """Mean of every metric over the judged queries; with ``return_per_query`` also ``{qid: {metric: value}}``."""
    table = per_query(run, qrels, ks, excluded)
    names = metric_names(ks)
    means = {name: math.fsum(q[name] for q in table.values()) / len(table) for name in names}
    return (means, table) if return_per_query else means


def coverage(run: Run, qrels: Qrels) -> dict[str, int]:
    """Counts worth printing next to the metrics: judged queries, how many the run answers, and run-only queries."""
    return {"judged_queries": len(qrels), "answered": sum(1 for q in qrels if run.get(q)),
            "unjudged_in_run": sum(1 for q in run if q not in qrels)}
