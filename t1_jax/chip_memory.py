"""Per-chip memory of a compiled step, by role: what the precision policy costs on each chip of a slice.

XLA's memory analysis (``t1_jax.tpu.MemoryReport``) gives arguments, outputs and temporaries per device. This module
splits them by what the bytes are for, from the abstract inputs' shardings (no compile needed):

* exact, from the arguments: float32 master parameters, AdamW moments, the GRPO pool snapshot and frozen reference
  policy (compute dtype), the batch;
* estimated, inside the temporaries: the float32 gradient (one more master-sized shard, the output of the
  reduce-scatter), the compute-dtype copy of one layer's weights gathered for its matmuls (FSDP), and for a rollout
  the compute-dtype copy of the whole policy shard the sampler decodes with; the rest of the temporaries is
  activations (with remat: each layer's input, plus one layer's backward), attention scores and collectives' buffers.
"""
from __future__ import annotations

import math
from typing import Any, Optional

GiB = 1024 ** 3


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of ``tree``'s leaves (ShapeDtypeStructs or arrays with a sharding)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and shape:
            shape = tuple(sharding.shard_shape(shape))
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def layer_weight_bytes(model_cfg, dtype_name: str) -> int:
    """Bytes of one decoder layer's weights, whole (as gathered for its matmuls), in ``dtype_name``."""
    import numpy as np

    from t1_jax.model.counts import layer_shapes

    return sum(math.prod(s) for s in layer_shapes(model_cfg).values()) * np.dtype(dtype_name).itemsize


def train_step_breakdown(state: Any, batch: Any, frozen: Any, model_cfg, temp_bytes: Optional[int]) -> dict[str, int]:
    """Per-chip bytes by role of a train step ``(state, batch, frozen)``; see the module docstring."""
    parts = {"masters": shard_bytes(state.params), "moments": shard_bytes(state.opt_state)}
    if state.extra is not None:
        parts["pool snapshot"] = shard_bytes(state.extra)
    if frozen is not None:
        parts["reference policy"] = shard_bytes(frozen)
    parts["batch"] = shard_bytes(batch)
    estimated = {"gradients (est.)": parts["masters"],
                 "one gathered layer (est.)": layer_weight_bytes(model_cfg, model_cfg.compute_dtype)}
    return _with_rest(parts, estimated, temp_bytes)


def rollout_breakdown(params: Any, model_cfg, temp_bytes: Optional[int]) -> dict[str, int]:
    """Per-chip bytes by role of the rollout sampler ``(params, prompts, ...)``."""
    import numpy as np

    masters = shard_bytes(params)
    ratio = np.dtype(model_cfg.compute_dtype).itemsize / max(np.dtype(model_cfg.param_dtype).itemsize, 1)
    estimated = {"compute copy of the policy (est.)": int(masters * ratio)}
    return _with_rest({"masters": masters}, estimated, temp_bytes)


def _with_rest(parts: dict[str, int], estimated: dict[str, int], temp_bytes: Optional[int]) -> dict[str, int]:
    out = dict(parts)
    out.update(estimated)
    if temp_bytes:
        out["activations and the rest"] = max(0, temp_bytes - sum(estimated.values()))
    return out


def format_breakdown(parts: dict[str, int]) -> str:
    return "per-chip by role: " + ", ".join(f"{name} {value / GiB:.2f} GiB" for name, value in parts.items())
