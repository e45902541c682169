"""Qwen3 decoder (Flax NNX), KV cache, presets, sharding, HF import/export and orbax save/load."""
from t1_jax.model.cache import KVCache, cache_shardings, init_cache
from t1_jax.model.presets import PRESETS, from_hf_config, preset, to_hf_config
from t1_jax.model.qwen3 import Qwen3, abstract_model
from t1_jax.model.sharding import param_shardings, shard_model

__all__ = ["KVCache", "PRESETS", "Qwen3", "abstract_model", "cache_shardings", "from_hf_config", "init_cache",
           "param_shardings", "preset", "shard_model", "to_hf_config"]
