"""Tiny stage-2 (reasoning CE + InfoNCE) config for CPU tests and compile-check tests: 2-layer Qwen3 shape."""
import dataclasses

from t1_jax.config import (ContrastiveConfig, DataConfig, ExperimentConfig, MeshConfig, ModelConfig, OptimizerConfig,
                           TextConfig, TrainerConfig)


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny-stage2",
        model=ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16),
        mesh=MeshConfig(data=-1, fsdp=2, tensor=2),
        text=TextConfig(max_query_tokens=64, max_doc_tokens=64, max_reasoning_tokens=48),
        data=DataConfig(global_batch_size=8, num_hard_negatives=1),
        optimizer=OptimizerConfig(lr=3e-4, warmup_steps=10),
        loss=ContrastiveConfig(sft_weight=1.0, ce_chunk_size=32),
        trainer=dataclasses.replace(TrainerConfig(), stage="reasoning", num_steps=100, checkpoint_every=50),
    )
