"""KV cache for decoding: every layer's keys/values, a per-slot validity mask and the next write slot.

Two layouts of the same content (``KVCache.per_layer`` tells which):
- **stacked**: ``k``/``v`` are one ``[L, B, K, S, H]`` array each; the layer loop is a ``lax.scan`` that slices its
  layer (TPU: XLA fuses those slices into the consumers).
- **per layer**: ``k``/``v`` are tuples of ``L`` arrays ``[B, K, S, H]``; the layer loop is unrolled and each layer
  updates its own (donated) buffer in place. On CPU, slicing a layer out of a stacked array is a copy of it on every
  decode step, so the sampler uses this layout there (``t1_jax.sampler.decode_layout``).

Keys and values are stored ``[..., kv_heads, length, head_dim]`` so attention reads them without a transpose.

``index`` is the next slot to write: a scalar when every row writes the same slots (a padded prompt batch), or one
per row ``[B]`` (continuous batching: each slot of the batch holds its own sequence). ``valid`` records which slots
hold real tokens; attention is causal over slots and restricted to valid ones, so a left- or right-padded prefill
followed by one-token decode steps (with per-sequence RoPE positions supplied by the caller) gives the same result as
a full forward over each unpadded text.
"""
from __future__ import annotations

from typing import Optional, Union

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from t1_jax.config import ModelConfig, dtype as to_dtype
from t1_jax.mesh import LOGICAL_RULES, Rules, constrain, logical_sharding

LAYER_KV_AXES = ("batch", "kv_heads", "length", "head_dim")
KV_AXES = ("layers", *LAYER_KV_AXES)
VALID_AXES = ("batch", "length")

Layers = Union[jax.Array, tuple[jax.Array, ...]]


@flax.struct.dataclass
class KVCache:
    k: Layers  # [L, B, K, S, H], or L arrays [B, K, S, H]
    v: Layers
    valid: jax.Array  # [B, S] bool: slot holds a real token
    index: jax.Array  # int32 scalar or [B]: next slot to write

    @property
    def per_layer(self) -> bool:
        return isinstance(self.k, (tuple, list))

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]


def _kv_axes(per_layer: bool, num_layers: int):
    return (LAYER_KV_AXES,) * num_layers if per_layer else KV_AXES


def cache_logical_axes(per_layer: bool = False, num_layers: int = 0, per_row_index: bool = False) -> KVCache:
    """The logical axes of each cache field, as a KVCache of tuples (a tuple of tuples per layer when per layer)."""
    kv = _kv_axes(per_layer, num_layers)
    return KVCache(k=kv, v=kv, valid=VALID_AXES, index=("batch",) if per_row_index else ())


def cache_shardings(mesh: Mesh, rules: Rules = LOGICAL_RULES, *, per_layer: bool = False, num_layers: int = 0,
                    per_row_index: bool = False) -> KVCache:
    """NamedShardings for a KVCache (batch over data x fsdp, kv heads over tensor), e.g. for jit in/out shardings."""
    axes = cache_logical_axes(per_layer, num_layers, per_row_index)

    def shard(a):
        return logical_sharding(mesh, a, rules)

    kv = tuple(shard(a) for a in axes.k) if per_layer else shard(axes.k)
    return KVCache(k=kv, v=kv, valid=shard(axes.valid), index=shard(axes.index))


def constrain_cache(cache: KVCache) -> KVCache:
    """Sharding constraints on a cache inside traced code (identity without an active mesh)."""
    if cache.per_layer:
        k = tuple(constrain(a, LAYER_KV_AXES) for a in cache.k)
        v = tuple(constrain(a, LAYER_KV_AXES) for a in cache.v)
    else:
        k, v = constrain(cache.k, KV_AXES), constrain(cache.v, KV_AXES)
    index = constrain(cache.index, ("batch",)) if cache.index.ndim else cache.index
    return KVCache(k=k, v=v, valid=constrain(cache.valid, VALID_AXES), index=index)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None, mesh: Optional[Mesh] = None,
               rules: Rules = LOGICAL_RULES, *, per_layer: bool = False, per_row_index: bool = False) -> KVCache:
    """An empty cache (all slots invalid, index 0). ``dtype`` defaults to the compute dtype.

    ``per_layer``: the per-layer layout (module doc). ``per_row_index``: one write index per row. With ``mesh`` the
    arrays are created directly with their shardings; inside jit (no mesh argument) they follow the active
    ``use_mesh`` through the model's constraints.
    """
    if batch <= 0 or max_len <= 0:
        raise ValueError(f"init_cache: batch and max_len must be positive, got {batch} and {max_len}")
    kv_dtype = to_dtype(cfg.compute_dtype) if dtype is None else dtype
    layer_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)

    def make() -> KVCache:
        if per_layer:
            k = tuple(jnp.zeros(layer_shape, kv_dtype) for _ in range(cfg.num_layers))
            v = tuple(jnp.zeros(layer_shape, kv_dtype) for _ in range(cfg.num_layers))
        else:
            k = jnp.zeros((cfg.num_layers, *layer_shape), kv_dtype)
            v = jnp.zeros((cfg.num_layers, *layer_shape), kv_dtype)
        index = jnp.zeros((batch,) if per_row_index else (), jnp.int32)
        return KVCache(k=k, v=v, valid=jnp.zeros((batch, max_len), bool), index=index)

    if mesh is None:
        return make()
    out = cache_shardings(mesh, rules, per_layer=per_layer, num_layers=cfg.num_layers, per_row_index=per_row_index)
    return jax.jit(make, out_shardings=out)()


def write_slots(buffer: jax.Array, new: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """Write ``new`` into ``buffer`` at ``index`` along ``axis`` (the batch is axis 0): one update when ``index`` is
    a scalar, one per row (a scatter) when it is ``[B]``."""
    if index.ndim == 0:
        starts = [0] * buffer.ndim
        starts[axis] = index
        return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), starts)

    def row(buf, upd, i):
        starts = [0] * buf.ndim
        starts[axis - 1] = i
        return jax.lax.dynamic_update_slice(buf, upd.astype(buf.dtype), starts)

    return jax.vmap(row)(buffer, new, index)
