"""Mixed precision inside the model: float32 master weights, compute-dtype matmuls, float32 weight gradients.

The precision policy (docs/training.md, "Precision"): parameters and optimizer moments are stored in
``model.param_dtype`` (float32 for training), activations and matmuls run in ``model.compute_dtype`` (bfloat16 on
TPU). Casting a master weight to bfloat16 and calling ``jnp.einsum`` would compute the weight's gradient as a bfloat16
array and convert it back to float32 afterwards. Under FSDP that gradient is a partial sum per batch shard; XLA's TPU
compiler moves the bfloat16 conversion in front of the cross-device reduction (seen in the compiled HLO of a v5p
step: the q/k/v/o gradients were all-reduced in bfloat16), so the sum over shards would be taken in bfloat16.

:func:`weight_einsum` is that matmul with its own gradient: the forward is the same compute-dtype product with
float32 accumulation, the input gradient comes back in the compute dtype, and the weight gradient is produced
directly in float32 (``preferred_element_type``), so every reduction of it (over the batch, the micro-batches, the
devices) happens in float32. ``tests/test_precision.py`` checks the gradients against a float64 computation and the
dtype of every gradient reduction in a compiled TPU step.

Few-row products on CPU (decode steps: a handful of tokens against a whole weight matrix) are written as a fused
multiply-and-reduce instead of a dot: XLA's CPU dot for 2-16 rows reads its weight at 21-35% of the memory bandwidth,
the fused reduction reads each weight once at 46-61% of it (docs/benchmarks.md, "Decode"). TPU and GPU keep the dot.
"""
from __future__ import annotations

import functools

import math

import jax
import jax.numpy as jnp

from t1_jax.mesh import active_mesh

# Row counts (product of the activation's non-contracted dims) for which a CPU product is a multiply-and-reduce.
FEW_ROWS = range(2, 17)


def _parse(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.replace(" ", "").split("->")
    x, w = inputs.split(",")
    return x, w, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _mixed_einsum(spec: str, x, w, out_dtype):
    return jnp.einsum(spec, x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(out_dtype)


def _mixed_fwd(spec, x, w, out_dtype):
    return _mixed_einsum(spec, x, w, out_dtype), (x, w)


def _mixed_bwd(spec, out_dtype, residuals, g):
    del out_dtype
    x, w = residuals
    xs, ws, os_ = _parse(spec)
    g = g.astype(x.dtype)
    dx = jnp.einsum(f"{os_},{ws}->{xs}", g, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.einsum(f"{xs},{os_}->{ws}", x, g, preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw


_mixed_einsum.defvjp(_mixed_fwd, _mixed_bwd)


def target_platform() -> str:
    """The platform the traced program will run on: the active mesh's devices, else the default backend."""
    mesh = active_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def few_rows_on_cpu(rows: int) -> bool:
    """Whether a product with ``rows`` activation rows is written as a multiply-and-reduce (CPU decode steps)."""
    return rows in FEW_ROWS and target_platform() == "cpu"


def _contracted_suffix(spec: str) -> int:
    """How many trailing dims of ``x`` and ``w`` are contracted when the spec reads ``R C, O C -> R O`` (else 0)."""
    xs, ws, os_ = _parse(spec)
    contracted = "".join(c for c in ws if c in xs and c not in os_)
    if not contracted or not (xs.endswith(contracted) and ws.endswith(contracted)):
        return 0
    rows, outs = xs[:-len(contracted)], ws[:-len(contracted)]
    return len(contracted) if os_ == rows + outs else 0


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _few_rows_einsum(spec: str, x, w, out_dtype):
    """``einsum(spec, x, w)`` (spec ``R C, O C -> R O``) as one fused float32 multiply-and-reduce over ``C``: each
    weight is read once. The weight is rounded to ``x``'s dtype first, as in the dot. Gradients: as the dot's."""
    n_contracted = _contracted_suffix(spec)
    rows, outs = x.shape[:x.ndim - n_contracted], w.shape[:w.ndim - n_contracted]
    c = math.prod(x.shape[x.ndim - n_contracted:])
    w_flat = w.astype(x.dtype).reshape(-1, c).astype(jnp.float32)  # [O, C]
    # Tie x to this weight (adding 0 * one of its entries, which XLA does not fold): without it, two products of the
    # same x with same-shaped weights (k and v) share one broadcast x, which XLA then writes to memory as an [R, O, C]
    # array (R times the weight's bytes) instead of fusing it into each reduction.
    x_flat = x.reshape(-1, c).astype(jnp.float32) + 0.0 * w_flat[0, 0]  # [R, C]
    # Weight first: XLA's CPU pipeline hands this order to its fused (YNNPACK) reduction at ~2x the speed of the other.
    out_flat = jnp.sum(w_flat[None, :, :] * x_flat[:, None, :], axis=-1)  # [R, O]
    return out_flat.reshape(*rows, *outs).astype(out_dtype)


def _few_rows_fwd(spec, x, w, out_dtype):
    return _few_rows_einsum(spec, x, w, out_dtype), (x, w)


_few_rows_einsum.defvjp(_few_rows_fwd, _mixed_bwd)


def weight_einsum(spec: str, x, w, out_dtype=None):
    """``einsum(spec, x, w)`` in ``x``'s dtype with float32 accumulation, for an activation ``x`` and a weight ``w``.

    When ``w`` is stored in a wider dtype than ``x`` (float32 masters, bfloat16 compute) the weight's gradient is
    computed and returned in ``w``'s dtype without an intermediate rounding to ``x``'s dtype. Every index of ``x``
    must appear in ``w`` or the output, and every index of ``w`` in ``x`` or the output (true of projections).
    ``out_dtype`` defaults to ``x``'s dtype (the LM head asks for float32 logits).
    """
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    n_contracted = _contracted_suffix(spec)
    if n_contracted and few_rows_on_cpu(math.prod(x.shape[:x.ndim - n_contracted])):
        return _few_rows_einsum(spec, x, w, out_dtype)
    if jnp.dtype(w.dtype) == jnp.dtype(x.dtype):  # one dtype: the plain product (its gradient is already exact)
        return jnp.einsum(spec, x, w, preferred_element_type=None if out_dtype == x.dtype else out_dtype)
    return _mixed_einsum(spec, x, w, out_dtype)
