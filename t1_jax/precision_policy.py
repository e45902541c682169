"""The training precision policy, checked before anything compiles (pure Python: no JAX import).

Policy (docs/training.md, "Precision"): master parameters and AdamW moments in float32 (``model.param_dtype``),
matmuls and activations in ``model.compute_dtype`` (bfloat16 on TPU), weight gradients produced and reduced in
float32 (``t1_jax.model.precision.weight_einsum``), bfloat16 only where nothing is updated: the frozen GRPO reference
policy, the GRPO pool snapshot, inference, and HF export (``t1 convert t1-to-hf --dtype bfloat16``).

A training config whose masters are narrower than float32 is refused with the numbers: AdamW moves a weight by
about ``optimizer.lr`` per step, and a float format with ``p`` significant bits stores a weight ``w`` only to a
spacing of ``2**(floor(log2 |w|) - p + 1)``; an update smaller than half that spacing rounds back to the old value,
every step, and never accumulates.
"""
from __future__ import annotations

import math

# Significant bits (including the implicit leading one) of the dtypes a config may name.
SIGNIFICAND_BITS = {"float32": 24, "bfloat16": 8, "float16": 11}
# Magnitudes at which the refusal quotes the spacing: a typical linear weight (the init std of Qwen3 and of ours) and
# a norm scale (initialised to 1).
TYPICAL_WEIGHT = 0.02
NORM_SCALE = 1.0
# Measured with t1_jax.optimizer.make_optimizer on weights ~ N(0, 0.02^2), 10 steps (issue 13; docs/training.md).
MEASURED = "measured with this optimizer on N(0, 0.02²) weights: 14.9% of them change at lr 1e-5, 1.9% at lr 1e-6"


def spacing(value: float, dtype: str) -> float:
    """Distance between ``value`` and the next representable number of ``dtype`` (normal numbers)."""
    exponent = math.floor(math.log2(abs(value)))
    return 2.0 ** (exponent - SIGNIFICAND_BITS[dtype] + 1)


def lost_update_threshold(value: float, dtype: str) -> float:
    """Updates smaller than this leave a weight of magnitude ``value`` unchanged (round to nearest)."""
    return spacing(value, dtype) / 2


def master_weight_problems(param_dtype: str, lr: float) -> list[str]:
    """Why ``param_dtype`` masters cannot train at peak learning rate ``lr`` (empty when they can).

    Any master dtype narrower than float32 is refused when the updates of a norm scale (magnitude 1) would round
    away, which for bfloat16 is every learning rate below 3.9e-3, i.e. every fine-tuning run; the message also gives
    the threshold for a typical weight of 0.02.
    """
    if param_dtype == "float32" or param_dtype not in SIGNIFICAND_BITS:
        return []
    norm_threshold = lost_update_threshold(NORM_SCALE, param_dtype)
    if lr >= norm_threshold:
        return []
    weight_threshold = lost_update_threshold(TYPICAL_WEIGHT, param_dtype)
    lost = ("most weights stay where they are" if lr < weight_threshold else
            "norm scales never move and small weights barely do")
    return [f"model.param_dtype={param_dtype} cannot hold this run's updates: {param_dtype} keeps "
            f"{SIGNIFICAND_BITS[param_dtype]} significant bits, so a weight of {TYPICAL_WEIGHT} is stored in steps of "
            f"{spacing(TYPICAL_WEIGHT, param_dtype):.1e} and a norm scale of 1 in steps of "
            f"{spacing(NORM_SCALE, param_dtype):.1e}; AdamW moves each by about optimizer.lr={lr:g} per step, and "
            f"updates below half a step ({weight_threshold:.1e} and {norm_threshold:.1e}) round to nothing, every "
            f"step, so {lost}{f' ({MEASURED})' if param_dtype == 'bfloat16' else ''}. Train with float32 master "
            f"weights: --set model.param_dtype=float32 "
            f"(matmuls stay in model.compute_dtype; see docs/training.md, Precision)"]


def note_master_dtype_change(path: str, param_dtype: str) -> None:
    """Log when a workdir's earlier config stored parameters in another dtype: its checkpoints are restored into
    ``model.param_dtype`` (orbax casts each array), e.g. a run saved with bfloat16 masters resumes in float32."""
    import json
    import logging

    from t1_jax import fs

    try:
        if not fs.isfile(path):
            return
        before = json.loads(fs.read_text(path)).get("model", {}).get("param_dtype")
    except (OSError, ValueError):
        return
    if before and before != param_dtype:
        logging.getLogger(__name__).warning(
            "%s was written with model.param_dtype=%s; its checkpoints are restored into %s masters (and AdamW "
            "moments), each array cast on restore", path, before, param_dtype)
