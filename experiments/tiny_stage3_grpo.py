"""Tiny stage-3 (GRPO) config for CPU tests and compile-check tests: 2-layer Qwen3 shape, short rollouts."""
import dataclasses

from t1_jax.config import (DataConfig, ExperimentConfig, GRPOConfig, MeshConfig, ModelConfig, OptimizerConfig,
                           SamplingConfig, TextConfig, TrainerConfig)


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny-stage3-grpo",
        model=ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16),
        mesh=MeshConfig(data=-1, fsdp=2, tensor=2),
        text=TextConfig(max_query_tokens=64, max_doc_tokens=64, max_reasoning_tokens=16),
        data=DataConfig(global_batch_size=4, num_hard_negatives=3),
        optimizer=OptimizerConfig(lr=1e-4, warmup_steps=2),
        sampling=SamplingConfig(max_new_tokens=16, temperature=0.0, prompt_buckets=(64,)),
        grpo=GRPOConfig(group_size=4, logprob_chunk_size=16),
        trainer=dataclasses.replace(TrainerConfig(), stage="grpo", num_steps=10, checkpoint_every=5),
    )
