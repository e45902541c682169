"""What the model costs: parameter shapes and counts, and the analytic FLOPs of a pass. Pure Python, no JAX.

One source for every count: the trainer's MFU (``6 * param_count``), ``t1 compile-check``'s step FLOPs and roofline
(:func:`decoder_flops`, checked against XLA's ``cost_analysis`` in ``tests/test_tpu_compile.py``), chip-memory
estimates and ``benchmarks/bench_forward.py`` (``ModelConfig.flops_per_token``, as levanter keeps it on the config).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import numpy as np

from t1_jax.config import ModelConfig


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer parameter shapes (without the leading layer axis)."""
    d, f, n, k, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return {
        "attn_norm": (d,), "q_proj": (n, h, d), "k_proj": (k, h, d), "v_proj": (k, h, d), "q_norm": (h,),
        "k_norm": (h,), "o_proj": (d, n, h), "mlp_norm": (d,), "gate_proj": (f, d), "up_proj": (f, d),
        "down_proj": (d, f),
    }


@functools.lru_cache(maxsize=None)
def param_count(cfg: ModelConfig) -> int:
    shapes = layer_shapes(cfg)
    per_layer = sum(int(np.prod(s)) for s in shapes.values())
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    return cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size + cfg.hidden_size + head


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one step, summed over all devices, split by where they come from."""

    layers: float  # q/k/v/o projections and the gated MLP (the 6·params·tokens part when training)
    attention: float  # scores (QK^T) and the weighted sum (AV)
    lm_head: float  # logits at the positions that need them
    recompute: float  # rematerialised forward work in the backward pass

    @property
    def total(self) -> float:
        return self.layers + self.attention + self.lm_head + self.recompute


def layer_params(model_cfg) -> int:
    """Matmul parameters of one decoder layer: q, k, v, o projections and gate/up/down (norms excluded)."""
    d, h = model_cfg.hidden_size, model_cfg.head_dim
    n, k, f = model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.intermediate_size
    return d * h * (2 * n + 2 * k) + 3 * d * f


def decoder_flops(model_cfg, tokens: int, seq_len: int, training: bool = True, remat: Optional[str] = None,
                  lm_head_tokens: int = 0, causal_skip: bool = False, attention_fraction: float = 1.0) -> FlopCount:
    """FLOPs for ``tokens`` tokens in sequences of (padded) length ``seq_len`` through the decoder.

    * layers: 2·P·tokens forward with P = num_layers · :func:`layer_params` (embedding lookups are free);
    * attention: 4·L·n·h·seq_len per token forward (QK^T and AV over the whole padded length, which is what a dense
      masked einsum computes; ``causal_skip=True`` halves it for kernels that skip the masked half;
      ``attention_fraction`` scales it by the share of score tiles a blocked kernel computes, e.g. the splash
      kernel's causal tiles: ``t1_jax.model.splash.computed_fraction``);
    * lm_head: 2·d·v per position whose logits are computed (``lm_head_tokens``; stage 1 needs none);
    * training: backward = 2 × forward for each of the above (so layers give the familiar 6·P·tokens);
    * remat (default ``model_cfg.remat``): ``full`` recomputes each layer's forward in the backward pass except the
      output and down projections, whose results the backward never reads (JAX drops them); ``dots`` (save
      non-batched dots, i.e. the projections) recomputes only the batched attention dots; ``none`` nothing. XLA may
      prune a little more of a ``full`` recompute, so for ``full`` this is an upper bound (within ~3% in the test).
    """
    if tokens < 0 or seq_len <= 0 or lm_head_tokens < 0:
        raise ValueError(f"decoder_flops: need tokens >= 0, seq_len > 0, lm_head_tokens >= 0; got {tokens}, "
                         f"{seq_len}, {lm_head_tokens}")
    remat = model_cfg.remat if remat is None else remat
    if remat not in ("none", "full", "dots"):
        raise ValueError(f"decoder_flops: remat must be none, full or dots; got {remat!r}")
    num_layers = model_cfg.num_layers
    layers_fwd = 2.0 * num_layers * layer_params(model_cfg) * tokens
    attention_fwd = 4.0 * num_layers * model_cfg.num_heads * model_cfg.head_dim * seq_len * tokens
    if causal_skip:
        attention_fwd /= 2
    attention_fwd *= attention_fraction
    lm_head_fwd = 2.0 * model_cfg.hidden_size * model_cfg.vocab_size * lm_head_tokens
    if not training:
        return FlopCount(layers_fwd, attention_fwd, lm_head_fwd, 0.0)
    d, f = model_cfg.hidden_size, model_cfg.intermediate_size
    unread_fwd = 2.0 * num_layers * (model_cfg.num_heads * model_cfg.head_dim * d + f * d) * tokens  # o and down
    recompute = {"none": 0.0, "full": layers_fwd - unread_fwd + attention_fwd, "dots": attention_fwd}[remat]
    return FlopCount(3 * layers_fwd, 3 * attention_fwd, 3 * lm_head_fwd, recompute)
