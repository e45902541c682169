"""AdamW with linear warmup + cosine decay, global-norm clipping, and no weight decay on norms and embeddings."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from t1_jax.config import OptimizerConfig

# A parameter whose path contains one of these names is not decayed (norm scales, token embeddings).
NO_DECAY_KEYS = ("norm", "embed", "bias")


def learning_rate_schedule(cfg: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * end_lr_ratio``."""
    warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
                                              decay_steps=max(num_steps, warmup + 1),
                                              end_value=cfg.lr * cfg.end_lr_ratio)


def _path_text(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts).lower()


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: everything but norms, embeddings and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(key in _path_text(path) for key in NO_DECAY_KEYS), params)


def make_optimizer(cfg: OptimizerConfig, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(cfg, num_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule


def update_metrics(old_params: Any, new_params: Any) -> dict[str, jax.Array]:
    """What an update did to the stored parameters (so a stalled run shows in the logs within minutes).

    ``param_changed_fraction``: share of all parameter elements whose stored value changed; ``param_changed_min``:
    the same share for the parameter array that moved least (a frozen norm or embedding shows here);
    ``update_ratio``: ``||new - old|| / ||old||`` over all parameters, measured on the stored values, so updates that
    rounded away count as zero. With float32 masters and AdamW the first two are ~1 on every step after warmup.
    """
    olds, news = jax.tree_util.tree_leaves(old_params), jax.tree_util.tree_leaves(new_params)
    changed = [jnp.sum((n != o).astype(jnp.float32)) for o, n in zip(olds, news)]
    sizes = [float(o.size) for o in olds]
    delta_sq = sum(jnp.sum(jnp.square(n.astype(jnp.float32) - o.astype(jnp.float32))) for o, n in zip(olds, news))
    old_sq = sum(jnp.sum(jnp.square(o.astype(jnp.float32))) for o in olds)
    return {"param_changed_fraction": sum(changed) / sum(sizes),
            "param_changed_min": jnp.min(jnp.stack([c / size for c, size in zip(changed, sizes)])),
            "update_ratio": jnp.sqrt(delta_sq) / jnp.maximum(jnp.sqrt(old_sq), 1e-30)}


# The key under which a micro-batch carries the whole step's normalisers (see ``accumulate_gradients``).
NORMALIZERS = "_normalizers"


def accumulate_gradients(grad_fn: Callable, params: Any, batch: Any, rng: jax.Array, steps: int,
                         normalizers: Optional[Callable[[Any], dict]] = None):
    """Mean of ``grad_fn(params, micro_batch, rng_i) -> ((loss, metrics), grads)`` over ``steps`` micro-batches.

    The leading dimension of every batch leaf is split into ``steps`` equal parts and scanned, so peak activation
    memory is that of one micro-batch. With ``steps == 1`` this is a plain call.

    ``normalizers(batch) -> {name: count}`` (counts that are sums over rows, e.g. a token-mean loss's target tokens):
    every micro-batch is given ``batch[NORMALIZERS] = whole-batch count / steps``; a loss that divides its micro-batch
    sum by that makes the mean over micro-batches the whole batch's sum over the whole batch's count, i.e. the loss
    and gradient of one full batch, whatever each micro-batch's own count. Without it the step is a mean of
    per-micro-batch means.
    """
    if steps == 1:
        return grad_fn(params, batch, rng)

    def split(x):
        if x.shape[0] % steps:
            raise ValueError(f"batch dimension {x.shape[0]} is not divisible by grad_accum_steps={steps}")
        return x.reshape(steps, x.shape[0] // steps, *x.shape[1:])

    micro = jax.tree_util.tree_map(split, batch)
    rngs = jax.random.split(rng, steps)
    counts = None if normalizers is None else jax.tree_util.tree_map(
        lambda c: jnp.asarray(c, jnp.float32) / steps, normalizers(batch))

    def with_counts(micro_batch):
        return micro_batch if counts is None else {**micro_batch, NORMALIZERS: counts}

    def body(carry, xs):
        micro_batch, micro_rng = xs
        (loss, metrics), grads = grad_fn(params, with_counts(micro_batch), micro_rng)
        acc = jax.tree_util.tree_map(lambda a, b: a + b / steps, carry, (loss, metrics, grads))
        return acc, None

    first = with_counts(jax.tree_util.tree_map(lambda x: x[0], micro))
    (loss0, metrics0), grads0 = jax.eval_shape(grad_fn, params, first, rngs[0])
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, metrics0, grads0))
    (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro, rngs))
    return (loss, metrics), grads
