"""Splash attention: the Pallas TPU flash-attention kernel for the model's full-sequence passes (docs/model.md).

``splash_attention(q_btnh, k_bkth, v_bkth, mask_bt, ...)`` computes what ``qwen3.attention`` computes for a call
over its own tokens (causal over slots, keys restricted to real tokens) without materialising the ``[b, k, g, t, s]``
scores: ``jax.experimental.pallas.ops.tpu.splash_attention`` walks ``block_q x block_kv`` tiles with an online
softmax (float32 statistics) and skips the tiles above the diagonal.

Our choices:
- **Padding as segment ids.** Query and key segment ids are both the real-token mask (1 real, 0 padding), and the
  static mask is causal, so a real query attends exactly the real keys at or before its slot (left or right
  padding, or holes). A padded query attends the padded keys at or before it, never an empty row (its own slot is
  one), so its output is finite; as in the XLA path, outputs at padded slots are meaningless.
- **Lengths padded to a block.** The kernel needs the length to be a multiple of its blocks and blocks to be
  multiples of 128 lanes. :func:`choose_block` picks one block size per length (overridable) and the sequence is
  padded with segment-0 slots up to a multiple of it; the output is sliced back.
- **GQA without repeating K/V**: the kernel's multi-head form takes ``n`` query heads and ``k`` key/value heads
  (``n % k == 0``) and maps query head ``i`` to key head ``i // (n / k)``, our grouping.
- **Softmax scale** ``head_dim ** -0.5`` is applied to q (in float32, then rounded to the compute dtype) before the
  kernel, which has no scale argument.
- **Sharding**: under an active mesh (``t1_jax.mesh.use_mesh``) the kernel runs inside ``shard_map`` over the mesh
  axes the logical rules give ``(batch, heads, length, head_dim)`` and ``(batch, kv_heads, length, head_dim)``
  (Mosaic kernels cannot be partitioned automatically); each shard ``vmap`` s the kernel over its batch rows. A
  sharded ``length`` is refused (the kernel needs whole sequences), as are key heads that do not split evenly.
- **Interpret mode** (``interpret=True``: the same kernel code run as a jitted scan over its grid) whenever the
  devices it runs on are not TPUs: the mesh's devices, else the default backend. Compile-only TPU devices of
  ``t1 compile-check`` count as TPUs, so the check compiles the real Mosaic kernel.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from t1_jax import mesh as mesh_lib

LANES = 128  # the kernel's blocks are multiples of this
MAX_BLOCK = 512
BNTH = ("batch", "heads", "length", "head_dim")
BKSH = ("batch", "kv_heads", "length", "head_dim")


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def choose_block(length: int, override: int = 0) -> int:
    """Block size for sequences of ``length`` tokens: ``override`` when given (a multiple of 128), else the length
    rounded up to 128 when that is at most 512 (one block), else the largest of 512 / 256 / 128 whose padding adds at
    most 1/8 to the 128-rounded length (4096 -> 512, 700 -> 256, 600 -> 128)."""
    if override:
        if override % LANES or override <= 0:
            raise ValueError(f"splash block size must be a positive multiple of {LANES}, got {override}")
        return override
    t128 = _round_up(length, LANES)
    if t128 <= MAX_BLOCK:
        return t128
    for block in (512, 256):
        if _round_up(length, block) - t128 <= t128 // 8:
            return block
    return LANES


def padded_length(length: int, block_q: int, block_kv: int) -> int:
    """The length the kernel runs at: a multiple of both blocks."""
    return _round_up(length, math.lcm(block_q, block_kv))


def computed_fraction(length: int, block_q: int = 0, block_kv: int = 0) -> float:
    """Fraction of a dense ``length x length`` score matrix whose tiles the kernel computes (causal tiles above the
    diagonal are skipped; the padding to the blocks is counted). The analytic roofline uses it (t1_jax.tpu)."""
    bq, bkv = choose_block(length, block_q), choose_block(length, block_kv)
    t_pad = padded_length(length, bq, bkv)
    tiles = sum(min(t_pad, (i + 1) * bq) // bkv + (min(t_pad, (i + 1) * bq) % bkv > 0) for i in range(t_pad // bq))
    return tiles * bq * bkv / float(length * length)


def attention_fraction(model_cfg, length: int) -> float:
    """Share of the dense ``length x length`` attention a full-sequence pass of ``model_cfg`` computes: 1 for the XLA
    attention (every score, masked or not), :func:`computed_fraction` for splash."""
    if model_cfg.attention_impl != "splash":
        return 1.0
    return computed_fraction(length, model_cfg.splash_block_q, model_cfg.splash_block_kv)


def _on_tpu(mesh) -> bool:
    if mesh is not None:
        return mesh.devices.flat[0].platform == "tpu"
    return jax.default_backend() == "tpu"


def _kernel(heads: int, length: int, block_q: int, block_kv: int, interpret: bool):
    """A kernel for ``heads`` heads of ``length`` slots. Built inside each trace that uses it: its mask tables become
    that trace's constants (a kernel cached across traces would carry another trace's values)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    blocks = sa.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
                           block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                           block_kv_dq=block_kv)
    mask = sa.MultiHeadMask([sa.CausalMask((length, length))] * heads)
    return sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q_bnth, k_bkth, v_bkth, seg_bt, *, block_q: int, block_kv: int, interpret: bool):
    """The kernel over one shard's rows: ``vmap`` over the batch, segment ids = the padding mask."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    kernel = _kernel(q_bnth.shape[1], q_bnth.shape[2], block_q, block_kv, interpret)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(s, s)))(q_bnth, k_bkth, v_bkth, seg_bt)


def _shard_specs(mesh, rules, n: int, kv: int):
    q_spec = mesh_lib.logical_to_spec(BNTH, rules)
    k_spec = mesh_lib.logical_to_spec(BKSH, rules)
    seg_spec = mesh_lib.logical_to_spec(("batch", "length"), rules)
    if q_spec[2] is not None or k_spec[2] is not None:
        raise ValueError("splash attention needs whole sequences per device: the logical axis 'length' must not be "
                         f"sharded (rules give q {q_spec}, k {k_spec})")
    if q_spec[1] != k_spec[1]:
        raise ValueError(f"splash attention: heads and kv_heads must be sharded over the same mesh axes for GQA, got "
                         f"{q_spec[1]!r} and {k_spec[1]!r}")
    head_shards = math.prod(mesh.shape[a] for a in mesh_lib._as_tuple(q_spec[1]))
    if n % head_shards or kv % head_shards:
        raise ValueError(f"splash attention: {n} query / {kv} key-value heads do not split over {head_shards} head "
                         "shards")
    return q_spec, k_spec, seg_spec


def splash_attention(q_btnh: jax.Array, k_bkth: jax.Array, v_bkth: jax.Array, mask_bt: jax.Array, compute_dtype,
                     *, block_q: int = 0, block_kv: int = 0, interpret: Optional[bool] = None) -> jax.Array:
    """Causal self-attention of a call's own tokens with padding ``mask_bt`` (True = real), ``[b, t, n, h]`` out.

    ``q_btnh`` ``[b, t, n, h]``, keys/values ``[b, k, t, h]`` (the layout ``qwen3.decoder_layer`` has them in);
    ``block_q`` / ``block_kv`` 0 = :func:`choose_block`; ``interpret`` None = on unless the devices are TPUs.
    """
    b, t, n, h = q_btnh.shape
    kv = k_bkth.shape[1]
    active = mesh_lib._ACTIVE.get()
    mesh, rules = active if active is not None else (None, None)
    interpret = (not _on_tpu(mesh)) if interpret is None else interpret
    bq, bkv = choose_block(t, block_q), choose_block(t, block_kv)
    t_pad = padded_length(t, bq, bkv)
    pad = ((0, 0), (0, 0), (0, t_pad - t), (0, 0))
    q_bnth = (q_btnh.astype(jnp.float32) * np.float32(h ** -0.5)).astype(compute_dtype).transpose(0, 2, 1, 3)
    q_bnth = jnp.pad(q_bnth, pad)
    k_bkth = jnp.pad(k_bkth.astype(compute_dtype), pad)
    v_bkth = jnp.pad(v_bkth.astype(compute_dtype), pad)
    seg_bt = jnp.pad(mask_bt.astype(jnp.int32), ((0, 0), (0, t_pad - t)))
    local = functools.partial(_local_attention, block_q=bq, block_kv=bkv, interpret=interpret)
    if mesh is None:
        out_bnth = local(q_bnth, k_bkth, v_bkth, seg_bt)
    else:
        q_spec, k_spec, seg_spec = _shard_specs(mesh, rules, n, kv)
        out_bnth = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, k_spec, k_spec, seg_spec), out_specs=q_spec,
                                 check_vma=False)(q_bnth, k_bkth, v_bkth, seg_bt)
    return out_bnth[:, :, :t].transpose(0, 2, 1, 3)
