"""Tiny stage-1 (contrastive) config for CPU tests and smoke runs: a 2-layer Qwen3-shaped model, 8 fake devices."""
import dataclasses

from t1_jax.config import DataConfig, ExperimentConfig, MeshConfig, ModelConfig, OptimizerConfig, TrainerConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny-stage1",
        model=ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16),
        mesh=MeshConfig(data=-1, fsdp=2, tensor=2),
        data=DataConfig(global_batch_size=8, num_hard_negatives=1),
        optimizer=OptimizerConfig(lr=3e-4, warmup_steps=10),
        trainer=dataclasses.replace(TrainerConfig(), stage="contrastive", num_steps=100, checkpoint_every=50),
    )
