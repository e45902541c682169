"""Qwen3-32B (bfloat16) as the stage-2 teacher: generation of reasoning traces, per-slice mesh/batch layouts.

`t1 compile-check --config experiments/qwen3_32b_teacher_generate.py --topology v5p-8` (or v4-32) compiles the
sampler's prefill and decoding loop (t1_jax.sampler: `_prefill`, `_decode`, called as `sample()` calls them) for the
slice and prints per-chip memory and the decode roofline; results in docs/tpu.md, "Teacher generation".
`COMPILE_CHECK = "generate"` below selects those programs (instead of a training stage's).

OUR CHOICES (the T1 report publishes none of these):
- Budgets: prompts up to 1024 tokens (room for a 256-token stage-2 query, a 512-token document and the teacher's
  instructions), 512 new tokens: stage 2 trains on traces of at most text.max_reasoning_tokens = 512 and skips longer
  ones (experiments/t1_4b_stage2.py, docs/training.md), so a longer budget would only generate traces it drops.
- Sampling: Qwen3's recommended thinking-mode settings (temperature 0.6, top-p 0.95, top-k 20; its model card advises
  against greedy decoding there).
- Layouts: data.global_batch_size = prompts per generation call (the sampler's batch). Decoding reads every weight a
  chip multiplies by once per step, so the weights are split by tensor parallelism (tensor <= 8: the model has 8 KV
  heads, and the KV cache is split over them), never by FSDP (an FSDP shard is gathered back every step); data
  parallelism replicates the weights and splits the batch. 32.8B bfloat16 parameters are 61 GiB: 15.3 GiB per chip at
  tensor 4 (v5p-8), 7.6 GiB at tensor 8 (v4-32). The batch then fills what the KV cache (256 KiB per token: 64 layers x
  8 KV heads x 128 x (k, v) x 2 bytes, over the 1537-slot cache) and the prefill's activations leave of the HBM:
  v5p-8 192 prompts (the prefill peaks at 94.6% of HBM; 256 reach 98.0%), v4-32 256 (85.7%).
Fixed by the model: the Qwen/Qwen3-32B shape (t1_jax.model.presets, from its config.json).
"""
import dataclasses

from t1_jax.config import DataConfig, ExperimentConfig, MeshConfig, SamplingConfig, TextConfig
from t1_jax.layouts import PodLayout, apply_layout
from t1_jax.model.presets import preset

COMPILE_CHECK = "generate"
DEFAULT_TOPOLOGY = "v5p-8"
LAYOUTS = {
    "v5p-8": PodLayout(data=1, fsdp=1, tensor=4, global_batch_size=192),
    "v4-32": PodLayout(data=2, fsdp=1, tensor=8, global_batch_size=256),
}


def base_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="qwen3-32b-teacher-generate",
        model=dataclasses.replace(preset("qwen3-32b"), remat="none", scan_layers=True, param_dtype="bfloat16",
                                  compute_dtype="bfloat16"),
        mesh=MeshConfig(data=1, fsdp=1, tensor=-1),
        text=TextConfig(tokenizer="", max_query_tokens=1024, max_reasoning_tokens=512),
        data=DataConfig(global_batch_size=256),
        sampling=SamplingConfig(max_new_tokens=512, temperature=0.6, top_k=20, top_p=0.95,
                                prompt_buckets=(256, 512, 1024)),
    )


def get_config() -> ExperimentConfig:
    return apply_layout(base_config(), LAYOUTS, DEFAULT_TOPOLOGY)
