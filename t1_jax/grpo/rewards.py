"""GRPO rewards: the retrieval quality the sampled reasoning leads to, plus format/length shaping (a registry).

Every reward function has the signature ``fn(q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg) -> r_bg``:

* ``q_emb``: the ``<embtoken>`` embeddings of the rollouts, ``[B, G, D]`` or ``[B*G, D]`` (query-major);
* ``pool_emb_pd``: the candidate pool shared by the whole (gathered) batch, ``[P, D]``;
* ``labels_bp``: relevance grade of each pool item for each query (float; > 0 relevant, 0 a candidate negative,
  < 0 not a candidate for that query: padding, or an item to exclude);
* ``forced_bg``: whether ``<embtoken>`` had to be forced at the length limit; ``lengths_bg``: generated tokens;
* ``cfg``: the :class:`t1_jax.config.GRPOConfig` (reward_k, reward_temperature, ndcg_gain, length_budget).

Ranking ties are broken by pool index (the order of a stable descending sort, and of ``lax.top_k``), identically in
nDCG and reciprocal rank. Scores are dot products in float32 (cosine for the L2-normalised T1 embeddings).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

GAINS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda rel: rel,  # trec_eval / pytrec_eval's nDCG, which our evaluation reports
    "exponential": lambda rel: jnp.exp2(rel) - 1.0,
}


def _scores(q_emb, pool_emb_pd, labels_bp):
    """[B, G, P] float32 scores, and [B, 1, P] candidate / relevance masks."""
    b = labels_bp.shape[0]
    if q_emb.ndim == 2:
        if q_emb.shape[0] % b:
            raise ValueError(f"rewards: {q_emb.shape[0]} embeddings are not a multiple of the {b} queries")
        q_emb = q_emb.reshape(b, q_emb.shape[0] // b, q_emb.shape[1])
    if q_emb.ndim != 3 or q_emb.shape[0] != b or q_emb.shape[2] != pool_emb_pd.shape[1]:
        raise ValueError(f"rewards: embeddings {q_emb.shape}, pool {pool_emb_pd.shape} and labels {labels_bp.shape} "
                         "do not fit [B, G, D], [P, D], [B, P]")
    if labels_bp.shape[1] != pool_emb_pd.shape[0]:
        raise ValueError(f"rewards: labels cover {labels_bp.shape[1]} pool items but the pool has "
                         f"{pool_emb_pd.shape[0]}")
    s_bgp = jnp.einsum("bgd,pd->bgp", q_emb.astype(jnp.float32), pool_emb_pd.astype(jnp.float32))
    labels = labels_bp.astype(jnp.float32)[:, None, :]
    return s_bgp, labels >= 0, labels > 0, labels


def labels_from_ids(pool_ids_p: jax.Array, pos_ids_by: jax.Array, grades_by=None) -> jax.Array:
    """``labels_bp`` for a pool of documents identified by id (e.g. the gathered batch documents).

    Item p is relevant to query b with the grade of the matching positive (``grades_by``, default 1) when its id is one
    of b's positive ids (``pos_ids_by``, -1 padded), a candidate negative (0) otherwise, and not a candidate (-1) when
    its id is negative (padding).
    """
    if grades_by is None:
        grades_by = jnp.ones(pos_ids_by.shape, jnp.float32)
    match_bpy = (pool_ids_p[None, :, None] == pos_ids_by[:, None, :]) & (pos_ids_by[:, None, :] >= 0)
    grade_bp = jnp.max(jnp.where(match_bpy, grades_by.astype(jnp.float32)[:, None, :], 0.0), axis=-1)
    return jnp.where(pool_ids_p[None, :] < 0, -1.0, grade_bp)


def ndcg_reward(q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg) -> jax.Array:
    """nDCG@k (k = ``reward_k``) of the pool ranking, gains from ``ndcg_gain``; 0 for a query with no relevant item."""
    s_bgp, cand, _, labels = _scores(q_emb, pool_emb_pd, labels_bp)
    k = min(int(cfg.reward_k), s_bgp.shape[-1])
    gain_fn = GAINS[cfg.ndcg_gain]
    gains_b1p = jnp.where(cand, gain_fn(jnp.maximum(labels, 0.0)), 0.0)
    discount_r = 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)
    _, top_bgr = jax.lax.top_k(jnp.where(cand, s_bgp, -jnp.inf), k)
    gains_bgp = jnp.broadcast_to(gains_b1p, s_bgp.shape)
    dcg_bg = jnp.sum(jnp.take_along_axis(gains_bgp, top_bgr, axis=-1) * discount_r, axis=-1)
    ideal_b1r, _ = jax.lax.top_k(gains_b1p, k)
    idcg_b1 = jnp.sum(ideal_b1r * discount_r, axis=-1)
    return jnp.where(idcg_b1 > 0, dcg_bg / jnp.where(idcg_b1 > 0, idcg_b1, 1.0), 0.0)


def mrr_reward(q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg) -> jax.Array:
    """Reciprocal rank of the best-ranked relevant item over the whole pool (no cut-off); 0 with no relevant item."""
    s_bgp, cand, rel, _ = _scores(q_emb, pool_emb_pd, labels_bp)
    rel = rel & cand
    rel_scores = jnp.where(rel, s_bgp, -jnp.inf)
    top_idx_bg = jnp.argmax(rel_scores, axis=-1)  # first index among equal scores
    top_score_bg = jnp.max(rel_scores, axis=-1)
    idx_p = jnp.arange(s_bgp.shape[-1])
    ahead = cand & ((s_bgp > top_score_bg[..., None])
                    | ((s_bgp == top_score_bg[..., None]) & (idx_p < top_idx_bg[..., None])))
    rank_bg = 1.0 + jnp.sum(ahead, axis=-1).astype(jnp.float32)
    return jnp.where(jnp.any(rel, axis=-1), 1.0 / rank_bg, 0.0)


def contrastive_reward(q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg) -> jax.Array:
    """Softmax probability mass on the relevant items among the candidates at temperature ``reward_temperature``."""
    s_bgp, cand, rel, _ = _scores(q_emb, pool_emb_pd, labels_bp)
    logits = s_bgp / cfg.reward_temperature
    log_all = jax.nn.logsumexp(jnp.where(cand, logits, -jnp.inf), axis=-1)
    log_rel = jax.nn.logsumexp(jnp.where(rel & cand, logits, -jnp.inf), axis=-1)
    has_rel = jnp.any(rel & cand, axis=-1)
    return jnp.where(has_rel, jnp.exp(jnp.where(has_rel, log_rel - log_all, 0.0)), 0.0)


def forced_penalty_reward(q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg) -> jax.Array:
    """-1 for a trace whose ``<embtoken>`` had to be forced, else 0."""
    return -forced_bg.astype(jnp.float32).reshape(labels_bp.shape[0], -1)


def length_reward(q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg) -> jax.Array:
    """``-max(0, length - length_budget) / length_budget``: linear penalty per token beyond the budget."""
    budget = float(cfg.length_budget)
    if budget <= 0:
        raise ValueError(f"the length reward needs grpo.length_budget > 0, got {cfg.length_budget}")
    lengths_bg = lengths_bg.astype(jnp.float32).reshape(labels_bp.shape[0], -1)
    return -jnp.maximum(lengths_bg - budget, 0.0) / budget


REWARDS: dict[str, Callable[..., jax.Array]] = {
    "ndcg": ndcg_reward,
    "mrr": mrr_reward,
    "contrastive": contrastive_reward,
    "forced_penalty": forced_penalty_reward,
    "length": length_reward,
}


def combined_reward(specs: tuple[tuple[str, float], ...], q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg,
                    cfg: Any):
    """``r_bg = sum_i weight_i * REWARDS[name_i](...)`` and per-component metrics.

    Metrics: ``reward/<name>_mean`` and ``reward/<name>_std`` for each component (unweighted), and ``reward/total_mean``
    / ``reward/total_std`` for the weighted sum (means/stds over all B x G rollouts).
    """
    if not specs:
        raise ValueError("combined_reward: no rewards named")
    unknown = [name for name, _ in specs if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known: {sorted(REWARDS)}")
    total, metrics = None, {}
    for name, weight in specs:
        r_bg = REWARDS[name](q_emb, pool_emb_pd, labels_bp, forced_bg, lengths_bg, cfg)
        metrics[f"reward/{name}_mean"] = jnp.mean(r_bg)
        metrics[f"reward/{name}_std"] = jnp.std(r_bg)
        total = weight * r_bg if total is None else total + weight * r_bg
    metrics["reward/total_mean"] = jnp.mean(total)
    metrics["reward/total_std"] = jnp.std(total)
    return total, metrics
