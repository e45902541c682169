"""Qwen3 decoder (Flax NNX), KV cache, presets, sharding, HF import/export and orbax save/load."""
from t1_jax.model.cache import KVCache, cache_shardings, init_cache
from t1_jax.model.hf import export_hf, import_hf, set_token_row
from t1_jax.model.params_io import load_model, save_model
from t1_jax.model.presets import PRESETS, from_hf_config, preset, to_hf_config
from t1_jax.model.qwen3 import Qwen3, abstract_model
from t1_jax.model.sharding import param_shardings, shard_model

__all__ = ["KVCache", "PRESETS", "Qwen3", "abstract_model", "cache_shardings", "export_hf", "from_hf_config",
           "import_hf", "init_cache", "load_model", "param_shardings", "preset", "save_model", "set_token_row",
           "shard_model", "to_hf_config"]
