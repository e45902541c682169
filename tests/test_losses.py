"""InfoNCE (single device and all-gathered over a real 8-device mesh) and the chunked token losses.

References are independent float64 numpy implementations written row by row with Python sets, not vectorised copies
of the JAX code.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t1_jax import losses
from t1_jax.config import MeshConfig
from t1_jax.logprobs import chunked_token_ce, token_logprobs
from t1_jax.mesh import make_mesh

SHARDS, B_LOCAL, HARD = 4, 2, 2
N_LOCAL = B_LOCAL * (1 + HARD)


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_batch(seed=0, dim=16, duplicates=True):
    """A global batch in shard-block layout: shard s holds queries [s*B_LOCAL, (s+1)*B_LOCAL) and the documents
    ``[their labelled positives, their hard negatives]``; ``pos_col`` is shard-local (what gathered_infonce takes)."""
    rng = np.random.default_rng(seed)
    b = SHARDS * B_LOCAL
    table = _normalise(rng.normal(size=(64, dim)))
    primary = np.arange(b)
    pos_ids = np.full((b, 2), -1)
    negs = 30 + np.arange(b * HARD).reshape(b, HARD)
    valid = np.ones(b, bool)
    if duplicates:
        primary[6] = 3  # queries 3 and 6 (different shards) share their labelled positive
        pos_ids[1, 1] = 20  # query 1 has a second positive ...
        negs[2, 1] = 20  # ... that is a hard negative of query 2 (same shard)
        negs[5, 0] = 0  # query 0's positive is a hard negative of query 5 (another shard)
        negs[4, 1] = 6  # query 6's (= 3's) positive id appears again as a negative of query 4
        primary[7] = -1  # query 7 is padding: no positive, no documents
        negs[7] = -1
        valid[7] = False
    pos_ids[:, 0] = primary
    ids, pos_col = [], []
    for s in range(SHARDS):
        rows = range(s * B_LOCAL, (s + 1) * B_LOCAL)
        ids += [primary[r] for r in rows] + [n for r in rows for n in negs[r]]
        pos_col += list(range(B_LOCAL))
    ids = np.array(ids)
    docs = np.where(ids[:, None] >= 0, table[np.maximum(ids, 0)], 0.0)
    q = _normalise(table[np.maximum(primary, 0)] + 0.8 * rng.normal(size=(b, dim)))
    return dict(q=q.astype(np.float32), d=docs.astype(np.float32), ids=ids.astype(np.int32),
                pos_col=np.array(pos_col, np.int32), pos_ids=pos_ids.astype(np.int32), valid=valid)


def global_cols(batch):
    return np.asarray(losses.globalize_pos_cols(jnp.asarray(batch["pos_col"]), SHARDS, N_LOCAL))


def np_infonce(q, d, ids, pos_col, pos_ids, tau, symmetric, mask_duplicates, valid):
    """float64 row-by-row reference; returns (loss, accuracy)."""
    q, d = q.astype(np.float64), d.astype(np.float64)

    def ce(logits, label_index):
        m = max(logits)
        return m + np.log(sum(np.exp(x - m) for x in logits)) - logits[label_index]

    q2d, d2q, correct = [], [], []
    for i in range(len(q)):
        if not valid[i]:
            continue
        positives = {p for p in pos_ids[i] if p >= 0}
        cand = [j for j in range(len(d)) if j == pos_col[i]
                or (ids[j] >= 0 and not (mask_duplicates and ids[j] in positives))]
        logits = [q[i] @ d[j] / tau for j in cand]
        q2d.append(ce(logits, cand.index(pos_col[i])))
        correct.append(cand[int(np.argmax(logits))] == pos_col[i])
        anchor, anchor_id = d[pos_col[i]], ids[pos_col[i]]
        rows = [k for k in range(len(q)) if k == i
                or (valid[k] and not (mask_duplicates and anchor_id >= 0 and anchor_id in set(pos_ids[k])))]
        d2q.append(ce([anchor @ q[k] / tau for k in rows], rows.index(i)))
    loss = np.mean(q2d)
    if symmetric:
        loss = 0.5 * (loss + np.mean(d2q))
    return loss, np.mean(correct)


# --------------------------------------------------------------------------------------------------------------------
# Single-device InfoNCE
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("mask_duplicates", [False, True])
def test_infonce_matches_float64_reference(symmetric, mask_duplicates):
    batch = make_batch(seed=1)
    cols = global_cols(batch)
    tau = 0.05
    loss, metrics = losses.infonce(jnp.asarray(batch["q"]), jnp.asarray(batch["d"]), jnp.asarray(batch["ids"]),
                                   jnp.asarray(cols), jnp.asarray(batch["pos_ids"]), tau, symmetric=symmetric,
                                   mask_duplicates=mask_duplicates, valid_b=jnp.asarray(batch["valid"]))
    ref_loss, ref_acc = np_infonce(batch["q"], batch["d"], batch["ids"], cols, batch["pos_ids"], tau, symmetric,
                                   mask_duplicates, batch["valid"])
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), ref_acc, rtol=1e-6)
    assert float(metrics["num_queries"]) == 7
    ref_pos = np.mean([batch["q"][i] @ batch["d"][cols[i]] for i in range(7)])
    np.testing.assert_allclose(float(metrics["pos_sim"]), ref_pos, rtol=1e-5)


def test_masking_changes_the_loss_only_through_masked_columns():
    """With masking on, the content of a masked duplicate column cannot matter; with it off, it does."""
    batch = make_batch(seed=2)
    cols = global_cols(batch)
    args = lambda d: (jnp.asarray(batch["q"]), jnp.asarray(d), jnp.asarray(batch["ids"]), jnp.asarray(cols),  # noqa
                      jnp.asarray(batch["pos_ids"]))
    # column of query 3's labelled positive (id 3) is a duplicate for query 6: make it maximally similar to query 6
    col_3 = int(cols[3])
    d_changed = batch["d"].copy()
    d_changed[col_3] = batch["q"][6] * 3.0
    # query 6 alone: its row must ignore column col_3 when masking
    only6 = jnp.zeros(8, bool).at[6].set(True)
    base, _ = losses.infonce(*args(batch["d"]), 0.05, mask_duplicates=True, valid_b=only6)
    changed, _ = losses.infonce(*args(d_changed), 0.05, mask_duplicates=True, valid_b=only6)
    assert float(base) == pytest.approx(float(changed), abs=1e-6)
    unmasked, _ = losses.infonce(*args(d_changed), 0.05, mask_duplicates=False, valid_b=only6)
    assert float(unmasked) > float(base) + 1.0


def test_padding_rows_are_finite_and_ignored():
    batch = make_batch(seed=3)
    cols = global_cols(batch)
    q = batch["q"].copy()
    q[7] = 123.0  # garbage in the padding row must not leak into the loss or its gradient
    fn = lambda q_: losses.infonce(q_, jnp.asarray(batch["d"]), jnp.asarray(batch["ids"]), jnp.asarray(cols),  # noqa
                                   jnp.asarray(batch["pos_ids"]), 0.05, symmetric=False,
                                   valid_b=jnp.asarray(batch["valid"]))[0]
    loss, grad = jax.value_and_grad(fn)(jnp.asarray(q))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[7] == 0)
    ref, _ = np_infonce(batch["q"], batch["d"], batch["ids"], cols, batch["pos_ids"], 0.05, False, True, batch["valid"])
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# All-gathered InfoNCE on the 8 fake devices
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


def _sharded(mesh, batch):
    put = lambda x: jax.device_put(jnp.asarray(x), NamedSharding(mesh, P(("data", "fsdp"))))  # noqa: E731
    return [put(batch[k]) for k in ("q", "d", "ids", "pos_col", "pos_ids", "valid")]


@pytest.mark.parametrize("symmetric,mask_duplicates", [(False, True), (True, True), (True, False)])
def test_gathered_equals_single_device_loss_and_gradient(mesh, symmetric, mask_duplicates):
    batch = make_batch(seed=4)
    tau = 0.05
    gathered = losses.gathered_infonce(mesh, temperature=tau, symmetric=symmetric, mask_duplicates=mask_duplicates)
    q, d, ids, pos_col, pos_ids, valid = _sharded(mesh, batch)
    assert q.sharding.spec == P(("data", "fsdp"))
    cols = jnp.asarray(global_cols(batch))

    def sharded_loss(q_, d_):
        return gathered(q_, d_, ids, pos_col, pos_ids, valid)

    def single_loss(q_, d_):
        return losses.infonce(q_, d_, jnp.asarray(batch["ids"]), cols,
                              jnp.asarray(batch["pos_ids"]), tau, symmetric=symmetric,
                              mask_duplicates=mask_duplicates, valid_b=jnp.asarray(batch["valid"]))

    (loss_s, met_s), (gq_s, gd_s) = jax.jit(jax.value_and_grad(sharded_loss, argnums=(0, 1), has_aux=True))(q, d)
    (loss_1, met_1), (gq_1, gd_1) = jax.jit(jax.value_and_grad(single_loss, argnums=(0, 1), has_aux=True))(
        jnp.asarray(batch["q"]), jnp.asarray(batch["d"]))
    np.testing.assert_allclose(float(loss_s), float(loss_1), atol=1e-5, rtol=1e-5)
    for key in met_1:
        np.testing.assert_allclose(float(met_s[key]), float(met_1[key]), atol=1e-5, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(np.asarray(gq_s), np.asarray(gq_1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gd_s), np.asarray(gd_1), atol=1e-5)
    assert np.abs(np.asarray(gd_1)).max() > 1e-2  # the gradient is not trivially zero
    ref, _ = np_infonce(batch["q"], batch["d"], batch["ids"], global_cols(batch), batch["pos_ids"], tau, symmetric,
                        mask_duplicates, batch["valid"])
    np.testing.assert_allclose(float(loss_s), ref, rtol=1e-5)


def test_gathered_label_order(mesh):
    """One-hot embeddings: query b is similar only to its positive's *global* column, so accuracy is 1 exactly when the
    labels are offset by shard * N_local; the plausible wrong offsets (none, or shard * B_local) score far lower."""
    batch = make_batch(seed=5, duplicates=False)
    n = SHARDS * N_LOCAL
    cols = global_cols(batch)
    eye = np.eye(n, dtype=np.float32)
    batch["d"] = eye
    batch["q"] = eye[cols]
    batch["ids"] = np.arange(n, dtype=np.int32)
    batch["pos_ids"] = np.stack([cols, np.full_like(cols, -1)], 1).astype(np.int32)
    gathered = losses.gathered_infonce(mesh, temperature=0.05, symmetric=True)
    loss, metrics = jax.jit(gathered)(*_sharded(mesh, batch))
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["accuracy_d2q"]) == 1.0
    assert float(metrics["pos_sim"]) == 1.0 and float(metrics["neg_sim"]) == 0.0
    assert float(loss) < 1e-6
    # positives sit in the first B_LOCAL columns of each shard's block: global column of query b = s*N_LOCAL + b%B_LOCAL
    assert list(cols) == [s * N_LOCAL + i for s in range(SHARDS) for i in range(B_LOCAL)]
    for wrong in (batch["pos_col"], batch["pos_col"] + np.repeat(np.arange(SHARDS), B_LOCAL) * B_LOCAL):
        _, m = losses.infonce(jnp.asarray(batch["q"]), jnp.asarray(batch["d"]), jnp.asarray(batch["ids"]),
                              jnp.asarray(wrong), jnp.asarray(batch["pos_ids"]), 0.05, mask_duplicates=False)
        assert float(m["accuracy"]) <= 0.25


def test_gathered_refuses_indivisible_batch(mesh):
    gathered = losses.gathered_infonce(mesh, temperature=0.05)
    z = jnp.zeros((6, 4))
    with pytest.raises(ValueError, match="divisible by the 4 batch shards"):
        gathered(z, jnp.zeros((12, 4)), jnp.zeros(12, jnp.int32), jnp.zeros(6, jnp.int32), jnp.zeros((6, 1), jnp.int32))


# --------------------------------------------------------------------------------------------------------------------
# Chunked token losses
# --------------------------------------------------------------------------------------------------------------------

B, T, D, V = 2, 64, 8, 37


def _ce_problem(seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(B, T, D)).astype(np.float32)
    w = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32) * 3
    y = rng.integers(0, V, size=(B, T)).astype(np.int32)
    weights = (rng.random((B, T)) < 0.7).astype(np.float32)
    return h, w, y, weights


def np_log_softmax(logits):
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("chunk", [7, 16, 64, 500])
def test_chunked_ce_and_gradient_match_float64(chunk):
    h, w, y, weights = _ce_problem()

    def f(h_, w_):
        return chunked_token_ce(h_, jnp.asarray(y), jnp.asarray(weights), lambda x: x @ w_, chunk)

    (sum_ce, sum_w) = f(jnp.asarray(h), jnp.asarray(w))
    h64, w64 = h.astype(np.float64), w.astype(np.float64)
    logp = np_log_softmax(h64 @ w64)
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sum_ce), (nll * weights).sum(), rtol=1e-5)
    assert float(sum_w) == weights.sum()
    # analytic gradient of sum_ce: dlogits = weight * (softmax - onehot)
    dlogits = weights[..., None] * (np.exp(logp) - np.eye(V)[y])
    gh, gw = jax.grad(lambda a, b: f(a, b)[0], argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(gh), dlogits @ w64.T, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), np.einsum("btd,btv->dv", h64, dlogits), atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_float64(temperature):
    h, w, y, _ = _ce_problem(seed=1)
    logp, ent = token_logprobs(jnp.asarray(h), jnp.asarray(y), lambda x: x @ jnp.asarray(w), 10, temperature)
    ref = np_log_softmax(h.astype(np.float64) @ w.astype(np.float64) / temperature)
    np.testing.assert_allclose(np.asarray(logp), np.take_along_axis(ref, y[..., None], -1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), -(np.exp(ref) * ref).sum(-1), atol=1e-5)
    assert logp.shape == (B, T) and ent.shape == (B, T)


def test_token_logprobs_gradient_matches_float64():
    """d/dlogits of sum(c * logp) is c * (onehot - softmax) / temperature; chained to h and W in numpy."""
    h, w, y, _ = _ce_problem(seed=2)
    c = np.random.default_rng(3).normal(size=(B, T)).astype(np.float32)
    tau = 0.7

    def f(h_, w_):
        logp, _ = token_logprobs(h_, jnp.asarray(y), lambda x: x @ w_, 9, tau)
        return jnp.sum(logp * c)

    gh, gw = jax.grad(f, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))
    h64, w64 = h.astype(np.float64), w.astype(np.float64)
    probs = np.exp(np_log_softmax(h64 @ w64 / tau))
    dlogits = c[..., None] * (np.eye(V)[y] - probs) / tau
    np.testing.assert_allclose(np.asarray(gh), dlogits @ w64.T, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), np.einsum("btd,btv->dv", h64, dlogits), atol=1e-4)


def _all_var_shapes(jaxpr):
    """Shapes of every value any equation (recursively, including scan/remat/pjit bodies) produces."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _all_var_shapes(inner)
    return shapes


def _largest_logit_block(chunk):
    h, w, y, weights = _ce_problem()

    def loss(h_, w_):
        sum_ce, _ = chunked_token_ce(h_, jnp.asarray(y), jnp.asarray(weights), lambda x: x @ w_, chunk)
        logp, ent = token_logprobs(h_, jnp.asarray(y), lambda x: x @ w_, chunk)
        return sum_ce + logp.sum() + ent.sum()

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(jnp.asarray(h), jnp.asarray(w))
    return max(int(np.prod(s)) for s in _all_var_shapes(jaxpr.jaxpr) if s and s[-1] == V)


def test_no_full_logits_in_forward_or_backward():
    full = B * T * V
    assert _largest_logit_block(8) == B * 8 * V  # only one chunk's logits at a time, also in the backward pass
    assert _largest_logit_block(T) >= full  # the detector does see a full [B, T, V] block when the chunk is T
