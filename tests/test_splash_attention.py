"""Splash attention (``model.attention_impl=splash``, t1_jax/model/splash.py) against the XLA attention, in Pallas
interpret mode on CPU (the real kernel code): outputs and gradients of the attention alone (causal, left/right padding,
GQA, lengths padded to several blocks), a whole-model prefill + one decode step, and the stage-1 loss and its
gradients (full-sequence passes) on the 2x2x2 mesh; block sizes, the long-document configs and the setting's
validation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t1_jax import config as cfg_lib
from t1_jax import mesh as mesh_lib
from t1_jax.model import splash
from t1_jax.model.qwen3 import attention


def test_block_sizes_padding_and_computed_fraction():
    assert [splash.choose_block(t) for t in (1, 128, 129, 320, 512, 600, 700, 2000, 4096, 8192)] == [
        128, 128, 256, 384, 512, 128, 256, 512, 512, 512]
    assert splash.choose_block(4096, override=256) == 256
    with pytest.raises(ValueError, match="multiple of 128"):
        splash.choose_block(300, override=200)
    assert splash.padded_length(200, 128, 128) == 256 and splash.padded_length(300, 256, 128) == 512
    # Tiles the kernel computes: causal ones at or below the diagonal (one block: all of it, padding included).
    assert splash.computed_fraction(4096) == pytest.approx(9 / 16)  # 8 x 8 tiles of 512, 36 computed
    assert splash.computed_fraction(512) == 1.0
    assert splash.computed_fraction(200) == pytest.approx(256 * 256 / 200 ** 2)


def _padded_mask(lengths, t, left):
    mask = np.zeros((len(lengths), t), bool)
    for row, (n, lft) in enumerate(zip(lengths, left)):
        mask[row, t - n:] = lft
        mask[row, :n] |= not lft
    return jnp.asarray(mask)


def test_splash_equals_xla_attention_outputs_and_gradients():
    # t = 200 with 128 blocks: padded to 256 = 2 x 2 tiles (one skipped above the diagonal); rows right / left
    # padded; 4 query heads over 2 key/value heads.
    b, t, n, kv, h = 2, 200, 4, 2, 16
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, t, n, h))
    k = jax.random.normal(keys[1], (b, kv, t, h))
    v = jax.random.normal(keys[2], (b, kv, t, h))
    w = jax.random.normal(keys[3], (b, t, n, h))
    mask = _padded_mask([200, 131], t, left=[False, True])
    allowed = mask[:, None, :] & (jnp.arange(t)[None, None, :] <= jnp.arange(t)[None, :, None])
    real = mask[:, :, None, None]

    def loss(impl, q, k, v):  # outputs at padded query slots are meaningless in both: left out
        out = impl(q, k, v)
        return jnp.sum(jnp.where(real, out * w, 0.0)), out

    xla = jax.jit(jax.value_and_grad(lambda *a: loss(lambda q, k, v: attention(q, k, v, allowed, jnp.float32), *a),
                                     argnums=(0, 1, 2), has_aux=True))
    ours = jax.jit(jax.value_and_grad(lambda *a: loss(lambda q, k, v: splash.splash_attention(
        q, k, v, mask, jnp.float32, block_q=128, block_kv=128), *a), argnums=(0, 1, 2), has_aux=True))
    (_, out_ref), grads_ref = xla(q, k, v)
    (_, out), grads = ours(q, k, v)
    assert out.shape == (b, t, n, h) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, out_ref, 0), atol=1e-5, rtol=0)
    for g, g_ref in zip(grads, grads_ref):  # dq at padded slots, dk / dv at padded keys: zero in both
        np.testing.assert_allclose(g, g_ref, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    cfg = cfg_lib.load_config("experiments/tiny_stage1.py", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, emb_token_id=cfg.model.vocab_size - 1))
    return cfg, mesh_lib.make_mesh(cfg.mesh)


def _with_impl(cfg, impl):
    return cfg_lib.apply_overrides(cfg, [f"model.attention_impl={impl}"])


def test_model_prefill_and_decode_equal_on_the_mesh(tiny):
    # The full-sequence pass without a cache is the stage-1 test's (with gradients); here the prefill path.
    from flax import nnx

    from t1_jax.model import Qwen3, init_cache, shard_model

    cfg, mesh = tiny
    rng = np.random.default_rng(0)
    b, t = 4, 72
    tokens = jnp.asarray(rng.integers(1, cfg.model.vocab_size, (b, t)), jnp.int32)
    mask = _padded_mask([72, 50, 9, 61], t, left=[False, True, False, True])
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    nxt = jnp.asarray(rng.integers(1, cfg.model.vocab_size, (b, 1)), jnp.int32)
    results = {}
    for impl in ("xla", "splash"):
        model = shard_model(Qwen3(_with_impl(cfg, impl).model, rngs=nnx.Rngs(0)), mesh)
        graphdef, params = nnx.split(model)

        @jax.jit
        def run(params):
            with mesh_lib.use_mesh(mesh):
                m = nnx.merge(graphdef, params)
                cache = init_cache(m.cfg, b, t + 1, mesh=mesh)
                prefill, cache = m(tokens, positions, mask, cache)
                step, _ = m(nxt, jnp.sum(mask, axis=1, keepdims=True), jnp.ones((b, 1), bool), cache)
            return prefill, step

        results[impl] = run(params)
    real = np.asarray(mask)[:, :, None]
    (prefill, step), (prefill_ref, step_ref) = results["splash"], results["xla"]
    np.testing.assert_allclose(np.where(real, prefill, 0), np.where(real, prefill_ref, 0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(step, step_ref, atol=1e-5, rtol=0)  # decode (XLA) over the prefilled cache


def test_stage1_loss_and_gradients_equal_on_the_mesh(tiny):
    from t1_jax.model.functions import model_functions
    from t1_jax.stages.contrastive import make_loss_fn

    cfg, mesh = tiny
    rng = np.random.default_rng(1)
    b, tq, td = 8, 40, 72
    n = 2 * b  # one positive and one hard negative per query: docs [q0+, q0-, q1+, ...]; 4 batch shards
    batch = {"q_ids": rng.integers(1, 500, (b, tq)), "q_valid": _padded_mask(rng.integers(5, tq, b), tq, [False] * b),
             "q_loss": np.zeros((b, tq)), "d_ids": rng.integers(1, 500, (n, td)),
             "d_valid": _padded_mask(rng.integers(5, td, n), td, [False] * n), "doc_keys": np.arange(n),
             "pos_col": np.tile([0, 2], b // 2), "pos_keys": np.stack([2 * np.arange(b)] + [-np.ones(b)] * 3, 1)}
    batch = jax.device_put({k: jnp.asarray(v, jnp.int32) for k, v in batch.items()},
                           {k: mesh_lib.logical_sharding(mesh, ("batch",) + (None,) * (np.ndim(v) - 1))
                            for k, v in batch.items()})
    results = {}
    for impl in ("xla", "splash"):
        c = _with_impl(cfg, impl)
        graphdef, init_params, shardings = model_functions(c, mesh)
        params = jax.jit(init_params, out_shardings=shardings)(jax.random.key(0))
        with mesh_lib.use_mesh(mesh):
            results[impl] = jax.jit(jax.value_and_grad(make_loss_fn(c, graphdef, mesh), has_aux=True))(
                params, batch, jax.random.key(1))
    (loss, _), grads = results["splash"]
    (loss_ref, _), grads_ref = results["xla"]
    assert abs(float(loss) - float(loss_ref)) <= 1e-5 * abs(float(loss_ref))
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, atol=1e-5 * float(jnp.max(jnp.abs(g_ref))), rtol=0)


def test_attention_impl_is_validated():
    with pytest.raises(cfg_lib.ConfigError, match="model.attention_impl must be one of xla, splash; got 'flash'"):
        cfg_lib.validate(cfg_lib.load_config("experiments/tiny_stage1.py", ["model.attention_impl=flash"]))
    with pytest.raises(cfg_lib.ConfigError, match="did you mean model.attention_impl"):
        cfg_lib.load_config("experiments/tiny_stage1.py", ["model.attention_imp=splash"])
    with pytest.raises(cfg_lib.ConfigError, match="model.splash_block_q must be 0"):
        cfg_lib.validate(cfg_lib.load_config("experiments/tiny_stage1.py", ["model.splash_block_q=100"]))


def test_long_document_experiments_and_their_flops():
    from t1_jax import compile_check, compile_encode
    from t1_jax.commands.compile_check import experiment_kind
    from t1_jax.data.batch_spec import padded_lengths

    stage1 = cfg_lib.validate(cfg_lib.load_config("experiments/t1_4b_stage1_longdoc.py"), 4, training=True)
    bright = cfg_lib.validate(cfg_lib.load_config("experiments/t1_4b_eval_bright_longdoc.py"), 4)
    assert stage1.model.attention_impl == bright.model.attention_impl == "splash"
    assert padded_lengths(stage1, "query_direct") == (320, 4096)
    assert experiment_kind("experiments/t1_4b_eval_bright_longdoc.py") == "encode"
    assert compile_encode.encode_length(bright) == 8192 and bright.text.max_doc_tokens >= 8192
    # The roofline counts the tiles splash computes: 36 of 64 at 4096 tokens, all of one 384-token query block.
    xla = compile_check.contrastive_flops(_with_impl(stage1, "xla"), "query_direct")
    ours = compile_check.contrastive_flops(stage1, "query_direct")
    assert ours.layers == xla.layers and ours.attention < xla.attention
    m, b = stage1.model, stage1.data.global_batch_size
    dense_docs = 3 * 4 * m.num_layers * m.num_heads * m.head_dim * 4096 * (2 * b * 4096)
    dense_queries = xla.attention - dense_docs
    assert ours.attention == pytest.approx(dense_queries * 384 ** 2 / 320 ** 2 + dense_docs * 9 / 16)


def test_grpo_flops_count_splash_tiles_for_full_sequence_passes_only():
    from t1_jax import compile_check

    stage3 = cfg_lib.load_config("experiments/t1_4b_stage3_grpo.py")
    xla_rollout, xla_step = compile_check.grpo_flops(_with_impl(stage3, "xla"))
    splash_rollout, splash_step = compile_check.grpo_flops(_with_impl(stage3, "splash"))
    assert splash_rollout == xla_rollout  # prefill and decode: the XLA path, counted dense
    assert splash_step.layers == xla_step.layers and 0 < splash_step.attention < xla_step.attention
