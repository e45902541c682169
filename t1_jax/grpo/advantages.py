"""Group-relative advantages over the G samples of each query (``rewards_bg``: B queries x G samples).

The group mean is computed as ``r_0 + mean(r - r_0)`` (shifted by the group's first reward): mathematically the plain
mean, but exact when all rewards of a group are equal, so such a group gets advantages of exactly 0 and therefore a
policy-gradient term of exactly 0 (not rounding noise amplified by ``1 / (std + eps)``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _centered(rewards_bg: jax.Array) -> jax.Array:
    r = rewards_bg.astype(jnp.float32)
    shifted = r - r[:, :1]
    return shifted - jnp.mean(shifted, axis=1, keepdims=True)


def grpo_advantages(rewards_bg: jax.Array, eps: float) -> jax.Array:
    """``(r - mean_G) / (std_G + eps)`` with the population (ddof = 0) standard deviation of the group."""
    centered = _centered(rewards_bg)
    std = jnp.sqrt(jnp.mean(jnp.square(centered), axis=1, keepdims=True))
    return centered / (std + eps)


def drgrpo_advantages(rewards_bg: jax.Array, eps: float) -> jax.Array:
    """Dr. GRPO: ``r - mean_G`` (no division by the std, which up-weights near-uniform groups). ``eps`` is unused."""
    del eps
    return _centered(rewards_bg)


ADVANTAGES: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
}


def compute_advantages(name: str, rewards_bg: jax.Array, eps: float) -> jax.Array:
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage {name!r}; known: {sorted(ADVANTAGES)}")
    if rewards_bg.ndim != 2:
        raise ValueError(f"advantages: rewards must be [B, G], got shape {rewards_bg.shape}")
    return ADVANTAGES[name](rewards_bg, eps)
