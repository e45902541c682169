"""GRPO policy loss: token-level clipped surrogate, k3 KL to a frozen reference, and loss-aggregation modes.

Per generated token t of sequence b (mask_bt = 1 on tokens the policy produced, including ``<embtoken>``):

    ratio      = exp(logp_new - logp_old)                        (logp_old: the rollout policy, a constant)
    surrogate  = min(ratio * A_b, clip(ratio, 1 - eps_low, 1 + eps_high) * A_b)
    kl         = min(exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1, kl_clamp)     (k3 estimator, >= 0)
    loss_bt    = -surrogate + beta * kl

and the scalar loss aggregates ``loss_bt`` over masked tokens with one of :data:`AGGREGATIONS`. The surrogate is
written as ``where(clip is active, clipped, unclipped)``, which equals the ``min`` above in value and has the standard
PPO gradient (zero where the clip is active) without ``min``'s tie-splitting.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

# exp of a log-ratio beyond this would overflow float32 long before the clamp applies; clip it first.
_MAX_LOG_RATIO = 20.0


def _token_mean(x_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Every generated token of the batch weighs the same (long traces contribute more tokens)."""
    return jnp.sum(x_bt * mask_bt) / jnp.maximum(jnp.sum(mask_bt), 1.0)


def _sequence_mean(x_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Mean over sequences of each sequence's token mean (sequences with no tokens are left out)."""
    tokens_b = jnp.sum(mask_bt, axis=1)
    per_seq_b = jnp.sum(x_bt * mask_bt, axis=1) / jnp.maximum(tokens_b, 1.0)
    has_b = (tokens_b > 0).astype(x_bt.dtype)
    return jnp.sum(per_seq_b * has_b) / jnp.maximum(jnp.sum(has_b), 1.0)


def _token_sum_norm(x_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Dr. GRPO: token sum divided by a constant (B x padded length), so no length normalisation bias."""
    return jnp.sum(x_bt * mask_bt) / (x_bt.shape[0] * x_bt.shape[1])


AGGREGATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "token_mean": _token_mean,
    "sequence_mean": _sequence_mean,
    "token_sum_norm": _token_sum_norm,
}


def k3_kl(logp_new_bt: jax.Array, logp_ref_bt: jax.Array, kl_clamp: float) -> jax.Array:
    """Per-token k3 estimator of KL(new || ref): ``exp(d) - d - 1`` with ``d = ref - new``, capped at ``kl_clamp``."""
    delta = jnp.clip(jax.lax.stop_gradient(logp_ref_bt) - logp_new_bt, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.minimum(jnp.exp(delta) - delta - 1.0, kl_clamp)


def policy_loss(logp_new_bt: jax.Array, logp_old_bt: jax.Array, logp_ref_bt: Optional[jax.Array], adv_b: jax.Array,
                mask_bt: jax.Array, eps_low: float, eps_high: float, beta: float, kl_clamp: float,
                aggregation: str = "token_mean"):
    """``(loss, metrics)`` for one GRPO update on a batch of sampled sequences (see the module docstring).

    ``logp_old_bt`` and ``logp_ref_bt`` are treated as constants (``stop_gradient``); ``logp_ref_bt`` may be None when
    ``beta == 0``. Metrics (masked token means unless noted): pg_loss (aggregated like the loss), kl, clip_fraction
    (tokens where the clip is active), clip_low / clip_high fractions, ratio_mean, ratio_max (over masked tokens).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; known: {sorted(AGGREGATIONS)}")
    if logp_new_bt.shape != logp_old_bt.shape or logp_new_bt.shape != mask_bt.shape:
        raise ValueError(f"policy_loss: logp_new {logp_new_bt.shape}, logp_old {logp_old_bt.shape} and mask "
                         f"{mask_bt.shape} must all be [B, T]")
    if adv_b.shape != logp_new_bt.shape[:1]:
        raise ValueError(f"policy_loss: advantages {adv_b.shape} must be [B] with B = {logp_new_bt.shape[0]}")
    if logp_ref_bt is None and beta != 0:
        raise ValueError("policy_loss: beta > 0 needs reference log-probs")
    agg = AGGREGATIONS[aggregation]
    mask = mask_bt.astype(jnp.float32)
    new = logp_new_bt.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp_old_bt.astype(jnp.float32))
    a_b1 = jax.lax.stop_gradient(adv_b.astype(jnp.float32))[:, None]

    ratio = jnp.exp(new - old)
    clip_high = (a_b1 > 0) & (ratio > 1.0 + eps_high)
    clip_low = (a_b1 < 0) & (ratio < 1.0 - eps_low)
    clipped = clip_high | clip_low
    surrogate = jnp.where(clipped, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a_b1, ratio * a_b1)
    pg_bt = -surrogate
    if logp_ref_bt is None:
        kl_bt = jnp.zeros_like(new)
    else:
        kl_bt = k3_kl(new, logp_ref_bt.astype(jnp.float32), kl_clamp)
    loss = agg(pg_bt + beta * kl_bt, mask)

    sg = jax.lax.stop_gradient
    metrics = {
        "pg_loss": sg(agg(pg_bt, mask)),
        "kl": sg(_token_mean(kl_bt, mask)),
        "clip_fraction": _token_mean(clipped.astype(jnp.float32), mask),
        "clip_low_fraction": _token_mean(clip_low.astype(jnp.float32), mask),
        "clip_high_fraction": _token_mean(clip_high.astype(jnp.float32), mask),
        "ratio_mean": sg(_token_mean(ratio, mask)),
        "ratio_max": sg(jnp.max(jnp.where(mask > 0, ratio, 0.0))),
    }
    return loss, metrics
