"""T1-4B stage 3 (GRPO on retrieval rewards) from the stage-2 model, per-slice mesh/batch layouts.

OUR CHOICES (the T1 report publishes none of these): group size, rollout temperature and length, rewards and their
weights, clipping epsilons, KL coefficient, loss aggregation, pool refresh, batch sizes (queries per step; each is
rolled out group_size times), mesh shapes, remat and learning rate are ours (see docs/design-choices.md for the GRPO
fields). Fixed by the base model: the Qwen3-4B shape.

Slice selection as in t1_4b_stage1.py: `$T1_TOPOLOGY`, else `$TPU_ACCELERATOR_TYPE`, else v5p-8; `--set` overrides
afterwards. `t1 compile-check --config experiments/t1_4b_stage3_grpo.py --topology v5p-8` compiles the whole GRPO
step (rollout, pool, rewards, update, reference policy) and the rollout sampler alone (numbers in docs/tpu.md).
Sequence budgets (tokens): query prompt 256, sampled reasoning 512 (sampling.max_new_tokens) + <embtoken>,
document 512. Numerics (docs/training.md, Precision): float32 master parameters and AdamW moments, bfloat16
compute, a bfloat16 copy of the policy for the rollout and a bfloat16 reference policy, full per-layer remat,
128-token log-prob chunks.
"""
import dataclasses

from t1_jax.config import (DataConfig, ExperimentConfig, GRPOConfig, MeshConfig, OptimizerConfig, SamplingConfig,
                           TextConfig, TrainerConfig)
from t1_jax.layouts import PodLayout, apply_layout
from t1_jax.model.presets import preset

DEFAULT_TOPOLOGY = "v5p-8"
# global_batch_size = queries per step; the rollout batch is global_batch_size x grpo.group_size sequences.
LAYOUTS = {
    "v4-8": PodLayout(data=1, fsdp=4, tensor=1, global_batch_size=8),
    "v4-32": PodLayout(data=2, fsdp=8, tensor=1, global_batch_size=64),
    "v5litepod-16": PodLayout(data=1, fsdp=16, tensor=1, global_batch_size=32),
    "v5p-8": PodLayout(data=1, fsdp=4, tensor=1, global_batch_size=32),
    "v5p-64": PodLayout(data=2, fsdp=16, tensor=1, global_batch_size=128),
}


def base_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="t1-4b-stage3-grpo",
        model=dataclasses.replace(preset("qwen3-4b-instruct-2507"), remat="full", scan_layers=True,
                                  param_dtype="float32", compute_dtype="bfloat16"),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        # text.tokenizer empty: the tokenizer saved with the model (trainer.init_from's tokenizer/ folder)
        text=TextConfig(tokenizer="", max_query_tokens=256, max_doc_tokens=512,
                        max_reasoning_tokens=512),
        # Two padded lengths (prompts <= 256 -> 256; documents -> 256 or 512): few compiles of the 4B step.
        data=DataConfig(train_path="data/t1_stage3_queries.jsonl", global_batch_size=32, num_hard_negatives=7,
                        length_buckets=(256, 512)),
        optimizer=OptimizerConfig(lr=1e-6, warmup_steps=20, weight_decay=0.0, clip_norm=1.0),
        # Rollouts sample at grpo.rollout_temperature with this budget; temperature here is inference's (greedy).
        sampling=SamplingConfig(max_new_tokens=512, temperature=0.0, top_k=0, top_p=1.0, prompt_buckets=(128, 256)),
        grpo=GRPOConfig(group_size=8, rollout_temperature=1.0, rewards=(("ndcg", 1.0), ("forced_penalty", 0.1)),
                        reward_k=10, epsilon_low=0.2, epsilon_high=0.28, inner_steps=1, beta=0.01,
                        loss_aggregation="token_mean", pool_refresh_every=0, logprob_chunk_size=128),
        trainer=TrainerConfig(stage="grpo", num_steps=500, init_from="runs/t1-4b-stage2", log_every=5,
                              checkpoint_every=50),
    )


def get_config() -> ExperimentConfig:
    return apply_layout(base_config(), LAYOUTS, DEFAULT_TOPOLOGY)
