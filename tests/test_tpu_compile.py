"""t1_jax.tpu: topology parsing, chip table, analytic FLOPs vs XLA, and AOT compiles for real TPU topologies.

The TPU compiles use compile-only devices from libtpu (``jax.experimental.topologies``); they work in this process
although conftest sets ``JAX_PLATFORMS=cpu`` (checked below: the 8 fake CPU devices stay the default backend).
They are skipped, with the reason, only when libtpu is not importable.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from t1_jax import tpu
from t1_jax.model import counts
from t1_jax.config import MeshConfig, ModelConfig
from t1_jax.mesh import logical_sharding, logical_to_spec

needs_libtpu = pytest.mark.skipif(not tpu.libtpu_available(),
                                  reason="libtpu is not installed (pip install -e '.[tpu]'); TPU compiles need it")

GiB = 1024 ** 3


# --------------------------------------------------------------------------------------------------------------------
# Topologies and chips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, chip, chips, shape, accel", [
    ("v5p-8", "v5p", 4, "2x2x1", "v5p-8"),
    ("v5p-16", "v5p", 8, "2x2x2", "v5p-16"),
    ("v5p-64", "v5p", 32, "2x4x4", "v5p-64"),
    ("v5p-128", "v5p", 64, "4x4x4", "v5p-128"),
    ("v5p-256", "v5p", 128, "4x4x8", "v5p-256"),
    ("v4-8", "v4", 4, "2x2x1", "v4-8"),
    ("v4-32", "v4", 16, "2x2x4", "v4-32"),
    ("v4-1024", "v4", 512, "8x8x8", "v4-1024"),
    ("v5e-16", "v5e", 16, "4x4", "v5litepod-16"),
    ("v5litepod-16", "v5e", 16, "4x4", "v5litepod-16"),
    ("v5litepod-8", "v5e", 8, "2x4", "v5litepod-8"),
    ("v6e-256", "v6e", 256, "16x16", "v6e-256"),
    ("v5p:4x4x12", "v5p", 192, "4x4x12", "v5p-384"),
    ("V5P-8", "v5p", 4, "2x2x1", "v5p-8"),
])
def test_parse_topology(name, chip, chips, shape, accel):
    spec = tpu.parse_topology(name)
    assert (spec.chip.name, spec.chips, spec.topology, spec.accelerator_type) == (chip, chips, shape, accel)
    assert spec.jax_topology_name == f"{chip}:{shape}"


@pytest.mark.parametrize("name, message", [
    ("v7x-8", "unknown TPU generation"),
    ("v5p-7", "multiple of 2"),
    ("v5p-24", "no standard v5p layout for 12 chips"),
    ("v5e-12", "no standard v5e layout"),
    ("v5p:2x2", "3-D"),
    ("v5e:2x2x1", "2-D"),
    ("tpu", "cannot parse"),
    ("v4-0", "positive"),
])
def test_parse_topology_errors(name, message):
    with pytest.raises(ValueError, match=message):
        tpu.parse_topology(name)


def test_chip_table_matches_published_figures():
    # Google's per-chip figures (docs/tpu.md cites the pages): HBM and peak dense bf16.
    assert tpu.chip_spec("v4").hbm_bytes == 32 * GiB and tpu.chip_spec("v4").peak_bf16_flops == 275e12
    assert tpu.chip_spec("v5litepod").hbm_bytes == 16 * GiB and tpu.chip_spec("v5e").peak_bf16_flops == 197e12
    assert tpu.chip_spec("v5p").hbm_bytes == 95 * GiB and tpu.chip_spec("v5p").peak_bf16_flops == 459e12
    assert tpu.chip_for_device_kind("TPU v5 lite").name == "v5e"
    assert tpu.chip_for_device_kind("TPU v5").name == "v5p"
    assert tpu.chip_for_device_kind("cpu") is None
    spec = tpu.parse_topology("v5p-64")
    assert spec.hbm_bytes_total == 32 * 95 * GiB and spec.peak_flops_total == 32 * 459e12


def test_roofline_seconds():
    assert tpu.roofline_seconds(459e12 * 4 * 2.5, chips=4, peak=459e12) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        tpu.roofline_seconds(1.0, chips=0, peak=1.0)


# --------------------------------------------------------------------------------------------------------------------
# An unscanned, matmul-only Qwen3-shaped decoder (GQA attention without softmax, gated MLP, tied LM head)
# --------------------------------------------------------------------------------------------------------------------

CFG = ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=3, num_heads=8, num_kv_heads=4,
                  head_dim=32)
B, T = 4, 128
REMAT = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
         "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _init(key, cfg=CFG):
    d, h, n, k, f = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    shapes = dict(q=(d, n, h), k=(d, k, h), v=(d, k, h), o=(n, h, d), gate=(d, f), up=(d, f), down=(f, d))
    keys = iter(jax.random.split(key, 1 + len(shapes) * cfg.num_layers))
    layers = [{name: 0.02 * jax.random.normal(next(keys), s) for name, s in shapes.items()}
              for _ in range(cfg.num_layers)]
    return dict(embed=0.02 * jax.random.normal(next(keys), (cfg.vocab_size, d)), layers=layers)


LOGICAL = dict(q=("embed", "heads", None), k=("embed", "kv_heads", None), v=("embed", "kv_heads", None),
               o=("heads", None, "embed"), gate=("embed", "mlp"), up=("embed", "mlp"), down=("mlp", "embed"))


def _layer(p, x_btd, cfg=CFG):
    k, g = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, p["q"])
    k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, p["k"])
    v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, p["v"])
    q_btkgh = q_btnh.reshape(*q_btnh.shape[:2], k, g, cfg.head_dim)
    s_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_btkh) * cfg.head_dim ** -0.5
    a_btkgh = jnp.einsum("bkgts,bskh->btkgh", s_bkgts, v_btkh)
    x_btd = x_btd + jnp.einsum("btnh,nhd->btd", a_btkgh.reshape(q_btnh.shape), p["o"])
    m_btf = jax.nn.silu(x_btd @ p["gate"]) * (x_btd @ p["up"])
    return x_btd + m_btf @ p["down"]


def _loss(params, tokens_bt, remat="none"):
    x_btd = params["embed"][tokens_bt]
    layer = _layer if remat == "none" else jax.checkpoint(_layer, policy=REMAT[remat])
    for p in params["layers"]:  # unscanned on purpose: cost_analysis counts a scanned body once
        x_btd = layer(p, x_btd)
    logits_btv = jnp.einsum("btd,vd->btv", x_btd, params["embed"])
    return jnp.mean(logits_btv ** 2)


def _abstract(mesh=None):
    params = jax.eval_shape(_init, jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
    if mesh is None:
        return params, tokens

    def shard(path, leaf):
        name = path[-1].key
        axes = ("vocab", "embed") if name == "embed" else LOGICAL[name]
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=logical_sharding(mesh, axes))

    params = jax.tree_util.tree_map_with_path(shard, params)
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=logical_sharding(mesh, ("batch", "length")))
    return params, tokens


def test_layer_params_counts_every_projection():
    params = _init(jax.random.key(0))
    counted = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params["layers"][0]))
    assert counts.layer_params(CFG) == counted
    flops = counts.decoder_flops(CFG, tokens=B * T, seq_len=T, training=True, remat="none")
    assert flops.layers == 6 * CFG.num_layers * counted * B * T  # the 6·params·tokens rule


def test_flops_per_token_on_the_model_config():
    """``ModelConfig.flops_per_token`` (benchmarks/bench_forward.py) is decoder_flops of one token: projections, MLP
    and full attention, 2 FLOPs per multiply-add (the benchmark's former closed form)."""
    d, f, n, k, h = CFG.hidden_size, CFG.intermediate_size, CFG.num_heads, CFG.num_kv_heads, CFG.head_dim
    closed_form = CFG.num_layers * (2 * d * (2 * n * h + 2 * k * h) + 2 * 3 * d * f + 2 * 2 * n * T * h)
    assert CFG.flops_per_token(T, training=False) == closed_form
    assert CFG.flops_per_token(T) == counts.decoder_flops(CFG, 1, T).total


@pytest.mark.parametrize("training, remat, tolerance", [
    (False, "none", 0.02),
    (True, "none", 0.02),
    (True, "dots", 0.02),
    # XLA prunes a little more of a full recompute than JAX emits; the formula is an upper bound there.
    (True, "full", 0.04),
])
def test_decoder_flops_matches_xla_cost_analysis(training, remat, tolerance):
    params, tokens = _abstract()
    fn = jax.value_and_grad(_loss) if training else _loss
    compiled = jax.jit(fn, static_argnums=2).lower(params, tokens, remat).compile()
    xla = tpu._flops_from_cost(compiled.cost_analysis())
    analytic = counts.decoder_flops(CFG, tokens=B * T, seq_len=T, training=training, remat=remat,
                                 lm_head_tokens=B * T).total
    assert xla == pytest.approx(analytic, rel=tolerance)
    if remat == "full":
        assert xla <= analytic * 1.001


def test_decoder_flops_rejects_bad_values():
    with pytest.raises(ValueError, match="remat"):
        counts.decoder_flops(CFG, 8, 8, remat="some")
    with pytest.raises(ValueError, match="seq_len"):
        counts.decoder_flops(CFG, 8, 0)


# --------------------------------------------------------------------------------------------------------------------
# Compile-only TPU devices (libtpu)
# --------------------------------------------------------------------------------------------------------------------


@needs_libtpu
@pytest.mark.parametrize("name, kind, count", [("v5p-8", "TPU v5", 4), ("v4-8", "TPU v4", 4),
                                               ("v5e-16", "TPU v5 lite", 16), ("v5p-64", "TPU v5", 32)])
def test_abstract_mesh_devices(name, kind, count):
    devices = tpu.abstract_mesh_devices(name)
    assert len(devices) == count
    assert {d.device_kind for d in devices} == {kind}
    assert tpu.chip_for_device_kind(kind) is tpu.parse_topology(name).chip
    # the CPU test backend is untouched
    assert jax.default_backend() == "cpu" and jax.device_count() == 8


def _train_step(params, tokens_bt):
    loss, grads = jax.value_and_grad(_loss)(params, tokens_bt)
    return loss, jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads)


@needs_libtpu
@pytest.mark.parametrize("topology", ["v5p-8", "v4-8"])
def test_compile_report_for_sharded_train_step(topology):
    mesh = tpu.topology_mesh(topology, MeshConfig(data=2, fsdp=2, tensor=1))
    assert mesh.shape == {"data": 2, "fsdp": 2, "tensor": 1}
    params, tokens = _abstract(mesh)
    step = jax.jit(_train_step, donate_argnums=0)
    report, compiled = tpu.compile_report(step, (params, tokens))
    chip = tpu.parse_topology(topology).chip

    # Arguments are exactly the per-device shards: every weight is split over fsdp (embed dim), tokens over 4 shards.
    param_bytes = sum(int(np.prod(a.shape)) * 4 for a in jax.tree_util.tree_leaves(params))
    assert report.argument_bytes == param_bytes // 2 + B * T * 4 // 4
    assert report.output_bytes >= param_bytes // 2  # updated params (+ the scalar loss)
    assert report.alias_bytes >= param_bytes // 2  # donated params are reused in place
    assert 0 <= report.temp_bytes < 64 * 1024 ** 2  # (v4 reports no separate temporaries for this step)
    assert report.chip == chip.name and report.hbm_bytes == chip.hbm_bytes and report.num_devices == 4
    assert report.fits and report.overflow_gib == 0.0
    assert report.total_bytes == (report.argument_bytes + report.output_bytes - report.alias_bytes
                                  + report.temp_bytes + report.generated_code_bytes)
    assert "fits" in report.format() and chip.name in report.format()
    for sharding, leaf in zip(jax.tree_util.tree_leaves(compiled.input_shardings[0][0]),
                              jax.tree_util.tree_leaves(params)):
        assert sharding.spec == leaf.sharding.spec

    # With FSDP the partitioner may duplicate some work on these toy shapes, so XLA's count can only be larger.
    analytic = counts.decoder_flops(CFG, tokens=B * T, seq_len=T, training=True, remat="none", lm_head_tokens=B * T)
    assert report.xla_flops_per_device * report.num_devices >= 0.99 * analytic.total


@needs_libtpu
def test_tpu_compiled_flops_match_analytic_under_data_parallelism():
    # Pure data parallelism duplicates nothing: per-device XLA FLOPs x devices = the analytic step FLOPs
    # (+ the SGD update and the loss reduction, well under 1%).
    mesh = tpu.topology_mesh("v5p-8", MeshConfig(data=4, fsdp=1, tensor=1))
    report, _ = tpu.compile_report(jax.jit(_train_step), _abstract(mesh))
    analytic = counts.decoder_flops(CFG, tokens=B * T, seq_len=T, training=True, remat="none", lm_head_tokens=B * T)
    assert report.xla_flops_per_device * report.num_devices == pytest.approx(analytic.total, rel=0.02)


@needs_libtpu
def test_compile_report_flags_overflow():
    devices = tpu.abstract_mesh_devices("v5e-4")
    mesh = jax.sharding.Mesh(np.asarray(devices).reshape(4), ("data",))
    # 10 GiB per device in, 10 GiB out: 20 GiB > 16 GiB of v5e HBM.
    big = jax.ShapeDtypeStruct((4, 2560, 1024 * 1024), jnp.float32,
                               sharding=NamedSharding(mesh, logical_to_spec(["batch", None, None], (("batch", "data"),))))
    report, compiled = tpu.compile_report(jax.jit(lambda x: x * 2), (big,))
    # The TPU compiler itself refuses the program; the report carries its numbers (usable HBM 15.75 GiB on v5e).
    assert compiled is None and "RESOURCE_EXHAUSTED" in report.compile_error
    assert report.chip == "v5e" and report.fits is False
    assert report.total_bytes == 20 * GiB and report.hbm_bytes == int(15.75 * GiB)
    assert report.overflow_gib == pytest.approx(4.25)
    assert "DOES NOT FIT: over by 4.250 GiB" in report.format()


def test_parse_compiler_oom_message():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(19.54G) exceeds available HBM (15.75G).")
    assert tpu._parse_oom(message) == (int(19.54 * GiB), int(15.75 * GiB))
    assert tpu._parse_oom("INVALID_ARGUMENT: something else") is None


def test_unknown_chip_has_no_verdict():
    cpu_report, _ = tpu.compile_report(jax.jit(lambda x: x + 1), (jax.ShapeDtypeStruct((8,), jnp.float32),))
    assert cpu_report.chip is None and cpu_report.fits is None and cpu_report.overflow_gib == 0.0
    explicit, _ = tpu.compile_report(jax.jit(lambda x: x + 1), (jax.ShapeDtypeStruct((8,), jnp.float32),),
                                     chip=dataclasses.replace(tpu.chip_spec("v4"), hbm_bytes=1))
    assert explicit.fits is False


@needs_libtpu
def test_compile_for_a_multi_host_slice():
    # v4-32 = 16 chips on 4 hosts: one process compiles the program that every host would run.
    devices = tpu.abstract_mesh_devices("v4-32")
    assert sorted({d.process_index for d in devices}) == [0, 1, 2, 3]
    mesh = tpu.topology_mesh("v4-32", MeshConfig(data=4, fsdp=4, tensor=1))
    d, f, b = 512, 2048, 64
    w_df = jax.ShapeDtypeStruct((d, f), jnp.float32, sharding=logical_sharding(mesh, ("embed", "mlp")))
    w_fd = jax.ShapeDtypeStruct((f, d), jnp.float32, sharding=logical_sharding(mesh, ("mlp", "embed")))
    x_bd = jax.ShapeDtypeStruct((b, d), jnp.bfloat16, sharding=logical_sharding(mesh, ("batch", "embed")))

    def step(w1, w2, x):
        def loss(w1, w2):
            return jnp.mean(jnp.tanh(x.astype(jnp.float32) @ w1) @ w2)
        grads = jax.grad(loss, argnums=(0, 1))(w1, w2)
        return w1 - grads[0], w2 - grads[1]

    report, _ = tpu.compile_report(jax.jit(step), (w_df, w_fd, x_bd))
    assert report.num_devices == 16 and report.chip == "v4" and report.fits
    # weights split 4 ways over fsdp (embed dim), the batch 16 ways over data x fsdp
    assert report.argument_bytes == 2 * d * f * 4 // 4 + b * d * 2 // 16


def test_format_step_estimate():
    spec = tpu.parse_topology("v5p-8")
    flops = counts.FlopCount(layers=4 * 459e12 * 0.75, attention=4 * 459e12 * 0.25, lm_head=0.0, recompute=0.0)
    text = tpu.format_step_estimate(flops, spec, tokens=8192)
    assert "FLOPs per step: 1.836e+15" in text
    assert "459 TFLOP/s x 4 chips: 1000.00 ms -> at most 8,192 tokens/s" in text
