"""The GRPO training step: a toy task where only a change in what is generated raises the reward; sharded == unsharded."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t1_jax import config as cfg_lib
from t1_jax import mesh as mesh_lib
from t1_jax.model import Qwen3, param_shardings
from t1_jax.sampler import sample
from t1_jax.stages.grpo import make_grpo_step
from t1_jax.trainer import TrainState

EMB, EOS = 30, 31


def _cfg(**grpo):
    cfg = cfg_lib.ExperimentConfig()
    model = dataclasses.replace(cfg.model, vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                                num_heads=4, num_kv_heads=2, head_dim=8, emb_token_id=EMB, eos_token_ids=(EOS,))
    g = dataclasses.replace(cfg.grpo, **{"group_size": 8, "beta": 0.0, **grpo})
    return dataclasses.replace(cfg, model=model, grpo=g, sampling=dataclasses.replace(cfg.sampling, max_new_tokens=3))


def _batch(b=4):
    rng = np.random.default_rng(0)
    n = 2 * b
    return {"q_ids": jnp.asarray(rng.integers(1, 20, (b, 6)), jnp.int32), "q_valid": jnp.ones((b, 6), jnp.int32),
            "d_ids": jnp.asarray(np.concatenate([rng.integers(1, 20, (n, 4)), np.full((n, 1), EMB)], 1), jnp.int32),
            "d_valid": jnp.ones((n, 5), jnp.int32), "doc_keys": jnp.arange(n, dtype=jnp.int32) + 100,
            "pos_col": jnp.arange(b, dtype=jnp.int32) * 2,
            "pos_keys": jnp.stack([jnp.arange(b) * 2 + 100, -jnp.ones(b, jnp.int32)], 1).astype(jnp.int32)}


def _setup(cfg, seed=0):
    model = Qwen3(cfg.model, rngs=nnx.Rngs(params=seed))
    graphdef, params = nnx.split(model)
    sampling = dataclasses.replace(cfg.sampling, temperature=cfg.grpo.rollout_temperature, top_k=0, top_p=1.0)

    def sample_fn(p, ids, valid, rng):
        return sample(graphdef, p, ids, valid, rng, sampling, emb_token_id=EMB, eos_token_ids=(EOS,))

    tx = optax.adam(3e-2)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(seed), extra=None)
    step = make_grpo_step(cfg, graphdef, sample_fn)
    return graphdef, state, tx, step


def _toy_reward_curve(**grpo):
    cfg = _cfg(rewards=(("forced_penalty", 1.0),), **grpo)
    _, state, tx, step = _setup(cfg)
    jstep = jax.jit(lambda s, b: step(s, b, tx, lambda _: 0.0, None), donate_argnums=(0,))
    batch = _batch()
    curve = []
    for _ in range(40):
        state, metrics = jstep(state, batch)
        curve.append(float(metrics["reward/total_mean"]))  # the rollouts' own rewards (before any shuffling)
    return curve


def test_toy_reward_rises_only_through_generation():
    """Reward = -1 when <embtoken> had to be forced: the policy must learn to emit it within 3 tokens."""
    curve = _toy_reward_curve()
    first, last = curve[0], np.mean(curve[-10:])
    print("forced-penalty reward by step:", " ".join(f"{r:.2f}" for r in curve[::4]), f"| last 10 mean {last:.3f}")
    assert first < -0.6  # a random policy rarely emits <embtoken> within 3 tokens (about 1 in 11)
    assert last > -0.2


def test_shuffled_rewards_control_does_not_learn():
    """The control of docs/quickstart.md: the same steps with the rewards permuted across rollouts (updates of the
    same size, no credit assignment) leave the toy reward where it started."""
    curve = _toy_reward_curve(shuffle_rewards=True)
    print("shuffled-rewards control:", " ".join(f"{r:.2f}" for r in curve[::4]))
    assert np.mean(curve[-10:]) < -0.6


def test_sharded_step_equals_unsharded():
    cfg = _cfg(rewards=(("ndcg", 1.0), ("forced_penalty", 0.1)), group_size=2, inner_steps=2, aux_infonce_weight=0.5)
    graphdef, state, tx, step = _setup(cfg, seed=1)
    batch = _batch(4)
    run = jax.jit(lambda s, b: step(s, b, tx, lambda _: 1e-2, None))
    ref_state, ref_metrics = run(state, batch)
    # On two hosts each numbers its own queries' positives from 0 (host-local pos_col): the auxiliary InfoNCE must
    # not read them as global columns.
    host_local = {**batch, "pos_col": (jnp.arange(4, dtype=jnp.int32) % 2) * 2}
    assert float(run(state, host_local)[1]["aux_infonce"]) == pytest.approx(float(ref_metrics["aux_infonce"]), rel=1e-6)

    mesh = mesh_lib.make_mesh(cfg_lib.MeshConfig(data=2, fsdp=2, tensor=2))
    param_shards = param_shardings(state.params, mesh)
    sharded = state.replace(params=jax.device_put(state.params, param_shards))
    sharded_batch = {k: jax.device_put(v, mesh_lib.logical_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1)))
                     for k, v in batch.items()}
    with mesh_lib.use_mesh(mesh):
        new_state, metrics = jax.jit(lambda s, b: step(s, b, tx, lambda _: 1e-2, None))(sharded, sharded_batch)
    for key in ("loss", "reward/total_mean", "kl", "entropy", "aux_infonce", "trace_length_mean"):
        assert float(metrics[key]) == pytest.approx(float(ref_metrics[key]), rel=1e-5, abs=1e-6), key
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(ref_state.params)):
        want = np.asarray(want, np.float64)
        assert np.linalg.norm(np.asarray(got, np.float64) - want) <= 1e-5 * max(np.linalg.norm(want), 1e-12)


def test_layout_masks_forced_embtoken_and_handles_either_padding_side():
    from t1_jax.stages.grpo import layout, teacher_forced

    cfg = _cfg()
    model = Qwen3(cfg.model, rngs=nnx.Rngs(params=3))
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, 20, (2, 5))
    tokens = jnp.asarray([[7, 8, EMB, 0], [9, EMB, 0, 0]], jnp.int32)
    lengths = jnp.asarray([3, 2], jnp.int32)
    forced = jnp.asarray([False, True])  # row 1's <embtoken> was forced (budget, or after EOS)
    right = np.zeros((2, 7), np.int32)
    right[:, :5] = prompt
    left = np.zeros((2, 7), np.int32)
    left[:, 2:] = prompt
    valid_right, valid_left = (right > 0).astype(np.int32), (left > 0).astype(np.int32)
    seqs_right = layout(jnp.asarray(right), jnp.asarray(valid_right), tokens, lengths, forced)
    seqs_left = layout(jnp.asarray(left), jnp.asarray(valid_left), tokens, lengths, forced)
    np.testing.assert_array_equal(seqs_right.gen_mask_bt, [[1, 1, 1, 0], [1, 1, 0, 0]])
    # row 1's forced <embtoken> is left out of the sampled mask
    np.testing.assert_array_equal(seqs_right.sampled_mask_bt, [[1, 1, 1, 0], [1, 0, 0, 0]])
    logp_right, _, emb_right = teacher_forced(model, seqs_right, tokens, 1.0, 4, True)
    logp_left, _, emb_left = teacher_forced(model, seqs_left, tokens, 1.0, 4, True)
    # Reference: the unpadded sequence prompt + generation, log-softmax at each position.
    for b in range(2):
        n = int(lengths[b])
        ids = jnp.asarray(np.concatenate([prompt[b], np.asarray(tokens[b, :n])])[None])
        hidden, _ = model(ids, jnp.arange(ids.shape[1])[None], jnp.ones_like(ids))
        logits = model.logits(hidden[0, 4:4 + n])
        want = jax.nn.log_softmax(logits, axis=-1)[jnp.arange(n), tokens[b, :n]]
        np.testing.assert_allclose(np.asarray(logp_right[b, :n]), np.asarray(want), atol=1e-5)
        np.testing.assert_allclose(np.asarray(logp_left[b, :n]), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(emb_left), np.asarray(emb_right), atol=1e-5)


def test_natural_embtoken_fraction_counts_only_sampled_embtokens():
    from t1_jax.sampler import Rollout

    cfg = _cfg(rewards=(("forced_penalty", 1.0),), group_size=2)
    graphdef, state, tx, _ = _setup(cfg)
    r = 8  # 4 queries x 2 rollouts: natural, forced at the budget, EOS then <embtoken>, natural ...
    forced = jnp.asarray([False, True, False, False] * 2)
    eos = jnp.asarray([False, False, True, False] * 2)

    def stub_sample(p, ids, valid, rng):
        tokens = jnp.tile(jnp.asarray([[5, EMB, 0, 0]], jnp.int32), (r, 1))
        return Rollout(tokens_bt=tokens, logprobs_bt=jnp.where(tokens > 0, -1.0, 0.0), lengths_b=jnp.full((r,), 2),
                       embedding_bd=jnp.ones((r, cfg.model.hidden_size)) / cfg.model.hidden_size ** 0.5,
                       forced_b=forced, stopped_eos_b=eos)

    step = make_grpo_step(cfg, graphdef, stub_sample)
    _, metrics = jax.jit(lambda s, b: step(s, b, tx, lambda _: 0.0, None))(state, _batch())
    assert float(metrics["natural_embtoken_fraction"]) == pytest.approx(0.5)
