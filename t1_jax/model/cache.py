"""KV cache for decoding: keys/values of every layer in one stacked array, plus a per-slot validity mask.

Writes are slot-uniform: a forward with ``T`` new tokens writes them at slots ``[index, index + T)`` for every
sequence, and ``valid`` records which of those slots hold real tokens (False for padding). Attention is causal over
slots and restricted to valid slots, so a left- or right-padded prefill followed by one-token decode steps (with
per-sequence RoPE positions supplied by the caller) gives the same result as a full forward over each unpadded text.
"""
from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from t1_jax.config import ModelConfig, dtype as to_dtype
from t1_jax.mesh import LOGICAL_RULES, Rules, constrain, logical_sharding

KV_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")
VALID_AXES = ("batch", "length")


@flax.struct.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]
    valid: jax.Array  # [B, S] bool: slot holds a real token
    index: jax.Array  # int32 scalar: next slot to write

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


def cache_logical_axes() -> KVCache:
    """The logical axes of each cache field, as a KVCache of tuples."""
    return KVCache(k=KV_AXES, v=KV_AXES, valid=VALID_AXES, index=())


def cache_shardings(mesh: Mesh, rules: Rules = LOGICAL_RULES) -> KVCache:
    """NamedShardings for a KVCache (batch over data x fsdp, kv heads over tensor), e.g. for jit in/out shardings."""
    axes = cache_logical_axes()
    return KVCache(k=logical_sharding(mesh, axes.k, rules), v=logical_sharding(mesh, axes.v, rules),
                   valid=logical_sharding(mesh, axes.valid, rules), index=logical_sharding(mesh, (), rules))


def constrain_cache(cache: KVCache) -> KVCache:
    """Sharding constraints on a cache inside traced code (identity without an active mesh)."""
    return KVCache(k=constrain(cache.k, KV_AXES), v=constrain(cache.v, KV_AXES), valid=constrain(cache.valid,
                   VALID_AXES), index=cache.index)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None, mesh: Optional[Mesh] = None,
               rules: Rules = LOGICAL_RULES) -> KVCache:
    """An empty cache (all slots invalid, index 0). ``dtype`` defaults to the compute dtype.

    With ``mesh`` the arrays are created directly with their shardings; inside jit (no mesh argument) they follow
    the active ``use_mesh`` through the model's constraints.
    """
    if batch <= 0 or max_len <= 0:
        raise ValueError(f"init_cache: batch and max_len must be positive, got {batch} and {max_len}")
    kv_dtype = to_dtype(cfg.compute_dtype) if dtype is None else dtype
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)

    def make() -> KVCache:
        return KVCache(k=jnp.zeros(shape, kv_dtype), v=jnp.zeros(shape, kv_dtype),
                       valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

    if mesh is None:
        return make()
    return jax.jit(make, out_shardings=cache_shardings(mesh, rules))()
