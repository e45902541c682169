"""Stage 3: GRPO on sampled reasoning, rewarded by how well the resulting embedding retrieves.

One training step, a pure jitted function of (state, batch, frozen):

1. **Rollout.** Each query's prompt is repeated ``grpo.group_size`` (G) times and continued by the jitted sampler at
   ``grpo.rollout_temperature`` (no top-k/top-p, so the sampling distribution is the tempered policy and the
   importance ratio is exactly 1 on-policy); the sampler returns tokens, their log-probs, lengths, whether
   ``<embtoken>`` had to be forced, and the ``<embtoken>`` embedding.
2. **Pool.** The batch's documents (every query's positives and hard negatives, the whole global batch) are embedded
   without gradient by the current policy, or by a snapshot refreshed every ``grpo.pool_refresh_every`` steps.
3. **Rewards** (``grpo.rewards``, a weighted sum over the registry in ``t1_jax.grpo.rewards``) per rollout, then
   **advantages** per group (``grpo.advantage``).
4. **Updates.** ``grpo.inner_steps`` (mu) optimizer updates on the same rollout: teacher-forced log-probs of the sampled
   tokens under the current parameters (in sequence chunks), token-level clipped surrogate against the rollout's
   log-probs, k3 KL to the frozen reference policy (``grpo.beta``), optional auxiliary InfoNCE on the teacher-forced
   ``<embtoken>`` embeddings (``grpo.aux_infonce_weight``).

The trainer, checkpoints, resume and metrics are the ones every stage uses (``t1_jax.trainer``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from t1_jax import losses
from t1_jax.config import ConfigError, ExperimentConfig, dtype as to_dtype
from t1_jax.grpo import combined_reward, compute_advantages, labels_from_ids, policy_loss
from t1_jax.logprobs import token_logprobs
from t1_jax.optimizer import update_metrics
from t1_jax.model.embedding import embed_last, embedding_at, positions_from_valid
from t1_jax.model.functions import model_functions
from t1_jax.stages.registry import stage_spec
from t1_jax.trainer import TrainStage, TrainState, apply_gradients


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Prompt + sampled continuation laid out for a teacher-forced forward pass."""

    ids_bt: jax.Array  # [B, Tp + Tg]
    valid_bt: jax.Array
    gen_hidden_index_bt: jax.Array  # [B, Tg]: slot whose hidden state predicts generated token t
    emb_index_b: jax.Array  # slot of the final <embtoken>
    gen_mask_bt: jax.Array  # [B, Tg]: 1 = a generated token (up to and including <embtoken>)
    sampled_mask_bt: jax.Array  # [B, Tg]: 1 = a token the policy drew: gen_mask without a forced final <embtoken>


def last_real_index(valid_bt: jax.Array) -> jax.Array:
    """Index of each row's last real (valid) slot: right-, left- or un-padded rows alike."""
    t = valid_bt.shape[1]
    return t - 1 - jnp.argmax(valid_bt.astype(jnp.int32)[:, ::-1], axis=1)


def layout(prompt_ids_bt, prompt_valid_bt, tokens_bt, lengths_b, forced_last_b=None) -> Sequences:
    """``forced_last_b``: rows whose final ``<embtoken>`` was forced (budget reached, or appended after EOS), not
    sampled: it is left out of ``sampled_mask_bt``, so the policy term never pushes its probability up or down."""
    tp, tg = prompt_ids_bt.shape[1], tokens_bt.shape[1]
    g = jnp.arange(tg)[None, :]
    gen_mask = (g < lengths_b[:, None]).astype(jnp.int32)
    sampled = gen_mask
    if forced_last_b is not None:
        sampled = gen_mask * (1 - ((g == lengths_b[:, None] - 1) & forced_last_b[:, None]).astype(jnp.int32))
    ids = jnp.concatenate([prompt_ids_bt, jnp.where(gen_mask > 0, tokens_bt, 0)], axis=1)
    valid = jnp.concatenate([prompt_valid_bt.astype(jnp.int32), gen_mask], axis=1)
    prompt_last = last_real_index(prompt_valid_bt)  # the sampler's rule: the prompt's last real token predicts g = 0
    hidden_index = jnp.where(g == 0, prompt_last[:, None], tp + g - 1)
    return Sequences(ids, valid, hidden_index, tp + lengths_b - 1, gen_mask, sampled)


def teacher_forced(model, seqs: Sequences, tokens_bt, temperature: float, chunk: int, normalize: bool):
    """(log-probs [B, Tg], entropies [B, Tg], <embtoken> embeddings [B, D]) of a sampled continuation."""
    hidden_btd, _ = model(seqs.ids_bt, positions_from_valid(seqs.valid_bt), seqs.valid_bt)
    h_gen = jnp.take_along_axis(hidden_btd, seqs.gen_hidden_index_bt[..., None], axis=1)
    logp, entropy = token_logprobs(h_gen, tokens_bt, model.logits, chunk, temperature)
    return logp, entropy, embedding_at(hidden_btd, seqs.emb_index_b, normalize)


def make_grpo_step(cfg: ExperimentConfig, graphdef, sample_fn: Callable) -> Callable:
    """The jitted-ready step ``(state, batch, tx, schedule, frozen) -> (state, metrics)``.

    ``sample_fn(params, prompt_ids, prompt_valid, rng) -> Rollout`` (see ``t1_jax.sampler``); ``frozen`` holds
    ``{"ref": reference params}`` when ``grpo.beta > 0``.
    """
    g = cfg.grpo
    group = g.group_size
    normalize = cfg.retrieval.normalize

    def embed_docs(params, batch):
        model = nnx.merge(graphdef, params)
        d_ed, _ = embed_last(model, batch["d_ids"], batch["d_valid"], normalize)
        return jax.lax.stop_gradient(d_ed)

    def step(state: TrainState, batch: dict, tx: optax.GradientTransformation, schedule, frozen=None):
        rng, sample_rng = jax.random.split(state.rng)
        b = batch["q_ids"].shape[0]
        prompts = jnp.repeat(batch["q_ids"], group, axis=0)
        prompt_valid = jnp.repeat(batch["q_valid"], group, axis=0)
        rollout = sample_fn(jax.lax.stop_gradient(state.params), prompts, prompt_valid, sample_rng)
        tokens = rollout.tokens_bt
        seqs = layout(prompts, prompt_valid, tokens, rollout.lengths_b, rollout.forced_b | rollout.stopped_eos_b)

        pool_params = state.extra["pool_params"] if g.pool_refresh_every else state.params
        d_ed = embed_docs(pool_params, batch)
        labels_bp = labels_from_ids(batch["doc_keys"], batch["pos_keys"])
        q_bgd = rollout.embedding_bd.reshape(b, group, -1)
        forced_bg = rollout.forced_b.reshape(b, group)
        lengths_bg = rollout.lengths_b.reshape(b, group)
        rewards_bg, reward_metrics = combined_reward(g.rewards, q_bgd, d_ed, labels_bp, forced_bg, lengths_bg, g)
        if g.shuffle_rewards:  # the control: each rollout gets another rollout's reward
            rng, shuffle_rng = jax.random.split(rng)
            rewards_bg = jax.random.permutation(shuffle_rng, rewards_bg.reshape(-1)).reshape(rewards_bg.shape)
        adv = compute_advantages(g.advantage, rewards_bg, g.advantage_eps).reshape(-1)

        logp_ref = None
        if g.beta > 0:
            ref_model = nnx.merge(graphdef, frozen["ref"])
            logp_ref, _, _ = teacher_forced(ref_model, seqs, tokens, g.rollout_temperature, g.logprob_chunk_size,
                                            normalize)
            logp_ref = jax.lax.stop_gradient(logp_ref)
        # Each rollout's labelled positive among the global documents. Query r's documents are rows
        # [r * (1 + H), (r + 1) * (1 + H)) of the global array, its sampled positive first (the pipeline keeps a query's
        # documents on its shard); batch["pos_col"] numbers them within one host's rows, which on several hosts is
        # not the global column.
        pos_col = jnp.repeat(jnp.arange(b, dtype=jnp.int32) * (batch["d_ids"].shape[0] // b), group)
        pos_keys = jnp.repeat(batch["pos_keys"], group, axis=0)

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            logp, entropy, emb = teacher_forced(model, seqs, tokens, g.rollout_temperature, g.logprob_chunk_size,
                                                normalize)
            loss, metrics = policy_loss(logp, rollout.logprobs_bt, logp_ref, adv, seqs.sampled_mask_bt,
                                        g.epsilon_low, g.epsilon_high, g.beta, g.kl_clamp, g.loss_aggregation)
            mask = seqs.sampled_mask_bt.astype(jnp.float32)
            metrics["entropy"] = jnp.sum(entropy * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            if g.aux_infonce_weight:
                aux, aux_metrics = losses.infonce(emb, d_ed, batch["doc_keys"], pos_col, pos_keys,
                                                  cfg.loss.temperature)
                loss = loss + g.aux_infonce_weight * aux
                metrics["aux_infonce"] = aux
                metrics["aux_accuracy"] = aux_metrics["accuracy"]
            return loss, metrics

        def inner(carry, _):
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(carry.params)
            return apply_gradients(carry, grads, tx), (loss, metrics, optax.tree.norm(grads))

        new_state, (loss_inner, metrics_inner, grad_norm_inner) = jax.lax.scan(inner, state, None, length=g.inner_steps)
        extra = new_state.extra
        if g.pool_refresh_every:
            outer = new_state.step // g.inner_steps
            refresh = (outer % g.pool_refresh_every) == 0
            extra = {"pool_params": jax.tree.map(lambda new, old: jnp.where(refresh, new.astype(old.dtype), old),
                                                 new_state.params, extra["pool_params"])}
        new_state = new_state.replace(rng=rng, extra=extra)
        lengths = rollout.lengths_b.astype(jnp.float32)
        metrics = {
            "loss": loss_inner[0],  # the first inner update: on-policy
            **{k: v[0] for k, v in metrics_inner.items()},
            **reward_metrics,
            "grad_norm": grad_norm_inner[0],
            **update_metrics(state.params, new_state.params),  # all inner updates of this step
            "lr": schedule(state.step),
            # <embtoken> drawn by the policy itself: neither forced at the budget nor appended after an EOS
            "natural_embtoken_fraction": 1.0 - jnp.mean((rollout.forced_b | rollout.stopped_eos_b).astype(jnp.float32)),
            "trace_length_mean": jnp.mean(lengths),
            "trace_length_max": jnp.max(lengths),
            "generated_tokens": jnp.sum(lengths),
            "reward_group_std_zero_fraction": jnp.mean((jnp.std(rewards_bg, axis=1) == 0).astype(jnp.float32)),
        }
        return new_state, metrics

    return step


def init_extra_fn(cfg: ExperimentConfig) -> Optional[Callable[[Any], Any]]:
    """The pool snapshot (``grpo.pool_refresh_every > 0``): a copy of the parameters in the compute dtype, since it
    is only ever run forward (half the memory of float32 masters)."""
    if not cfg.grpo.pool_refresh_every:
        return None
    compute = to_dtype(cfg.model.compute_dtype)
    return lambda params: {"pool_params": jax.tree.map(lambda p: p.astype(compute), params)}


def grpo_sample_fn(cfg: ExperimentConfig, graphdef) -> Callable:
    """The rollout sampler of stage 3: tempered policy, no top-k/top-p (shared with ``t1 compile-check``)."""
    from t1_jax.sampler import sample

    sampling = dataclasses.replace(cfg.sampling, temperature=cfg.grpo.rollout_temperature, top_k=0, top_p=1.0)
    compute = to_dtype(cfg.model.compute_dtype)

    def sample_fn(params, prompt_ids, prompt_valid, rng):
        # Decoding reads every weight once per token: one compute-dtype copy for the whole rollout, not a cast of the
        # float32 masters at every step (which would double the bytes each memory-bound decoding step reads).
        params = jax.tree.map(lambda p: p.astype(compute), params)
        return sample(graphdef, params, prompt_ids, prompt_valid, rng, sampling, emb_token_id=cfg.model.emb_token_id,
                      eos_token_ids=cfg.model.eos_token_ids, normalize=cfg.retrieval.normalize)

    return sample_fn


def grpo_step_fn(cfg: ExperimentConfig, graphdef) -> Callable:
    """The GRPO step (rollout, pool, rewards, updates) the trainer jits (shared with ``t1 compile-check``)."""
    return make_grpo_step(cfg, graphdef, grpo_sample_fn(cfg, graphdef))


def build_stage(cfg: ExperimentConfig, mesh, formatter) -> TrainStage:
    """Stage 3 for the trainer (the registry's builder for ``grpo``)."""
    from t1_jax.stages.build import pretrained_loader, training_batches

    spec = stage_spec(cfg.trainer.stage)
    g = cfg.grpo
    pretrained = pretrained_loader(cfg, mesh, formatter)
    if g.beta > 0 and pretrained is None:
        raise ConfigError("grpo.beta > 0 needs a reference policy: set trainer.init_from to the stage-2 model (or "
                          "grpo.beta=0)")
    batches, data_report = training_batches(cfg, mesh, formatter, spec.query_kind)
    graphdef, init_params, shardings = model_functions(cfg, mesh)
    # The reference policy is only run forward: kept in the compute dtype (half the memory of float32 masters).
    reference = pretrained_loader(cfg, mesh, formatter, param_dtype=cfg.model.compute_dtype)
    frozen = (lambda: {"ref": reference()}) if g.beta > 0 else None
    return TrainStage(
        name=spec.title, init_params=init_params, batches=batches, step_fn=grpo_step_fn(cfg, graphdef),
        param_shardings=shardings, batch_logical_axes=spec.batch_axes(cfg), pretrained=pretrained,
        frozen=frozen, updates_per_step=g.inner_steps,
        init_extra=init_extra_fn(cfg), data_report=data_report)  # no MFU: decoding dominates and is memory-bound
