"""T1-4B stage 1 (contrastive InfoNCE) from Qwen3-4B-Instruct-2507, with a mesh/batch layout per TPU slice.

OUR CHOICES (the T1 report publishes none of these): every number below -- sequence budgets, hard negatives,
batch sizes, mesh shapes, remat, learning rate, temperature, schedule -- is ours, picked so each slice's step fits
with headroom (`t1 compile-check` numbers in docs/tpu.md). Fixed by the base model, not chosen: the Qwen3-4B shape.

Slice selection: the row of LAYOUTS for `$T1_TOPOLOGY`, else `$TPU_ACCELERATOR_TYPE` (set on Cloud TPU VMs, so a pod
run picks its own row), else v5p-8. Any value can still be changed with `--set` (applied after the row), e.g.
  T1_TOPOLOGY=v4-32 t1 train --config experiments/t1_4b_stage1.py --workdir gs://BUCKET/t1-4b/stage1 \
      --set data.global_batch_size=512 mesh.data=2 mesh.fsdp=8
  t1 compile-check --config experiments/t1_4b_stage1.py --topology v5e-16   # the v5litepod-16 row

Inputs: `t1 convert hf-to-t1 <Qwen3-4B-Instruct-2507 download> models/qwen3-4b-instruct-2507` (trainer.init_from;
text.tokenizer is empty, so the tokenizer the conversion carried into its tokenizer/ folder is used) and a jsonl of
(query, positives, negatives) at data.train_path.
Sequence budgets (tokens): query prompt 256 (+1 <embtoken>, padded to 320), document 512 (with <embtoken>).
Numerics (docs/training.md, Precision): float32 master parameters and AdamW moments, bfloat16 matmuls and
activations, float32 weight gradients and their reductions, full per-layer remat.
"""
import dataclasses

from t1_jax.config import (ContrastiveConfig, DataConfig, ExperimentConfig, MeshConfig, OptimizerConfig, TextConfig,
                           TrainerConfig)
from t1_jax.layouts import PodLayout, apply_layout
from t1_jax.model.presets import preset

DEFAULT_TOPOLOGY = "v5p-8"
# accelerator type -> layout. data x fsdp x tensor = chips; ZeRO-3 (fsdp) within a slice, data parallel across
# groups on the larger ones. Batches are global (queries per step); each query brings 1 positive + 1 hard negative.
# Measured (docs/tpu.md): without GradCache, 512 queries on v5p-8 need 96.3 GiB per chip (over by 1.3 GiB), so the
# rows whose whole batch would not fit embed it in GradCache chunks (loss.gradcache_chunk; +1 forward pass of cost).
# v5p-8 passes 64 queries at a time (was 256): the same step, and room for --set text.max_doc_tokens=4096 with
# model.attention_impl=splash (89.1 GiB per chip; XLA attention needs 187.8 GiB there: docs/tpu.md, Long documents).
LAYOUTS = {
    "v4-16": PodLayout(data=1, fsdp=8, tensor=1, global_batch_size=256, gradcache_chunk=64),
    "v4-32": PodLayout(data=2, fsdp=8, tensor=1, global_batch_size=1024, gradcache_chunk=256),
    "v5litepod-16": PodLayout(data=1, fsdp=16, tensor=1, global_batch_size=256, gradcache_chunk=128),
    "v5p-8": PodLayout(data=1, fsdp=4, tensor=1, global_batch_size=512, gradcache_chunk=64),
    "v5p-64": PodLayout(data=2, fsdp=16, tensor=1, global_batch_size=2048),
}


def base_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="t1-4b-stage1",
        model=dataclasses.replace(preset("qwen3-4b-instruct-2507"), remat="full", scan_layers=True,
                                  param_dtype="float32", compute_dtype="bfloat16"),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        # text.tokenizer empty: the tokenizer saved with the model (trainer.init_from's tokenizer/ folder)
        text=TextConfig(tokenizer="", max_query_tokens=256,
                        max_doc_tokens=512, max_reasoning_tokens=512),
        # Two padded lengths (queries <= 257 -> 320; documents -> 320 or 512): a 4B step takes minutes to compile on a
        # TPU, so a single-host run compiles it at most twice instead of once per 64-token length. 2048 and 4096 only
        # serve a raised text.max_doc_tokens (long documents: docs/tpu.md, with model.attention_impl=splash).
        data=DataConfig(train_path="data/t1_stage1.jsonl", global_batch_size=512, num_hard_negatives=1,
                        length_buckets=(320, 512, 2048, 4096)),
        optimizer=OptimizerConfig(lr=1e-5, warmup_steps=100, weight_decay=0.01, clip_norm=1.0),
        loss=ContrastiveConfig(temperature=0.02, mask_duplicates=True),
        trainer=TrainerConfig(stage="contrastive", num_steps=2000, init_from="models/qwen3-4b-instruct-2507",
                              log_every=10, checkpoint_every=200),
    )


def get_config() -> ExperimentConfig:
    return apply_layout(base_config(), LAYOUTS, DEFAULT_TOPOLOGY)
