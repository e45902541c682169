"""T1-4B stage 2 (teacher-reasoning cross-entropy + InfoNCE) from the stage-1 model, per-slice mesh/batch layouts.

OUR CHOICES (the T1 report publishes none of these): sequence budgets, reasoning length, sft_weight, batch sizes,
mesh shapes, remat, GradCache chunks, learning rate and schedule are ours, sized with `t1 compile-check`
(docs/tpu.md). Fixed by the base model: the Qwen3-4B shape.

Slice selection as in t1_4b_stage1.py: `$T1_TOPOLOGY`, else `$TPU_ACCELERATOR_TYPE`, else v5p-8; `--set` overrides
any value afterwards (mesh.*, data.global_batch_size, loss.gradcache_chunk, optimizer.grad_accum_steps ...).
Inputs: the stage-1 workdir (trainer.init_from; its model/ folder and model/tokenizer) and a jsonl with teacher
reasoning per query.
Sequence budgets (tokens): query prompt 256 + reasoning 512 + <embtoken> (padded to 832), document 512.
Numerics (docs/training.md, Precision): float32 master parameters and AdamW moments, bfloat16 compute, full
per-layer remat, chunked (128-token) vocabulary cross-entropy.
"""
import dataclasses

from t1_jax.config import (ContrastiveConfig, DataConfig, ExperimentConfig, MeshConfig, OptimizerConfig, TextConfig,
                           TrainerConfig)
from t1_jax.layouts import PodLayout, apply_layout
from t1_jax.model.presets import preset

DEFAULT_TOPOLOGY = "v5p-8"
LAYOUTS = {
    "v4-16": PodLayout(data=1, fsdp=8, tensor=1, global_batch_size=128, gradcache_chunk=32),
    "v4-32": PodLayout(data=2, fsdp=8, tensor=1, global_batch_size=512, gradcache_chunk=128),
    "v5litepod-16": PodLayout(data=1, fsdp=16, tensor=1, global_batch_size=128, gradcache_chunk=64),
    "v5p-8": PodLayout(data=1, fsdp=4, tensor=1, global_batch_size=256),
    "v5p-64": PodLayout(data=2, fsdp=16, tensor=1, global_batch_size=1024),
}


def base_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="t1-4b-stage2",
        model=dataclasses.replace(preset("qwen3-4b-instruct-2507"), remat="full", scan_layers=True,
                                  param_dtype="float32", compute_dtype="bfloat16"),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        # text.tokenizer empty: the tokenizer saved with the model (trainer.init_from's tokenizer/ folder)
        text=TextConfig(tokenizer="", max_query_tokens=256, max_doc_tokens=512,
                        max_reasoning_tokens=512),
        # Two padded lengths (queries <= 769 -> 512 or 832; documents -> 512): few compiles of the 4B step.
        data=DataConfig(train_path="data/t1_stage2_reasoning.jsonl", global_batch_size=256, num_hard_negatives=1,
                        length_buckets=(512, 832)),
        optimizer=OptimizerConfig(lr=5e-6, warmup_steps=100, weight_decay=0.01, clip_norm=1.0),
        loss=ContrastiveConfig(temperature=0.02, sft_weight=1.0, ce_chunk_size=128),
        trainer=TrainerConfig(stage="reasoning", num_steps=2000, init_from="runs/t1-4b-stage1", log_every=10,
                              checkpoint_every=200),
    )


def get_config() -> ExperimentConfig:
    return apply_layout(base_config(), LAYOUTS, DEFAULT_TOPOLOGY)
