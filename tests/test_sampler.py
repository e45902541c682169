"""The KV-cache sampler: greedy parity with transformers generate, embedding = full forward, log-probs = teacher
forcing, stop rules, reproducibility, truncation filters, no recompilation, sharded = unsharded."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.model_helpers import rel_err, save_random_hf
from t1_jax.config import MeshConfig, SamplingConfig
from t1_jax.logprobs import token_logprobs
from t1_jax.mesh import make_mesh
from t1_jax.model import shard_model
from t1_jax.model.hf import import_hf
from t1_jax import sampler as sampler_lib

TOL = 1e-5
N_NEW = 6
PROMPT_LENGTHS = [7, 3, 5]
PAD_T = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, our imported model) of the same random tiny Qwen3 (float32)."""
    directory = tmp_path_factory.mktemp("hf")
    hf = save_random_hf(directory, vocab=512, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                        std=0.2, seed=1)
    return hf, import_hf(str(directory))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(1, 512, n).astype(np.int32) for n in PROMPT_LENGTHS]


def _pad(texts, total, left):
    ids = np.zeros((len(texts), total), np.int32)
    valid = np.zeros((len(texts), total), bool)
    for i, t in enumerate(texts):
        sl = slice(total - len(t), total) if left else slice(0, len(t))
        ids[i, sl], valid[i, sl] = t, True
    return ids, valid


def _hf_greedy(hf, texts, n_new, eos):
    ids, valid = _pad(texts, max(map(len, texts)), left=True)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(valid,
                          dtype=torch.long), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                          eos_token_id=eos, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


def _unused_ids(arr, count):
    used = set(np.asarray(arr).ravel().tolist())
    return [i for i in range(1, 512) if i not in used][:count]


def _sample(model, texts, cfg, emb, eos=(), left=False, key=0, **kw):
    graphdef, params = nnx.split(model)
    ids, valid = _pad(texts, PAD_T, left)
    return jax.device_get(sampler_lib.sample(graphdef, params, ids, valid, jax.random.key(key), cfg,
                                             emb_token_id=emb, eos_token_ids=eos, **kw))


REF_T = PAD_T + N_NEW + 2


@jax.jit
def _forward(graphdef, params, seq_bt, valid_bt):
    return nnx.merge(graphdef, params)(seq_bt, jnp.arange(seq_bt.shape[1])[None], valid_bt)[0]


def _hidden(model, seq_bt):
    """Full forward over one sequence (right-padded to one length, so it compiles once; causal attention makes the
    padding after the text irrelevant), hidden states of the real tokens."""
    n = seq_bt.shape[1]
    padded = np.zeros((1, REF_T), np.int32)
    padded[:, :n] = seq_bt
    return _forward(*nnx.split(model), jnp.asarray(padded), jnp.asarray(np.arange(REF_T) < n)[None])[:, :n]


def _full_forward_embedding(model, prompt, generated, normalize=True):
    hidden = _hidden(model, np.concatenate([prompt, generated])[None])
    emb = np.asarray(hidden[0, -1], np.float64)
    return emb / np.linalg.norm(emb) if normalize else emb


GREEDY = SamplingConfig(max_new_tokens=N_NEW, temperature=0.0)


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_greedy_token_identical_to_transformers_generate(models, prompts, left):
    hf, ours = models
    probe = _hf_greedy(hf, prompts, N_NEW, eos=511)
    emb, eos = _unused_ids(probe, 2)  # ids greedy never produces: generation runs the whole budget
    ref = _hf_greedy(hf, prompts, N_NEW, eos=eos)
    np.testing.assert_array_equal(ref, probe)
    out = _sample(ours, prompts, GREEDY, emb, (eos,), left=left)
    np.testing.assert_array_equal(out.tokens_bt[:, :N_NEW], ref)
    assert (out.tokens_bt[:, N_NEW] == emb).all() and out.forced_b.all() and not out.stopped_eos_b.any()
    assert (out.lengths_b == N_NEW + 1).all()


def _first_stop(row, stop_ids):
    hits = [j for j, t in enumerate(row) if t in stop_ids]
    return hits[0] if hits else None


def test_stop_on_embtoken_eos_and_budget(models, prompts):
    """<embtoken> emitted by the model stops its row; EOS is followed by <embtoken>; the budget forces it."""
    _, ours = models
    free = _sample(ours, prompts, GREEDY, emb=_unused_ids(np.zeros(1), 1)[0])  # emb id 1 never chosen below
    stream = free.tokens_bt[:, :N_NEW]
    emb, eos = int(stream[0, 2]), int(stream[1, 1])  # row 0 meets emb at step 2, row 1 meets eos at step 1
    assert emb != eos
    out = _sample(ours, prompts, GREEDY, emb, (eos,))
    for b, row in enumerate(stream):
        j = _first_stop(list(row), {emb, eos})
        if j is None:
            expect_len, forced, stopped_eos = N_NEW + 1, True, False
            np.testing.assert_array_equal(out.tokens_bt[b, :N_NEW], row)
            assert out.tokens_bt[b, N_NEW] == emb
        elif row[j] == emb:
            expect_len, forced, stopped_eos = j + 1, False, False
        else:
            expect_len, forced, stopped_eos = j + 2, False, True
            assert out.tokens_bt[b, j] == eos and out.tokens_bt[b, j + 1] == emb
        assert (out.lengths_b[b], out.forced_b[b], out.stopped_eos_b[b]) == (expect_len, forced, stopped_eos), b
        assert out.tokens_bt[b, expect_len - 1] == emb
        assert (out.tokens_bt[b, expect_len:] == sampler_lib.PAD_ID).all()
        assert (out.logprobs_bt[b, expect_len:] == 0).all()
    assert out.lengths_b[0] == 3 and not out.forced_b[0]
    assert out.stopped_eos_b[1] and out.lengths_b[1] <= 3


@pytest.mark.parametrize("cfg", [SamplingConfig(max_new_tokens=N_NEW, temperature=0.9, top_p=0.9),
                                 SamplingConfig(max_new_tokens=N_NEW, temperature=0.0)], ids=["top_p", "greedy"])
def test_embedding_equals_full_forward(models, prompts, cfg):
    _, ours = models
    free = _sample(ours, prompts, cfg, emb=1, key=3)
    emb, eos = int(free.tokens_bt[0, 3]), int(free.tokens_bt[2, 1])  # make rows stop in different ways
    if emb == eos:
        eos = 2
    out = _sample(ours, prompts, cfg, emb, (eos,), key=3)
    assert len({(bool(f), bool(e)) for f, e in zip(out.forced_b, out.stopped_eos_b)}) >= 2
    for b, prompt in enumerate(prompts):
        n = int(out.lengths_b[b])
        ref = _full_forward_embedding(ours, prompt, out.tokens_bt[b, :n])
        assert rel_err(out.embedding_bd[b], ref) <= TOL
    raw = _sample(ours, prompts, cfg, emb, (eos,), key=3, normalize=False)
    n = int(raw.lengths_b[1])
    assert rel_err(raw.embedding_bd[1], _full_forward_embedding(ours, prompts[1], raw.tokens_bt[1, :n], False)) <= TOL


def test_logprobs_equal_teacher_forced_recompute(models, prompts):
    """With temperature only (no truncation), every generated token's log-prob (forced ones included) equals
    token_logprobs over prompt + generated under the same temperature."""
    _, ours = models
    temperature = 0.7
    cfg = SamplingConfig(max_new_tokens=N_NEW, temperature=temperature)
    free = _sample(ours, prompts, cfg, emb=1, key=5)
    out = _sample(ours, prompts, cfg, emb=1, eos=(int(free.tokens_bt[1, 2]),), key=5)
    recompute = jax.jit(lambda h, y: token_logprobs(h, y, ours.logits, chunk=4, temperature=temperature)[0])
    for b, prompt in enumerate(prompts):
        n = int(out.lengths_b[b])
        seq = np.concatenate([prompt, out.tokens_bt[b, :n]])[None]
        hidden = np.zeros((1, REF_T, ours.cfg.hidden_size), np.float32)
        hidden[:, :seq.shape[1]] = _hidden(ours, seq)
        targets = np.zeros((1, REF_T), np.int32)
        targets[:, :seq.shape[1] - 1] = seq[:, 1:]
        logp = recompute(jnp.asarray(hidden), jnp.asarray(targets))  # padded to one shape: one compilation
        ref = np.asarray(logp[0, len(prompt) - 1:seq.shape[1] - 1])
        np.testing.assert_allclose(out.logprobs_bt[b, :n], ref, rtol=1e-5, atol=1e-5)
    assert (out.logprobs_bt < 0).sum() == out.lengths_b.sum()


def _np_truncated_logp(logits_v, temperature, k, p):
    """float64 numpy reference: temperature, keep the top k, then the smallest most-likely set of mass >= p."""
    x = logits_v.astype(np.float64) / temperature
    keep = x >= np.sort(x)[-k]
    x = np.where(keep, x, -np.inf)
    prob = np.exp(x - x.max())
    prob /= prob.sum()
    order = np.argsort(-prob)
    n_keep = int(np.searchsorted(np.cumsum(prob[order]), p) + 1)
    x = np.where(np.isin(np.arange(len(x)), order[:n_keep]), x, -np.inf)
    return x - x.max() - np.log(np.sum(np.exp(x - x.max())))


def test_truncated_logprobs_are_those_of_the_sampling_distribution(models, prompts):
    """top-k + top-p: each drawn token's log-prob is under the truncated, renormalised distribution (numpy float64
    reference from a full forward); the forced <embtoken> reports the untruncated temperature log-prob."""
    _, ours = models
    temperature, k, p = 1.3, 7, 0.8
    out = _sample(ours, prompts, SamplingConfig(max_new_tokens=N_NEW, temperature=temperature, top_k=k, top_p=p),
                  emb=1, key=11)
    for b, prompt in enumerate(prompts):
        n = int(out.lengths_b[b])
        seq = np.concatenate([prompt, out.tokens_bt[b, :n]])[None]
        logits = np.asarray(ours.logits(_hidden(ours, seq)))[0, len(prompt) - 1:seq.shape[1] - 1]
        for j in range(n):
            token = out.tokens_bt[b, j]
            if j == n - 1 and out.forced_b[b]:
                x = logits[j].astype(np.float64) / temperature
                ref = x[token] - x.max() - np.log(np.sum(np.exp(x - x.max())))
            else:
                ref = _np_truncated_logp(logits[j], temperature, k, p)[token]
            assert np.isfinite(ref) and abs(out.logprobs_bt[b, j] - ref) <= 1e-5, (b, j)
    assert out.forced_b.any()


def test_fixed_key_reproducible_and_top_k1_is_greedy(models, prompts):
    _, ours = models
    cfg = SamplingConfig(max_new_tokens=N_NEW, temperature=1.0)
    a = _sample(ours, prompts, cfg, emb=1, key=7)
    b = _sample(ours, prompts, cfg, emb=1, key=7)
    c = _sample(ours, prompts, cfg, emb=1, key=8)
    np.testing.assert_array_equal(a.tokens_bt, b.tokens_bt)
    np.testing.assert_array_equal(a.embedding_bd, b.embedding_bd)
    assert (a.tokens_bt != c.tokens_bt).any()
    greedy = _sample(ours, prompts, GREEDY, emb=1)
    top1 = _sample(ours, prompts, dataclasses.replace(cfg, top_k=1), emb=1, key=9)
    np.testing.assert_array_equal(top1.tokens_bt, greedy.tokens_bt)
    np.testing.assert_allclose(top1.logprobs_bt[:, :N_NEW], 0.0, atol=1e-6)  # the only token left has p = 1


def test_truncation_filters_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    for k in (1, 5, 50):
        kept = np.isfinite(np.asarray(sampler_lib.top_k_filter(jnp.asarray(logits), k)))
        ref = logits >= np.sort(logits, axis=1)[:, -k][:, None]
        np.testing.assert_array_equal(kept, ref)
    for p in (0.05, 0.5, 0.9, 0.999):
        kept = np.isfinite(np.asarray(sampler_lib.top_p_filter(jnp.asarray(logits), p)))
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for b in range(4):
            order = np.argsort(-probs[b])
            n_keep = int(np.searchsorted(np.cumsum(probs[b, order]), p) + 1)  # smallest prefix with mass >= p
            ref = np.zeros(50, bool)
            ref[order[:n_keep]] = True
            np.testing.assert_array_equal(kept[b], ref, err_msg=f"p={p} row {b}")


def test_first_argmax_and_token_logprob_match_numpy():
    """The decode loop's greedy choice and log-probabilities (two reductions instead of argmax, no [B, V] log-softmax
    written out) against numpy: first index of ties, first NaN, and float64 log-softmax."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(6, 3001)) * 4).astype(np.float32)
    x[1, [7, 2900]] = x[1].max() + 1  # a tie: the first index wins
    x[2, [11, 40]] = np.nan  # NaN: the first NaN, as jnp.argmax
    x[3] = 0.0  # all equal
    x[4, -1] = 1e4  # the last index
    x[5, 0] = -np.inf
    got = np.asarray(jax.jit(sampler_lib.first_argmax)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, [np.argmax(x[0]), 7, 11, 0, 3000, np.argmax(x[5])])
    token = jnp.asarray(rng.integers(0, 3001, 6), jnp.int32)
    for temperature in (1.0, 0.7):
        fn = jax.jit(sampler_lib.token_logprob, static_argnums=2)
        got = np.asarray(fn(jnp.asarray(x), token, temperature))
        x64 = x.astype(np.float64) / temperature
        ref = x64 - x64.max(1, keepdims=True)
        ref = ref - np.log(np.exp(ref).sum(1, keepdims=True))
        ref = ref[np.arange(6), np.asarray(token)]
        finite = [0, 1, 3, 4, 5]
        np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-5)
        assert np.isnan(got[2])
        # the same bits as jax.nn.log_softmax, which the sampler used before
        want = np.asarray(jax.jit(lambda v, t: jnp.take_along_axis(jax.nn.log_softmax(v / temperature, -1),
                                                                    t[:, None], -1)[:, 0])(jnp.asarray(x), token))
        np.testing.assert_array_equal(got[finite], want[finite])


def test_second_call_with_same_bucket_does_not_recompile(models, prompts):
    _, ours = models
    cfg = SamplingConfig(max_new_tokens=4, temperature=0.8, top_k=20)
    _sample(ours, prompts, cfg, emb=1, key=1)
    before = sampler_lib.compiled_count()
    other = [p[::-1] + 1 for p in prompts]
    _sample(ours, other, cfg, emb=1, key=2)
    _sample(ours, prompts[::-1], cfg, emb=1, key=3, left=True)
    assert sampler_lib.compiled_count() == before
    _sample(ours, prompts, cfg, emb=2, eos=(3, 4))  # other special ids are traced values: no recompilation
    assert sampler_lib.compiled_count() == before
    _sample(ours, prompts, dataclasses.replace(cfg, max_new_tokens=5), emb=1)
    assert sampler_lib.compiled_count() > before  # the counter does see a new program


def test_sharded_equals_unsharded(models, prompts):
    _, ours = models
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    texts = prompts + [p[:2] for p in prompts] + [prompts[0][::-1], prompts[1]]  # batch 8 over data x fsdp = 4
    cfg = SamplingConfig(max_new_tokens=N_NEW, temperature=0.0)
    ref = _sample(ours, texts, cfg, emb=int(_sample(ours, texts, cfg, emb=1).tokens_bt[3, 2]))
    sharded = shard_model(nnx.clone(ours), mesh)
    graphdef, params = nnx.split(sharded)
    ids, valid = _pad(texts, PAD_T, False)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    ids, valid = jax.device_put(ids, batch), jax.device_put(valid, batch)
    out = sampler_lib.sample(graphdef, params, ids, valid, jax.random.key(0), cfg,
                             emb_token_id=int(ref.tokens_bt[3, ref.lengths_b[3] - 1]), mesh=mesh)
    assert out.embedding_bd.sharding.spec[0] == ("data", "fsdp")
    out = jax.device_get(out)
    np.testing.assert_array_equal(out.tokens_bt, ref.tokens_bt)
    np.testing.assert_array_equal(out.lengths_b, ref.lengths_b)
    assert rel_err(out.embedding_bd, ref.embedding_bd) <= TOL
    np.testing.assert_allclose(out.logprobs_bt, ref.logprobs_bt, atol=1e-5)
