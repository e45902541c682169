"""Stage 3 (GRPO) pure numeric pieces: advantages, rewards and the clipped policy loss.

Each is a registry (name -> function) so an experiment config picks them by name; the formulas are our design choices,
documented in docs/losses.md. Rollout, sampling and the training step live elsewhere and call these.
"""
from t1_jax.grpo.advantages import ADVANTAGES, compute_advantages
from t1_jax.grpo.policy_loss import AGGREGATIONS, k3_kl, policy_loss
from t1_jax.grpo.rewards import REWARDS, combined_reward, labels_from_ids

__all__ = ["ADVANTAGES", "AGGREGATIONS", "REWARDS", "combined_reward", "compute_advantages", "k3_kl", "labels_from_ids",
           "policy_loss"]
