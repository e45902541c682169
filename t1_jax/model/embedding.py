"""The T1 embedding: the final-normed hidden state at ``<embtoken>``, float32, L2-normalised when asked.

Training (stages 1-3), the sampler, the encoder and compile-check all take it from here, so inference never imports
training code and the normalisation is written once.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from t1_jax.model.qwen3 import Qwen3


def positions_from_valid(valid_bt: jax.Array) -> jax.Array:
    """RoPE positions 0, 1, ... over the real tokens of left- or right-padded rows (padding: a clipped neighbour)."""
    return jnp.maximum(jnp.cumsum(valid_bt.astype(jnp.int32), axis=-1) - 1, 0)


def l2_normalize(x_bd: jax.Array) -> jax.Array:
    return x_bd / jnp.maximum(jnp.linalg.norm(x_bd, axis=-1, keepdims=True), 1e-6)


def embedding_at(hidden_btd: jax.Array, index_b: jax.Array, normalize: bool) -> jax.Array:
    """``[B, D]`` float32 hidden states at one position per row (``<embtoken>``'s), L2-normalised if ``normalize``."""
    emb_bd = jnp.take_along_axis(hidden_btd, index_b[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return l2_normalize(emb_bd) if normalize else emb_bd


def embed_last(model: Qwen3, ids_bt, valid_bt, normalize: bool):
    """(embedding_bd float32 at the last real token = ``<embtoken>``, hidden_btd)."""
    hidden_btd, _ = model(ids_bt, positions_from_valid(valid_bt), valid_bt)
    last_b = jnp.sum(valid_bt.astype(jnp.int32), axis=-1) - 1
    return embedding_at(hidden_btd, last_b, normalize), hidden_btd
