"""Token-level losses computed in sequence chunks, so ``[B, T, vocab]`` float32 logits never exist at once.

``logits_fn`` maps hidden states ``[..., D]`` to logits ``[..., V]`` (for T1: the tied LM head, params closed over).
The sequence is split into ``chunk``-long pieces scanned with ``lax.scan``; the scan body is rematerialised
(``jax.checkpoint``), so the backward pass stores only each chunk's hidden states and recomputes that chunk's logits,
instead of keeping every chunk's ``[B, chunk, V]`` logits as residuals (which would add up to ``[B, T, V]`` again).

Alignment is the caller's: ``hidden_btd[:, t]`` is scored against ``targets_bt[:, t]`` (i.e. pass hidden states of
positions ``0..T-2`` and targets ``1..T-1`` for next-token prediction).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _chunked(x_bt_any: jax.Array, chunk: int, fill) -> jax.Array:
    """[B, T, ...] -> [C, B, chunk, ...], padding T up to a multiple of ``chunk`` with ``fill``."""
    b, t = x_bt_any.shape[:2]
    c = -(-t // chunk)
    pad = c * chunk - t
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * (x_bt_any.ndim - 2)
        x_bt_any = jnp.pad(x_bt_any, widths, constant_values=fill)
    x = x_bt_any.reshape((b, c, chunk) + x_bt_any.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unchunk(x_cbt: jax.Array, t: int) -> jax.Array:
    """[C, B, chunk] -> [B, T] (dropping the padding)."""
    c, b, per_chunk = x_cbt.shape
    return jnp.moveaxis(x_cbt, 0, 1).reshape(b, c * per_chunk)[:, :t]


def _check(hidden_btd, targets_bt, chunk):
    if hidden_btd.ndim != 3 or targets_bt.shape != hidden_btd.shape[:2]:
        raise ValueError(f"hidden {hidden_btd.shape} must be [B, T, D] and targets {targets_bt.shape} [B, T]")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    return min(int(chunk), hidden_btd.shape[1])


def chunked_token_ce(hidden_btd: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array,
                     logits_fn: Callable[[jax.Array], jax.Array], chunk: int):
    """``(sum_ce, sum_weight)``: token sums of ``weights * -log softmax(logits_fn(hidden))[target]`` and of weights.

    The mean cross-entropy is ``sum_ce / max(sum_weight, 1)``; returning sums lets callers aggregate over micro-batches
    and devices before dividing. Logits are cast to float32 before the softmax.
    """
    chunk = _check(hidden_btd, targets_bt, chunk)
    h_cbtd = _chunked(hidden_btd, chunk, 0)
    y_cbt = _chunked(targets_bt.astype(jnp.int32), chunk, 0)
    w_cbt = _chunked(weights_bt.astype(jnp.float32), chunk, 0.0)

    @jax.checkpoint
    def chunk_sum(h_btd, y_bt, w_bt):
        logits_btv = logits_fn(h_btd).astype(jnp.float32)
        logz_bt = jax.nn.logsumexp(logits_btv, axis=-1)
        target_bt = jnp.take_along_axis(logits_btv, y_bt[..., None], axis=-1)[..., 0]
        return jnp.sum((logz_bt - target_bt) * w_bt)

    def body(total, xs):
        return total + chunk_sum(*xs), None

    sum_ce, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h_cbtd, y_cbt, w_cbt))
    return sum_ce, jnp.sum(weights_bt.astype(jnp.float32))


def token_logprobs(hidden_btd: jax.Array, targets_bt: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                   chunk: int, temperature: float = 1.0):
    """``(logp_bt, entropy_bt)`` of the policy ``softmax(logits_fn(hidden) / temperature)``, in float32.

    ``logp_bt[b, t]`` is the log-probability of ``targets_bt[b, t]``; ``entropy_bt`` the entropy of that position's
    distribution. Rollouts must use the same temperature so the GRPO ratio compares like with like.
    """
    chunk = _check(hidden_btd, targets_bt, chunk)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t = hidden_btd.shape[1]
    h_cbtd = _chunked(hidden_btd, chunk, 0)
    y_cbt = _chunked(targets_bt.astype(jnp.int32), chunk, 0)

    @jax.checkpoint
    def chunk_logp(h_btd, y_bt):
        logits_btv = logits_fn(h_btd).astype(jnp.float32) / temperature
        logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
        logp_bt = jnp.take_along_axis(logp_btv, y_bt[..., None], axis=-1)[..., 0]
        entropy_bt = -jnp.sum(jnp.exp(logp_btv) * logp_btv, axis=-1)
        return logp_bt, entropy_bt

    def body(carry, xs):
        return carry, chunk_logp(*xs)

    _, (logp_cbt, ent_cbt) = jax.lax.scan(body, None, (h_cbtd, y_cbt))
    return _unchunk(logp_cbt, t), _unchunk(ent_cbt, t)
