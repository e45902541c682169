"""KV-cache decoding against the full forward; sharded (2x2x2 mesh) forward against the unsharded one; remat/scan."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.model_helpers import padded_batch, rel_err
from t1_jax.config import MeshConfig
from t1_jax.mesh import make_mesh, use_mesh
from t1_jax.model import PRESETS, Qwen3, cache_shardings, init_cache, param_shardings, shard_model
from t1_jax.model.qwen3 import split_layers

TOL = 1e-5
CFG = dataclasses.replace(PRESETS["tiny"], num_layers=3, num_heads=4, num_kv_heads=2)


def _model(cfg=CFG, seed=0):
    return Qwen3(cfg, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("left", [True, False], ids=["left_pad", "right_pad"])
def test_cache_decoding_matches_full_forward(left):
    """Prefill a padded batch of prompts, then decode token by token with per-sequence positions; every step's
    hidden state must equal the full forward over the (unpadded) text at that position."""
    model = _model()
    rng = np.random.default_rng(1)
    prompt_lengths, prefill_len, steps = [5, 2, 4], 5, 4
    texts = [rng.integers(1, CFG.vocab_size, n + steps) for n in prompt_lengths]
    prompts = padded_batch(CFG.vocab_size, prompt_lengths, prefill_len, left=left)
    tokens, positions, mask = (np.array(a) for a in prompts)
    for i, n in enumerate(prompt_lengths):  # use the texts' own prompt tokens
        tokens[i, mask[i]] = texts[i][:n]
    cache = init_cache(CFG, batch=3, max_len=prefill_len + steps)
    step = jax.jit(lambda s, t, p, m, c: nnx.merge(graphdef, s)(t, p, m, c))
    graphdef, state = nnx.split(model)
    hidden, cache = step(state, tokens, positions, mask, cache)
    decoded = [[np.asarray(hidden[i, mask[i]][-1])] for i in range(3)]
    for k in range(steps):
        new_tok = np.array([[texts[i][n + k]] for i, n in enumerate(prompt_lengths)], np.int32)
        new_pos = np.array([[n + k] for n in prompt_lengths], np.int32)
        hidden, cache = step(state, new_tok, new_pos, np.ones((3, 1), bool), cache)
        for i in range(3):
            decoded[i].append(np.asarray(hidden[i, 0]))
    assert int(cache.index) == prefill_len + steps
    # reference: one full forward over the complete texts (right-padded, so each row is its unpadded text's forward)
    total = max(len(x) for x in texts)
    full_tokens = np.stack([np.pad(x, (0, total - len(x))) for x in texts]).astype(np.int32)
    full_mask = np.stack([np.arange(total) < len(x) for x in texts])
    full = np.asarray(step(state, full_tokens, np.tile(np.arange(total), (3, 1)), full_mask, None)[0])
    for i, n in enumerate(prompt_lengths):
        assert rel_err(np.stack(decoded[i]), full[i, n - 1:len(texts[i])]) <= TOL


def test_per_row_write_index_per_layer_cache_matches_full_forward():
    """Continuous-batching cache semantics: per-layer cache, right-padded prefill, then each row's next token is
    written right after its own prompt (per-row index = prompt length, overwriting its padding slots) with per-layer
    weights from split_layers; every step equals the full forward over the unpadded text."""
    model = _model()
    graphdef, state = nnx.split(model)
    layers = split_layers(graphdef, state)
    rng = np.random.default_rng(2)
    prompt_lengths, prefill_len, steps = [5, 2, 4], 5, 4
    texts = [rng.integers(1, CFG.vocab_size, n + steps) for n in prompt_lengths]
    tokens, positions, mask = (np.array(a) for a in padded_batch(CFG.vocab_size, prompt_lengths, prefill_len,
                                                                  left=False))
    for i, n in enumerate(prompt_lengths):
        tokens[i, :n] = texts[i][:n]
    step = jax.jit(lambda s, ls, t, p, m, c: nnx.merge(graphdef, s)(t, p, m, c, layers=ls))
    cache = init_cache(CFG, batch=3, max_len=prefill_len + steps, per_layer=True, per_row_index=True)
    hidden, cache = step(state, layers, tokens, positions, mask, cache)
    assert cache.per_layer and cache.index.tolist() == [prefill_len] * 3
    cache = cache.replace(index=jnp.asarray(prompt_lengths, jnp.int32))
    decoded = [[np.asarray(hidden[i, n - 1])] for i, n in enumerate(prompt_lengths)]
    for k in range(steps):
        new_tok = np.array([[texts[i][n + k]] for i, n in enumerate(prompt_lengths)], np.int32)
        new_pos = np.array([[n + k] for n in prompt_lengths], np.int32)
        hidden, cache = step(state, layers, new_tok, new_pos, np.ones((3, 1), bool), cache)
        for i in range(3):
            decoded[i].append(np.asarray(hidden[i, 0]))
    assert cache.index.tolist() == [n + steps for n in prompt_lengths]
    full = np.asarray(model(np.stack([np.pad(x, (0, 9 - len(x))) for x in texts]).astype(np.int32),
                            np.tile(np.arange(9), (3, 1)), np.stack([np.arange(9) < len(x) for x in texts]))[0])
    for i, n in enumerate(prompt_lengths):
        assert rel_err(np.stack(decoded[i]), full[i, n - 1:len(texts[i])]) <= TOL


_VARIANT_BATCH = padded_batch(CFG.vocab_size, [6, 3], 6, left=True)


def _loss_and_grads(cfg):
    """Jitted hidden states and gradients of a random projection of them (a sum of squares would be ~constant after
    the final RMSNorm)."""
    tokens, positions, mask = _VARIANT_BATCH
    probe = jax.random.normal(jax.random.key(0), (2, 6, CFG.hidden_size))
    graphdef, state = nnx.split(_model(cfg))

    def loss(state):
        hidden = nnx.merge(graphdef, state)(tokens, positions, mask)[0]
        return jnp.sum(jnp.where(mask[..., None], hidden * probe, 0.0)), hidden

    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return np.asarray(hidden)[mask], jax.tree.leaves(grads)


@functools.lru_cache(maxsize=1)
def _reference():
    return _loss_and_grads(CFG)


@pytest.mark.parametrize("variant", [dict(scan_layers=False), dict(remat="full"), dict(remat="dots")])
def test_scan_and_remat_variants_agree(variant):
    ref_hidden, ref_grads = _reference()
    hidden, grads = _loss_and_grads(dataclasses.replace(CFG, **variant))
    assert rel_err(hidden, ref_hidden) <= TOL
    assert len(grads) == len(ref_grads)
    for a, b in zip(ref_grads, grads):
        assert rel_err(b, a) <= 1e-4


def test_bfloat16_compute_is_close():
    tokens, positions, mask = padded_batch(CFG.vocab_size, [6, 3], 6, left=False)
    ref = _model()
    bf16 = _model(dataclasses.replace(CFG, param_dtype="bfloat16", compute_dtype="bfloat16"))
    out = bf16(tokens, positions, mask)[0]
    assert out.dtype == jnp.bfloat16 and bf16.logits(out[:, -1]).dtype == jnp.float32
    assert rel_err(np.asarray(out, np.float32)[mask], np.asarray(ref(tokens, positions, mask)[0])[mask]) < 0.05


def test_sharded_forward_equals_unsharded():
    """data=2, fsdp=2, tensor=2 on the 8 fake devices: jit with NamedSharding in/out shardings, donated state,
    activation constraints active; output equals the single-device forward and parameters are really split."""
    cfg = dataclasses.replace(CFG, num_heads=4, num_kv_heads=2, tie_word_embeddings=False)
    model = _model(cfg)
    tokens, positions, mask = padded_batch(cfg.vocab_size, [8, 5, 3, 6], 8, left=True)
    expected_hidden, _ = model(tokens, positions, mask)
    expected_logits = model.logits(expected_hidden[:, -1])

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    graphdef, state = nnx.split(model)
    state_sh = param_shardings(state, mesh)
    batch_sh = NamedSharding(mesh, P(("data", "fsdp"), None))
    state = jax.device_put(state, state_sh)
    q = state["layers"]["q_proj"][...]
    assert q.sharding.spec == P(None, "tensor", None, "fsdp")
    assert q.addressable_shards[0].data.shape == (cfg.num_layers, cfg.num_heads // 2, cfg.head_dim,
                                                   cfg.hidden_size // 2)

    def forward(state, tokens, positions, mask):
        with use_mesh(mesh):
            m = nnx.merge(graphdef, state)
            hidden, _ = m(tokens, positions, mask)
            return hidden, m.logits(hidden[:, -1]), state

    out_sh = (NamedSharding(mesh, P(("data", "fsdp"), None, None)), NamedSharding(mesh, P(("data", "fsdp"),
              "tensor")), state_sh)
    fn = jax.jit(forward, in_shardings=(state_sh, batch_sh, batch_sh, batch_sh), out_shardings=out_sh,
                 donate_argnums=0)
    hidden, logits, state = fn(state, tokens, positions, mask)
    assert hidden.sharding.spec == P(("data", "fsdp"), None, None)
    assert rel_err(np.asarray(hidden)[mask], np.asarray(expected_hidden)[mask]) <= TOL
    assert rel_err(logits, expected_logits) <= TOL
    # the constraint really is applied: the lowered program carries sharding annotations for activations
    assert "sharding" in fn.lower(state, tokens, positions, mask).as_text()


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "per_layer"])
def test_sharded_cache_decode_and_shard_model(per_layer):
    cfg = CFG
    model = shard_model(_model(cfg), make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    mesh = model.embed_tokens[...].sharding.mesh
    assert model.embed_tokens[...].sharding.spec == P("tensor", "fsdp")
    tokens, positions, mask = padded_batch(cfg.vocab_size, [4, 2, 3, 4], 4, left=True)
    ref_hidden, _ = _model(cfg)(tokens, positions, mask)
    cache = init_cache(cfg, batch=4, max_len=6, mesh=mesh, per_layer=per_layer)
    layer_spec = P(("data", "fsdp"), "tensor", None, None)
    if per_layer:
        assert len(cache.k) == cfg.num_layers and all(k.sharding.spec == layer_spec for k in cache.k)
    else:
        assert cache.k.sharding.spec == P(None, *layer_spec)
    graphdef, state = nnx.split(model)
    layers = split_layers(graphdef, state) if per_layer else None

    @jax.jit
    def prefill(state, layers, cache):
        with use_mesh(mesh):
            return nnx.merge(graphdef, state)(tokens, positions, mask, cache, layers=layers)

    hidden, cache = prefill(state, layers, cache)
    expected = cache_shardings(mesh, per_layer=per_layer, num_layers=cfg.num_layers).k
    for got, want in zip(jax.tree.leaves(cache.k), jax.tree.leaves(expected)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
    assert rel_err(np.asarray(hidden)[mask], np.asarray(ref_hidden)[mask]) <= TOL
