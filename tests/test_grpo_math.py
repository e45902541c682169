"""GRPO numeric core: advantages, rewards, clipped policy loss with k3 KL — against float64 numpy references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t1_jax import config as config_lib
from t1_jax.config import GRPOConfig, MeshConfig
from t1_jax.grpo import (ADVANTAGES, AGGREGATIONS, REWARDS, combined_reward, compute_advantages, labels_from_ids,
                         policy_loss)
from t1_jax.mesh import make_mesh

# --------------------------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------------------------


def test_registries_match_config_names():
    assert set(REWARDS) == set(config_lib.GRPO_REWARDS)
    assert set(ADVANTAGES) == set(config_lib.GRPO_ADVANTAGES)
    assert set(AGGREGATIONS) == set(config_lib.GRPO_AGGREGATIONS)


def test_config_refuses_unknown_names():
    errors = GRPOConfig(rewards=(("ndgc", 1.0),), advantage="ppo", loss_aggregation="sum").validate()
    assert any("unknown reward 'ndgc'" in e for e in errors)
    assert any("grpo.advantage must be one of" in e for e in errors)
    assert any("grpo.loss_aggregation must be one of" in e for e in errors)
    assert any("length_budget" in e for e in GRPOConfig(rewards=(("length", 1.0),)).validate())
    assert GRPOConfig().validate() == []


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_advantages_zero_mean_and_match_numpy(name):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 8)).astype(np.float32)
    adv = np.asarray(compute_advantages(name, jnp.asarray(r), 1e-6))
    np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-6)
    r64 = r.astype(np.float64)
    ref = r64 - r64.mean(1, keepdims=True)
    if name == "grpo":
        ref = ref / (r64.std(1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(adv.std(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(adv, ref, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
@pytest.mark.parametrize("value", [0.1, 0.7, -3.3, 1e-3])
def test_identical_rewards_give_exactly_zero_advantage_and_gradient(name, value):
    r = np.full((2, 8), value, np.float32)
    r[1] = np.linspace(0, 1, 8)  # a non-degenerate group next to it
    adv = compute_advantages(name, jnp.asarray(r), 1e-6)
    assert np.all(np.asarray(adv)[0] == 0.0)
    rng = np.random.default_rng(1)
    t = 6
    logp = jnp.asarray(np.log(rng.uniform(0.05, 1, size=(16, t))).astype(np.float32))
    adv_b = adv.reshape(-1)
    mask = jnp.ones((16, t))

    def loss(new):
        return policy_loss(new, logp + 0.1, logp, adv_b, mask, 0.2, 0.28, 0.0, 10.0, "token_mean")[0]

    grad = np.asarray(jax.grad(loss)(logp))
    assert np.all(grad[:8] == 0.0)  # the identical-reward group: exactly zero policy gradient
    assert np.abs(grad[8:]).max() > 1e-4


# --------------------------------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------------------------------


def np_policy_loss(new, old, ref, adv, mask, el, eh, beta, clamp, aggregation):
    new, old, ref, adv, mask = (np.asarray(x, np.float64) for x in (new, old, ref, adv, mask))
    ratio = np.exp(new - old)
    a = adv[:, None]
    surr = np.minimum(ratio * a, np.clip(ratio, 1 - el, 1 + eh) * a)
    d = ref - new
    kl = np.minimum(np.exp(d) - d - 1, clamp)
    per = -surr + beta * kl
    if aggregation == "token_mean":
        loss = (per * mask).sum() / mask.sum()
    elif aggregation == "sequence_mean":
        rows = [(per[b] * mask[b]).sum() / mask[b].sum() for b in range(len(per)) if mask[b].sum() > 0]
        loss = np.mean(rows)
    else:
        loss = (per * mask).sum() / per.size
    clipped = np.clip(ratio, 1 - el, 1 + eh) * a < ratio * a  # the min picked the clipped term
    return loss, (kl * mask).sum() / mask.sum(), (clipped * mask).sum() / mask.sum()


def _random_policy_batch(seed, b=12, t=9):
    rng = np.random.default_rng(seed)
    old = np.log(rng.uniform(0.01, 1, size=(b, t)))
    new = old + rng.normal(scale=0.4, size=(b, t))  # ratios well outside [0.8, 1.28] on many tokens
    ref = new + rng.normal(scale=1.0, size=(b, t))
    ref[0, :3] = new[0, :3] + 5.0  # k3 = e^5 - 6 > clamp on these tokens
    adv = rng.normal(size=b)
    mask = (rng.random((b, t)) < 0.8).astype(np.float32)
    mask[1] = 0  # a sequence with no generated tokens
    return [x.astype(np.float32) for x in (new, old, ref, adv, mask)]


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_clipped_loss_matches_float64_numpy(aggregation):
    new, old, ref, adv, mask = _random_policy_batch(0)
    args = (0.2, 0.28, 0.05, 10.0, aggregation)
    loss, metrics = policy_loss(*map(jnp.asarray, (new, old, ref, adv, mask)), *args)
    ref_loss, ref_kl, ref_clip = np_policy_loss(new, old, ref, adv, mask, *args)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["kl"]), ref_kl, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), ref_clip, rtol=1e-6)
    assert 0.1 < ref_clip < 0.9  # both regimes are exercised
    # gradient: the clip-active tokens get none, the others -A * ratio / normaliser (+ KL term)
    grad = np.asarray(jax.grad(lambda x: policy_loss(x, *map(jnp.asarray, (old, ref, adv, mask)), *args)[0])(
        jnp.asarray(new)))
    eps = 1e-3
    idx = [(2, 1), (3, 4), (5, 0), (0, 1)]
    for b, t in idx:  # central differences of the float64 reference
        plus, minus = new.astype(np.float64).copy(), new.astype(np.float64).copy()
        plus[b, t] += eps
        minus[b, t] -= eps
        fd = (np_policy_loss(plus, old, ref, adv, mask, *args)[0]
              - np_policy_loss(minus, old, ref, adv, mask, *args)[0]) / (2 * eps)
        np.testing.assert_allclose(grad[b, t], fd, atol=2e-4)


def test_kl_is_zero_when_policy_equals_reference():
    new, old, _, adv, mask = _random_policy_batch(1)
    loss_kl, metrics = policy_loss(*map(jnp.asarray, (new, old, new, adv, mask)), 0.2, 0.28, 0.5, 10.0, "token_mean")
    loss_no_kl, _ = policy_loss(*map(jnp.asarray, (new, old, new, adv, mask)), 0.2, 0.28, 0.0, 10.0, "token_mean")
    assert float(metrics["kl"]) == 0.0
    assert float(loss_kl) == float(loss_no_kl)
    # the KL gradient vanishes at policy == reference as well
    g = jax.grad(lambda x: policy_loss(x, jnp.asarray(new), jnp.asarray(new), jnp.zeros_like(jnp.asarray(adv)),
                                       jnp.asarray(mask), 0.2, 0.28, 0.5, 10.0, "token_mean")[0])(jnp.asarray(new))
    assert np.all(np.asarray(g) == 0.0)
    # and it is positive otherwise
    _, m = policy_loss(*map(jnp.asarray, (new, old, new + 0.3, adv, mask)), 0.2, 0.28, 0.5, 10.0, "token_mean")
    assert float(m["kl"]) > 0


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_on_policy_unclipped_gradient_is_reinforce(aggregation):
    """Tiny softmax policy with per-position logits theta[t, v]; sequences sampled from it. On-policy (old == new) the
    GRPO gradient with beta = 0 must equal minus the REINFORCE estimator, computed here in float64 numpy."""
    rng = np.random.default_rng(3)
    t, v, b, g = 5, 7, 3, 4
    theta = rng.normal(size=(t, v))
    probs = np.exp(theta) / np.exp(theta).sum(-1, keepdims=True)
    y = np.stack([[rng.choice(v, p=probs[i]) for i in range(t)] for _ in range(b * g)])  # [B*G, T]
    lengths = rng.integers(1, t + 1, size=b * g)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float64)
    rewards = rng.normal(size=(b, g))
    adv = np.asarray(compute_advantages("grpo", jnp.asarray(rewards, jnp.float32), 1e-6), np.float64).reshape(-1)

    def loss(theta_):
        logp_tv = jax.nn.log_softmax(theta_, axis=-1)
        logp_bt = logp_tv[jnp.arange(t)[None, :], jnp.asarray(y)]
        old = jax.lax.stop_gradient(logp_bt)
        return policy_loss(logp_bt, old, None, jnp.asarray(adv, jnp.float32), jnp.asarray(mask, jnp.float32),
                           0.2, 0.28, 0.0, 10.0, aggregation)[0]

    grad = np.asarray(jax.grad(loss)(jnp.asarray(theta, jnp.float32)), np.float64)
    # REINFORCE: sum over tokens of weight * A * grad log pi(y_t), grad log softmax = onehot(y_t) - probs[t]
    estimate = np.zeros((t, v))
    for s in range(b * g):
        if aggregation == "token_mean":
            weight = 1.0 / mask.sum()
        else:
            weight = 1.0 / (mask[s].sum() * b * g)
        for i in range(int(lengths[s])):
            estimate[i] += weight * adv[s] * (np.eye(v)[y[s, i]] - probs[i])
    np.testing.assert_allclose(grad, -estimate, atol=1e-6)
    assert np.abs(estimate).max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------------------------------


def _reward_problem(seed=0, b=4, g=3, p=11, dim=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, g, dim)).astype(np.float32)
    pool = rng.normal(size=(p, dim)).astype(np.float32)
    labels = rng.choice([0, 0, 0, 1, 2, 3], size=(b, p)).astype(np.float32)
    labels[0, 7:] = -1  # not candidates for query 0
    labels[1] = np.where(labels[1] > 0, 0, labels[1])  # query 1: no relevant item
    labels[2, 9] = -1
    forced = rng.random((b, g)) < 0.4
    lengths = rng.integers(1, 40, size=(b, g))
    return q, pool, labels, forced, lengths


def np_rank(scores, labels):
    cand = np.where(labels >= 0)[0]
    return cand[np.argsort(-scores[cand], kind="stable")]


def np_ndcg(scores, labels, k, gain):
    order = np_rank(scores, labels)
    gains = labels if gain == "linear" else 2.0 ** labels - 1
    dcg = sum(gains[order[i]] / np.log2(i + 2) for i in range(min(k, len(order))))
    ideal = sorted(gains[labels >= 0], reverse=True)[:k]
    idcg = sum(x / np.log2(i + 2) for i, x in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def np_mrr(scores, labels):
    for i, p in enumerate(np_rank(scores, labels)):
        if labels[p] > 0:
            return 1.0 / (i + 1)
    return 0.0


def np_contrastive(scores, labels, tau):
    cand = labels >= 0
    if not (labels > 0).any():
        return 0.0
    e = np.exp((scores - scores[cand].max()) / tau) * cand
    return e[labels > 0].sum() / e.sum()


def _np_reward(name, q, pool, labels, forced, lengths, cfg):
    out = np.zeros(q.shape[:2])
    for b in range(q.shape[0]):
        for g in range(q.shape[1]):
            s = pool.astype(np.float64) @ q[b, g].astype(np.float64)
            out[b, g] = {
                "ndcg": lambda: np_ndcg(s, labels[b], cfg.reward_k, cfg.ndcg_gain),
                "mrr": lambda: np_mrr(s, labels[b]),
                "contrastive": lambda: np_contrastive(s, labels[b], cfg.reward_temperature),
                "forced_penalty": lambda: -float(forced[b, g]),
                "length": lambda: -max(0, lengths[b, g] - cfg.length_budget) / cfg.length_budget,
            }[name]()
    return out


@pytest.mark.parametrize("name,cfg", [
    ("ndcg", GRPOConfig(reward_k=5)),
    ("ndcg", GRPOConfig(reward_k=5, ndcg_gain="exponential")),
    ("ndcg", GRPOConfig(reward_k=50)),  # k beyond the pool
    ("mrr", GRPOConfig()),
    ("contrastive", GRPOConfig(reward_temperature=0.5)),
    ("forced_penalty", GRPOConfig()),
    ("length", GRPOConfig(length_budget=20)),
])
def test_rewards_match_float64_numpy(name, cfg):
    q, pool, labels, forced, lengths = _reward_problem()
    r = REWARDS[name](jnp.asarray(q), jnp.asarray(pool), jnp.asarray(labels), jnp.asarray(forced),
                      jnp.asarray(lengths), cfg)
    assert r.shape == (4, 3)
    ref = _np_reward(name, q, pool, labels, forced, lengths, cfg)
    np.testing.assert_allclose(np.asarray(r), ref, rtol=1e-5, atol=1e-6)
    if name in ("ndcg", "mrr", "contrastive"):
        assert np.all(np.asarray(r)[1] == 0.0)  # no relevant item
        assert np.ptp(ref) > 0.1
    # flattened [B*G, D] rollouts give the same rewards
    r_flat = REWARDS[name](jnp.asarray(q.reshape(12, -1)), jnp.asarray(pool), jnp.asarray(labels),
                           jnp.asarray(forced), jnp.asarray(lengths), cfg)
    np.testing.assert_array_equal(np.asarray(r_flat), np.asarray(r))


def test_ndcg_matches_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    q, pool, labels, forced, lengths = _reward_problem(seed=5)
    r = np.asarray(REWARDS["ndcg"](jnp.asarray(q), jnp.asarray(pool), jnp.asarray(labels), jnp.asarray(forced),
                                   jnp.asarray(lengths), GRPOConfig(reward_k=5)))
    for b in (0, 2, 3):
        qrel = {"q": {f"d{p}": int(labels[b, p]) for p in range(len(pool)) if labels[b, p] >= 0}}
        for g in range(q.shape[1]):
            scores = pool.astype(np.float64) @ q[b, g].astype(np.float64)
            run = {"q": {f"d{p}": float(scores[p]) for p in range(len(pool)) if labels[b, p] >= 0}}
            res = pytrec_eval.RelevanceEvaluator(qrel, {"ndcg_cut_5"}).evaluate(run)
            np.testing.assert_allclose(r[b, g], res["q"]["ndcg_cut_5"], rtol=1e-5)


def test_labels_from_ids():
    pool_ids = np.array([10, 11, 12, -1, 11, 13])
    pos_ids = np.array([[11, -1], [13, 10], [-1, -1]])
    grades = np.array([[2.0, 0.0], [1.0, 3.0], [0.0, 0.0]])
    expected = np.array([[0, 2, 0, -1, 2, 0], [3, 0, 0, -1, 0, 1], [0, 0, 0, -1, 0, 0]], np.float32)
    got = labels_from_ids(jnp.asarray(pool_ids), jnp.asarray(pos_ids), jnp.asarray(grades))
    np.testing.assert_array_equal(np.asarray(got), expected)
    binary = labels_from_ids(jnp.asarray(pool_ids), jnp.asarray(pos_ids))
    np.testing.assert_array_equal(np.asarray(binary), np.minimum(expected, 1))


def test_ties_are_broken_by_pool_index():
    pool = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # items 0 and 1 tie for a query along x
    q = np.array([[[1.0, 0.0]]], np.float32)
    cfg = GRPOConfig(reward_k=1)
    for labels, expected_rr in (([0.0, 1.0, 0.0], 0.5), ([1.0, 0.0, 0.0], 1.0)):
        args = (jnp.asarray(q), jnp.asarray(pool), jnp.asarray([labels]), jnp.zeros((1, 1), bool),
                jnp.ones((1, 1)), cfg)
        assert float(REWARDS["mrr"](*args)[0, 0]) == expected_rr
        assert float(REWARDS["ndcg"](*args)[0, 0]) == (1.0 if expected_rr == 1.0 else 0.0)


def test_combined_reward_is_the_weighted_sum():
    q, pool, labels, forced, lengths = _reward_problem(seed=2)
    cfg = GRPOConfig(length_budget=10)
    specs = (("ndcg", 1.0), ("forced_penalty", 0.1), ("length", 0.5))
    args = (jnp.asarray(q), jnp.asarray(pool), jnp.asarray(labels), jnp.asarray(forced), jnp.asarray(lengths), cfg)
    total, metrics = combined_reward(specs, *args)
    parts = {n: _np_reward(n, q, pool, labels, forced, lengths, cfg) for n, _ in specs}
    np.testing.assert_allclose(np.asarray(total), sum(w * parts[n] for n, w in specs), rtol=1e-5, atol=1e-6)
    for n, _ in specs:
        np.testing.assert_allclose(float(metrics[f"reward/{n}_mean"]), parts[n].mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(metrics[f"reward/{n}_std"]), parts[n].std(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown reward"):
        combined_reward((("bleu", 1.0),), *args)


# --------------------------------------------------------------------------------------------------------------------
# Sharded == unsharded (the pure pieces under jit with the batch split over data x fsdp)
# --------------------------------------------------------------------------------------------------------------------


def test_rewards_advantages_loss_sharded_equal_unsharded():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    q, pool, labels, forced, lengths = _reward_problem(seed=7, b=8, g=4, p=24)
    new, old, ref, _, mask = _random_policy_batch(4, b=32, t=10)
    cfg = dataclasses.replace(GRPOConfig(), rewards=(("ndcg", 1.0), ("contrastive", 0.5), ("forced_penalty", 0.1)))

    def step(q_, pool_, labels_, forced_, lengths_, new_, old_, ref_, mask_):
        r, _ = combined_reward(cfg.rewards, q_, pool_, labels_, forced_, lengths_, cfg)
        adv = compute_advantages(cfg.advantage, r, cfg.advantage_eps).reshape(-1)

        def loss(x):
            return policy_loss(x, old_, ref_, adv, mask_, cfg.epsilon_low, cfg.epsilon_high, cfg.beta, cfg.kl_clamp,
                               cfg.loss_aggregation)[0]

        return jax.value_and_grad(loss)(new_)

    host = [q, pool, labels, forced, lengths, new, old, ref, mask]
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    replicated = NamedSharding(mesh, P())
    placed = [jax.device_put(jnp.asarray(x), replicated if i == 1 else batch) for i, x in enumerate(host)]
    loss_s, grad_s = jax.jit(step)(*placed)
    loss_1, grad_1 = jax.jit(step)(*map(jnp.asarray, host))
    assert len(grad_s.sharding.device_set) == 8
    np.testing.assert_allclose(float(loss_s), float(loss_1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_s), np.asarray(grad_1), atol=1e-6)
    assert np.abs(np.asarray(grad_1)).max() > 1e-4


# --------------------------------------------------------------------------------------------------------------------
# End to end on a toy policy: the objective built from these pieces raises the reward
# --------------------------------------------------------------------------------------------------------------------


def test_toy_policy_reward_rises_under_grpo():
    """Per-query softmax policy over T tokens; a trace's embedding is the normalised sum of its token vectors; the
    reward is nDCG@3 of the query's target token among all V token vectors. The reward can only rise by generating
    different tokens. Two inner steps per rollout reuse the old log-probs (exercising the ratio and the clip)."""
    import optax

    b, g, t, v, dim = 4, 8, 4, 16, 16
    table_vd = jax.random.normal(jax.random.key(0), (v, dim))
    table_vd = table_vd / jnp.linalg.norm(table_vd, axis=-1, keepdims=True)
    labels_bv = jax.nn.one_hot(jnp.array([1, 5, 9, 13]), v)
    cfg = GRPOConfig(reward_k=3, group_size=g, inner_steps=2, beta=0.01)
    opt = optax.adam(0.1)
    theta_ref = jnp.zeros((b, t, v))

    def logp_of(theta, y_bgt):
        logp_btv = jax.nn.log_softmax(theta, axis=-1)
        return jnp.take_along_axis(logp_btv[:, None], y_bgt[..., None], axis=-1)[..., 0].reshape(b * g, t)

    @jax.jit
    def step(theta, opt_state, key):
        y_bgt = jax.random.categorical(key, theta[:, None], axis=-1, shape=(b, g, t))
        emb_bgd = jnp.sum(table_vd[y_bgt], axis=2)
        emb_bgd = emb_bgd / jnp.linalg.norm(emb_bgd, axis=-1, keepdims=True)
        reward, _ = combined_reward((("ndcg", 1.0),), emb_bgd, table_vd, labels_bv, jnp.zeros((b, g), bool),
                                    jnp.full((b, g), t), cfg)
        adv = compute_advantages("grpo", reward, cfg.advantage_eps).reshape(-1)
        old, ref = logp_of(theta, y_bgt), logp_of(theta_ref, y_bgt)
        mask = jnp.ones((b * g, t))
        for _ in range(cfg.inner_steps):
            grads = jax.grad(lambda th: policy_loss(logp_of(th, y_bgt), old, ref, adv, mask, cfg.epsilon_low,
                                                    cfg.epsilon_high, cfg.beta, cfg.kl_clamp, "token_mean")[0])(theta)
            updates, opt_state = opt.update(grads, opt_state)
            theta = optax.apply_updates(theta, updates)
        return theta, opt_state, jnp.mean(reward)

    theta, opt_state = theta_ref, opt.init(theta_ref)
    curve = []
    for i in range(120):
        theta, opt_state, r = step(theta, opt_state, jax.random.key(i + 1))
        curve.append(float(r))
    start, end = np.mean(curve[:10]), np.mean(curve[-10:])
    print(f"toy GRPO mean nDCG@3: first 10 steps {start:.3f}, last 10 steps {end:.3f}")
    assert end > start + 0.3 and end > 0.9
