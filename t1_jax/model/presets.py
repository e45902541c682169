"""Model presets (the published Qwen3 shapes) and construction of a ModelConfig from a Hugging Face ``config.json``."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Union

from t1_jax.config import ConfigError, ModelConfig

# Special token ids shared by every Qwen3 tokenizer: <|endoftext|> 151643 (also padding), <|im_end|> 151645.
_QWEN3_COMMON = dict(vocab_size=151936, head_dim=128, rms_norm_eps=1e-6, param_dtype="bfloat16",
                     compute_dtype="bfloat16", eos_token_ids=(151645, 151643), pad_token_id=151643)


def _qwen3(**kw: Any) -> ModelConfig:
    return ModelConfig(**{**_QWEN3_COMMON, **kw})


PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": _qwen3(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16, num_kv_heads=8,
                         rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=True),
    "qwen3-1.7b": _qwen3(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16, num_kv_heads=8,
                         rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=True),
    "qwen3-4b": _qwen3(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8,
                       rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=True),
    "qwen3-4b-instruct-2507": _qwen3(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                                     num_kv_heads=8, rope_theta=5e6, max_position_embeddings=262144,
                                     tie_word_embeddings=True),
    "qwen3-8b": _qwen3(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8,
                       rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=False),
    # Teachers for stage-2 traces (docs/tpu.md, "Teacher generation"): Qwen/Qwen3-14B and Qwen/Qwen3-32B config.json.
    "qwen3-14b": _qwen3(hidden_size=5120, intermediate_size=17408, num_layers=40, num_heads=40, num_kv_heads=8,
                        rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=False),
    "qwen3-32b": _qwen3(hidden_size=5120, intermediate_size=25600, num_layers=64, num_heads=64, num_kv_heads=8,
                        rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=False),
    # Test configs (float32): "tiny" is ModelConfig's default; "tiny-untied" exercises the separate LM head.
    "tiny": ModelConfig(),
    "tiny-untied": ModelConfig(tie_word_embeddings=False),
}

_HF_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _load_json(config_json: Union[dict, str, os.PathLike]) -> dict:
    if isinstance(config_json, dict):
        return config_json
    text = os.fspath(config_json)
    if os.path.isdir(text):
        text = os.path.join(text, "config.json")
    if os.path.isfile(text):
        with open(text) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{text}:{e.lineno}: invalid JSON ({e.msg})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{text!r} is neither a config.json file, a folder holding one, nor JSON text") from None


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (only default RoPE)")
    theta = rope.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        raise ConfigError("config.json has no rope_theta (top level or in rope_parameters)")
    return float(theta)


def from_hf_config(config_json: Union[dict, str, os.PathLike], **overrides: Any) -> ModelConfig:
    """ModelConfig from an HF Qwen3 ``config.json`` (a dict, a path to the file or its folder, or JSON text).

    The checkpoint's ``dtype``/``torch_dtype`` becomes both param and compute dtype (override with keywords).
    Features the port does not implement (sliding window, attention bias, other RoPE types) are refused.
    """
    hf = _load_json(config_json)
    model_type = hf.get("model_type", "qwen3")
    if model_type != "qwen3":
        raise ConfigError(f"config.json: model_type {model_type!r} is not qwen3")
    if hf.get("use_sliding_window"):
        raise ConfigError("config.json: use_sliding_window=true is not supported")
    if hf.get("attention_bias"):
        raise ConfigError("config.json: attention_bias=true is not supported (Qwen3 has no attention bias)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
        raise ConfigError(f"config.json lacks {', '.join(missing)}")
    dtype = _HF_DTYPES.get(str(hf.get("dtype") or hf.get("torch_dtype") or "float32"), "float32")
    eos = hf.get("eos_token_id")
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    pad = hf.get("pad_token_id")
    cfg = ModelConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]),
        rope_theta=_rope_theta(hf), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 40960)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), param_dtype=dtype, compute_dtype=dtype,
        eos_token_ids=eos_ids, pad_token_id=int(pad) if pad is not None else (eos_ids[-1] if eos_ids else 0))
    cfg = dataclasses.replace(cfg, **overrides)
    problems = cfg.validate()
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def to_hf_config(cfg: ModelConfig, dtype: str | None = None) -> dict:
    """An HF ``config.json`` dict for Qwen3ForCausalLM (transformers 4.5x and 5.x both read it)."""
    eos = list(cfg.eos_token_ids)
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None, "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": False,
        "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None,
        "initializer_range": 0.02, "use_cache": True, "dtype": dtype or cfg.param_dtype,
        "torch_dtype": dtype or cfg.param_dtype, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id, "bos_token_id": None,
    }
