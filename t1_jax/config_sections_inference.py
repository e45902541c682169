"""The config sections of generation, stage 3 and search: sampling, GRPO, retrieval and evaluation.

Split from ``t1_jax.config_sections`` (which re-exports them with the other sections, as ``t1_jax.config`` does);
every default that is a modelling choice is listed in ``docs/design-choices.md``.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Reasoning generation before ``<embtoken>`` (inference and GRPO rollouts)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512)

    def validate(self) -> list[str]:
        errors = []
        if self.max_new_tokens < 0:
            errors.append(f"sampling.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            errors.append(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            errors.append(f"sampling.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            errors.append(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if list(self.prompt_buckets) != sorted(self.prompt_buckets) or any(b <= 0 for b in self.prompt_buckets):
            errors.append(f"sampling.prompt_buckets must be increasing positive lengths, got {self.prompt_buckets}")
        return errors


# Names of the GRPO registries (t1_jax.grpo.*), repeated here so validating a config does not import JAX; a test keeps
# them equal to the registries.
GRPO_REWARDS = ("ndcg", "mrr", "contrastive", "forced_penalty", "length")
GRPO_ADVANTAGES = ("grpo", "drgrpo")
GRPO_AGGREGATIONS = ("token_mean", "sequence_mean", "token_sum_norm")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Stage 3. Every field is our design choice; see docs/design-choices.md."""

    group_size: int = 8
    rollout_temperature: float = 1.0
    rewards: tuple[tuple[str, float], ...] = (("ndcg", 1.0), ("forced_penalty", 0.1))
    reward_k: int = 10
    reward_temperature: float = 0.05
    advantage: str = "grpo"  # grpo | drgrpo (t1_jax.grpo.ADVANTAGES)
    advantage_eps: float = 1e-6
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    inner_steps: int = 1  # mu
    beta: float = 0.01  # KL coefficient
    kl_clamp: float = 10.0
    loss_aggregation: str = "token_mean"  # token_mean | sequence_mean | token_sum_norm (t1_jax.grpo.AGGREGATIONS)
    pool_refresh_every: int = 0  # 0 = pool embedded by the current model each step
    aux_infonce_weight: float = 0.0
    logprob_chunk_size: int = 128
    ndcg_gain: str = "linear"  # linear (trec_eval's) | exponential (2^rel - 1); see t1_jax.grpo.rewards.GAINS
    length_budget: int = 0  # tokens; the "length" reward penalises each token beyond it (needs > 0 when used)
    # A control, not a training setting: permute the rewards across all rollouts of the step before the advantages,
    # so updates keep their size and number but lose the credit assignment (docs/quickstart.md uses it).
    shuffle_rewards: bool = False

    def validate(self) -> list[str]:
        errors = []
        if self.group_size < 2:
            errors.append(f"grpo.group_size must be >= 2 (advantages are relative within a group), got "
                          f"{self.group_size}")
        if self.rollout_temperature <= 0:
            errors.append(f"grpo.rollout_temperature must be positive, got {self.rollout_temperature}")
        if not self.rewards:
            errors.append("grpo.rewards must name at least one reward")
        if self.epsilon_low < 0 or self.epsilon_high < 0:
            errors.append("grpo.epsilon_low/epsilon_high must be >= 0")
        if self.inner_steps < 1:
            errors.append(f"grpo.inner_steps must be >= 1, got {self.inner_steps}")
        if self.beta < 0:
            errors.append(f"grpo.beta must be >= 0, got {self.beta}")
        if self.loss_aggregation not in GRPO_AGGREGATIONS:
            errors.append(f"grpo.loss_aggregation must be one of {', '.join(GRPO_AGGREGATIONS)}; got "
                          f"{self.loss_aggregation!r}")
        if self.advantage not in GRPO_ADVANTAGES:
            errors.append(f"grpo.advantage must be one of {', '.join(GRPO_ADVANTAGES)}; got {self.advantage!r}")
        if self.advantage_eps < 0:
            errors.append(f"grpo.advantage_eps must be >= 0, got {self.advantage_eps}")
        for name, weight in self.rewards:
            if name not in GRPO_REWARDS:
                errors.append(f"grpo.rewards: unknown reward {name!r}; known: {', '.join(GRPO_REWARDS)}")
            if not math.isfinite(weight):
                errors.append(f"grpo.rewards: weight of {name!r} must be finite, got {weight}")
        if self.reward_k <= 0:
            errors.append(f"grpo.reward_k must be positive, got {self.reward_k}")
        if not self.reward_temperature > 0:
            errors.append(f"grpo.reward_temperature must be positive, got {self.reward_temperature}")
        if self.ndcg_gain not in ("linear", "exponential"):
            errors.append(f"grpo.ndcg_gain must be linear or exponential, got {self.ndcg_gain!r}")
        if self.length_budget < 0 or (self.length_budget == 0 and any(n == "length" for n, _ in self.rewards)):
            errors.append(f"grpo.length_budget must be > 0 when the length reward is used (>= 0 otherwise), got "
                          f"{self.length_budget}")
        if not self.kl_clamp > 0:
            errors.append(f"grpo.kl_clamp must be positive, got {self.kl_clamp}")
        if self.logprob_chunk_size <= 0:
            errors.append(f"grpo.logprob_chunk_size must be positive, got {self.logprob_chunk_size}")
        return errors


INDEX_MODES = ("auto", "brute_force", "tree_ah")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Embedding store and ScaNN index settings (0 / empty = chosen from corpus size)."""

    embedding_dtype: str = "float16"
    normalize: bool = True
    top_k: int = 100
    encode_batch_size: int = 32  # per slice: each host of a multi-host slice encodes this / hosts rows at a time
    index_mode: str = "auto"  # auto | brute_force | tree_ah
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    reorder_k: int = 0
    brute_force_below: int = 20_000  # auto mode: exact brute force under this many documents
    leaves_fraction: float = 0.05  # auto num_leaves_to_search = max(20, fraction x num_leaves)
    target_recall: float = 0.95  # tree_ah: grow the auto search settings until recall@10 vs exact reaches this

    def validate(self) -> list[str]:
        errors = []
        if self.brute_force_below < 0:
            errors.append(f"retrieval.brute_force_below must be >= 0, got {self.brute_force_below}")
        if not 0 < self.leaves_fraction <= 1:
            errors.append(f"retrieval.leaves_fraction must be in (0, 1], got {self.leaves_fraction}")
        if not 0 <= self.target_recall <= 1:
            errors.append(f"retrieval.target_recall must be in [0, 1] (0 = no tuning), got {self.target_recall}")
        for name in ("num_leaves", "num_leaves_to_search", "reorder_k"):
            if getattr(self, name) < 0:
                errors.append(f"retrieval.{name} must be >= 0 (0 = automatic), got {getattr(self, name)}")
        if self.embedding_dtype not in ("float16", "float32"):
            errors.append(f"retrieval.embedding_dtype must be float16 or float32, got {self.embedding_dtype!r}")
        if self.top_k <= 0:
            errors.append(f"retrieval.top_k must be positive, got {self.top_k}")
        if self.encode_batch_size <= 0:
            errors.append(f"retrieval.encode_batch_size must be positive, got {self.encode_batch_size}")
        if self.index_mode not in INDEX_MODES:
            errors.append(f"retrieval.index_mode must be one of {', '.join(INDEX_MODES)}; got {self.index_mode!r}")
        return errors


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation sets and cut-offs."""

    datasets: tuple[str, ...] = ()
    ks: tuple[int, ...] = (10, 100)
    bm25_baseline: bool = True

    def validate(self) -> list[str]:
        return [f"eval.ks must be positive, got {self.ks}"] if any(k <= 0 for k in self.ks) else []
