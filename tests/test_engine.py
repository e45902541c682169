"""Continuous batching (t1_jax.engine): greedy output identical to the batch sampler (tokens, log-probs, embeddings,
stop flags) with more prompts than slots, per-prompt budgets and cache resizes; sampled output depends only on the
sequence's seed; sharded slots on the 8-device mesh equal the unsharded run; no recompilation on a second call."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from tests.model_helpers import rel_err
from t1_jax import engine
from t1_jax.config import MeshConfig, SamplingConfig
from t1_jax.mesh import make_mesh
from t1_jax.model import PRESETS, Qwen3, shard_model
from t1_jax.sampler import sample, sampling_logprobs

CFG = dataclasses.replace(PRESETS["tiny"], num_layers=2)
EMB = CFG.vocab_size - 1
SMALL = engine.EngineSettings(slots=3, min_capacity=16, prompt_bucket=4)


@pytest.fixture(scope="module")
def model():
    return nnx.split(Qwen3(CFG, rngs=nnx.Rngs(3)))


@pytest.fixture(scope="module")
def workload():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, CFG.vocab_size - 2, int(n)).tolist() for n in rng.integers(2, 14, 8)]
    budgets = [0, 1, 5, 22, 3, 9, 30, 2]  # 22 and 30 need a larger cache than 16: resized up, then down
    return prompts, budgets


def _batch_sampler(model, prompt, budget, cfg, eos=()):
    """One prompt alone through the batch sampler (left-padded to 16)."""
    graphdef, params = model
    ids = np.zeros((1, 16), np.int32)
    ids[0, 16 - len(prompt):] = prompt
    r = jax.device_get(sample(graphdef, params, ids, ids > 0, jax.random.key(0), cfg, emb_token_id=EMB,
                              eos_token_ids=eos, max_new_tokens=budget))
    n = int(r.lengths_b[0])
    return r.tokens_bt[0, :n], r.logprobs_bt[0, :n], r.embedding_bd[0], bool(r.forced_b[0]), bool(r.stopped_eos_b[0])


def test_greedy_equals_batch_sampler_with_refills_and_resizes(model, workload):
    prompts, budgets = workload
    greedy = SamplingConfig(max_new_tokens=30, temperature=0.0)
    # an end-of-sequence id that greedy decoding really produces (the 3rd token of prompt 3), so the EOS rule runs
    eos = (int(_batch_sampler(model, prompts[3], 22, greedy)[0][2]),)
    before = engine.compiled_count()
    gens = engine.generate(*model, prompts, greedy, emb_token_id=EMB, eos_token_ids=eos, max_new_tokens=budgets,
                           settings=SMALL)
    assert engine.compiled_count() > before
    saw_eos = saw_forced = False
    for i, (prompt, budget) in enumerate(zip(prompts, budgets)):
        tokens, logp, emb, forced, stopped = _batch_sampler(model, prompt, budget, greedy, eos)
        g = gens[i]
        assert g.tokens.tolist() == tokens.tolist(), i
        assert g.tokens[-1] == EMB and len(g.tokens) <= budget + 2
        assert np.abs(g.logprobs - logp).max() <= 1e-5
        assert rel_err(g.embedding, emb) <= 1e-5
        assert (g.forced, g.stopped_eos) == (forced, stopped)
        saw_eos |= stopped
        saw_forced |= forced
    assert saw_eos and saw_forced  # both stop rules exercised
    # same shapes again: nothing new to compile
    count = engine.compiled_count()
    engine.generate(*model, prompts, greedy, emb_token_id=EMB, eos_token_ids=eos, max_new_tokens=budgets,
                    settings=SMALL)
    assert engine.compiled_count() == count


def test_sampled_output_depends_only_on_the_sequence_seed(model, workload):
    prompts, budgets = workload
    hot = SamplingConfig(max_new_tokens=30, temperature=1.0, top_k=20)
    seeds = [100 + i for i in range(len(prompts))]
    kw = dict(emb_token_id=EMB, max_new_tokens=budgets, rng=jax.random.key(7))
    a = engine.generate(*model, prompts, hot, seeds=seeds, settings=SMALL, **kw)
    order = np.random.default_rng(1).permutation(len(prompts))
    b = engine.generate(*model, [prompts[i] for i in order], hot, seeds=[seeds[i] for i in order],
                        settings=dataclasses.replace(SMALL, slots=2), **{**kw, "max_new_tokens": [budgets[i]
                                                                                                  for i in order]})
    for j, i in enumerate(order):
        assert a[i].tokens.tolist() == b[j].tokens.tolist()
        assert np.abs(a[i].logprobs - b[j].logprobs).max() <= 1e-5
    other = engine.generate(*model, prompts, hot, seeds=[s + 1 for s in seeds], settings=SMALL, **kw)
    assert any(x.tokens.tolist() != y.tokens.tolist() for x, y in zip(a, other))
    # drawn tokens' log-probs are those of the top-k distribution, recomputed from one full forward
    m = nnx.merge(*model)
    i = int(np.argmax(budgets))
    seq = np.asarray(prompts[i] + a[i].tokens.tolist(), np.int32)[None]
    hidden = m(seq, np.arange(seq.shape[1])[None], np.ones_like(seq, bool))[0][0]
    p = len(prompts[i])
    n = len(a[i].tokens) - 1  # the last token is <embtoken>, forced at the budget (not drawn)
    logp_tv = np.asarray(sampling_logprobs(m.logits(hidden[p - 1:p - 1 + n]), hot))
    ref = logp_tv[np.arange(n), a[i].tokens[:n]]
    assert np.isfinite(ref).all() and np.abs(ref - a[i].logprobs[:n]).max() <= 1e-4


def test_sharded_slots_equal_unsharded(model, workload):
    prompts, budgets = workload
    greedy = SamplingConfig(max_new_tokens=30, temperature=0.0)
    ref = engine.generate(*model, prompts[:5], greedy, emb_token_id=EMB, max_new_tokens=budgets[:5],
                          settings=dataclasses.replace(SMALL, slots=4))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = nnx.split(shard_model(nnx.merge(*model), mesh))
    with pytest.raises(ValueError, match="multiple of the mesh's batch shards"):
        engine.generate(*sharded, prompts, greedy, emb_token_id=EMB, settings=SMALL, mesh=mesh)
    out = engine.generate(*sharded, prompts[:5], greedy, emb_token_id=EMB, max_new_tokens=budgets[:5],
                          settings=dataclasses.replace(SMALL, slots=4), mesh=mesh)
    for x, y in zip(ref, out):
        assert x.tokens.tolist() == y.tokens.tolist()
        assert rel_err(y.embedding, x.embedding) <= 1e-5
