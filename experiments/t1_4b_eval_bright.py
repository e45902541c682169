"""T1-4B evaluation on BRIGHT: generate reasoning, embed queries and documents, index, search, score nDCG@10.

OUR CHOICES (the T1 report publishes none of these): the reasoning budget at inference (greedy, 512 new tokens),
sequence budgets, encode batch sizes, index settings and the per-slice mesh are ours. Inference is data parallel:
the bf16 4B model (8 GiB) fits on one chip of every slice here, so each chip encodes its own share of the batch
(tensor=1, fsdp=1, data = all chips); retrieval.encode_batch_size is per step over the whole slice.

Slice selection as in t1_4b_stage1.py (`$T1_TOPOLOGY`, `$TPU_ACCELERATOR_TYPE`, else v5p-8); `--set` overrides.
Usage: t1 index / t1 search / t1 eval with --config experiments/t1_4b_eval_bright.py (see docs/retrieval.md); the
model is the stage-3 (or stage-2) workdir's model/ folder.
Sequence budgets (tokens): query prompt 1024 + generated reasoning 512 + <embtoken>, document 512. The prompt budget
holds all but 22 of BRIGHT's 1,384 queries (256 cut 23% of them: docs/text.md, "Measured"); prompts are bucketed at
128/256/512/1024 tokens, so short queries do not pay for the long ones.
"""
import dataclasses

from t1_jax.config import (EvalConfig, ExperimentConfig, MeshConfig, RetrievalConfig, SamplingConfig, TextConfig,
                           TrainerConfig)
from t1_jax.layouts import PodLayout, apply_layout
from t1_jax.model.presets import preset

DEFAULT_TOPOLOGY = "v5p-8"


def _row(chips: int, encode_batch: int) -> PodLayout:
    return PodLayout(data=chips, fsdp=1, tensor=1, global_batch_size=chips,
                     extra=(("retrieval.encode_batch_size", str(encode_batch)),))


LAYOUTS = {
    "v4-8": _row(4, 256),
    "v4-32": _row(16, 1024),
    "v5litepod-16": _row(16, 512),
    "v5p-8": _row(4, 512),
    "v5p-64": _row(32, 2048),
}


def base_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="t1-4b-eval-bright",
        model=dataclasses.replace(preset("qwen3-4b-instruct-2507"), remat="none", scan_layers=True,
                                  param_dtype="bfloat16", compute_dtype="bfloat16"),
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        # text.tokenizer empty: the tokenizer saved with the model (--checkpoint's tokenizer/ folder)
        text=TextConfig(tokenizer="", max_query_tokens=1024, max_doc_tokens=512,
                        max_reasoning_tokens=512, domain_instructions=True),
        sampling=SamplingConfig(max_new_tokens=512, temperature=0.0, prompt_buckets=(128, 256, 512, 1024)),
        retrieval=RetrievalConfig(embedding_dtype="float16", normalize=True, top_k=100, index_mode="auto"),
        eval=EvalConfig(datasets=("bright",), ks=(10, 100), bm25_baseline=True),
        trainer=TrainerConfig(init_from="runs/t1-4b-stage3"),
    )


def get_config() -> ExperimentConfig:
    return apply_layout(base_config(), LAYOUTS, DEFAULT_TOPOLOGY)
