"""``t1 compile-check`` for generation (t1_jax/compile_generate.py): the sampler's prefill and decode loop compiled for
compile-only TPU devices, the decode roofline against a hand computation, the prefill's output shardings, the
Qwen3-14B/32B presets against their published config.json and parameter counts, and the 32B teacher experiment."""
import dataclasses
import json

import pytest

from t1_jax import compile_generate, config as config_lib, layouts, tpu
from t1_jax.cli import main
from t1_jax.model.presets import PRESETS, from_hf_config
from t1_jax.model.counts import param_count

needs_libtpu = pytest.mark.skipif(not tpu.libtpu_available(),
                                  reason="libtpu is not installed (pip install -e '.[tpu]'); TPU compiles need it")

# Hugging Face config.json of Qwen/Qwen3-14B and Qwen/Qwen3-32B (the fields the port reads; sources in docs/tpu.md).
_QWEN3_HF = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "head_dim": 128,
             "hidden_act": "silu", "attention_bias": False, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
             "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "use_sliding_window": False,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645}
HF_CONFIGS = {
    "qwen3-14b": {**_QWEN3_HF, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 8},
    "qwen3-32b": {**_QWEN3_HF, "hidden_size": 5120, "intermediate_size": 25600, "num_hidden_layers": 64,
                  "num_attention_heads": 64, "num_key_value_heads": 8},
}
# The model cards' "Number of Parameters" and "(Non-Embedding)", in billions (rounded to 0.1B there).
PUBLISHED_PARAMS = {"qwen3-14b": (14.8, 13.2), "qwen3-32b": (32.8, 31.2)}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_teacher_presets_are_the_published_configs(name):
    expected, preset = from_hf_config(HF_CONFIGS[name]), PRESETS[name]
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
              "rope_theta", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "param_dtype")
    assert {f: getattr(preset, f) for f in fields} == {f: getattr(expected, f) for f in fields}
    total, non_embedding = PUBLISHED_PARAMS[name]
    count = param_count(preset)
    embeddings = 2 * preset.vocab_size * preset.hidden_size + preset.hidden_size  # untied: table + LM head, final norm
    assert abs(count / 1e9 - total) <= 0.05 and abs((count - embeddings) / 1e9 - non_embedding) <= 0.05


def test_hbm_bandwidths_are_googles_figures():
    assert {name: spec.hbm_bandwidth for name, spec in tpu.CHIPS.items()} == {
        "v4": 1200e9, "v5e": 819e9, "v5p": 2765e9, "v6e": 1638e9}


def test_teacher_experiment_layouts(monkeypatch):
    path = "experiments/qwen3_32b_teacher_generate.py"
    from t1_jax.commands.compile_check import experiment_kind

    assert experiment_kind(path) == compile_generate.KIND and experiment_kind("experiments/tiny_stage1.py") is None
    import importlib.util

    spec = importlib.util.spec_from_file_location("teacher_layouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {"v5p-8", "v4-32"} <= set(module.LAYOUTS)
    for topology in module.LAYOUTS:
        monkeypatch.setenv(layouts.TOPOLOGY_ENV, topology)
        cfg = config_lib.validate(config_lib.load_config(path), device_count=tpu.parse_topology(topology).chips)
        m = cfg.model
        assert dataclasses.replace(m, remat="none") == dataclasses.replace(PRESETS["qwen3-32b"], remat="none")
        # decoding reads what each chip multiplies by: weights split by tensor parallelism only, over whole KV heads
        assert cfg.mesh.fsdp == 1 and m.num_kv_heads % cfg.mesh.tensor == 0
        assert compile_generate.prompt_length(cfg) == 1024 and cfg.sampling.max_new_tokens == 512


def test_prefill_output_shardings_are_the_compiled_prefills():
    """The decode program's cache/logits/lengths shardings (assigned, not compiled) equal what the prefill emits."""
    import jax
    import jax.numpy as jnp

    from t1_jax import mesh as mesh_lib, sampler
    from t1_jax.config import MeshConfig
    from t1_jax.model.cache import KVCache

    cfg = config_lib.load_config("experiments/tiny_stage1.py", ["text.max_query_tokens=16", "sampling.prompt_buckets=[16]",
                                                               "sampling.max_new_tokens=4"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, emb_token_id=3))
    mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    programs = compile_generate.generate_programs(cfg, mesh)
    prefill = programs[0]
    with mesh_lib.use_mesh(mesh):
        compiled = prefill.fn.lower(*prefill.args).compile()
    outputs = compiled.output_shardings
    expected = compile_generate.prefill_output_shardings(mesh, cfg.model.num_layers)
    shapes = jax.eval_shape(lambda *a: sampler._prefill(*a, **prefill.fn.kwargs), *prefill.args)
    pairs = zip(jax.tree_util.tree_leaves(outputs), jax.tree_util.tree_leaves(expected),
                jax.tree_util.tree_leaves(shapes))
    for got, want, shape in pairs:
        assert got.is_equivalent_to(want, len(shape.shape)), (got, want)
    # and the decode program receives exactly these
    decode = programs[1]
    cache = next(a for a in decode.args if isinstance(a, KVCache))
    logits = decode.args[decode.args.index(cache) + 1]
    assert [k.sharding for k in jax.tree_util.tree_leaves(cache.k)] == jax.tree_util.tree_leaves(expected[0].k)
    assert logits.sharding == expected[1]
    k0 = jax.tree_util.tree_leaves(cache.k)[0]
    assert k0.dtype == jnp.float32 and cache.max_len == k0.shape[-2] == 16 + 4 + 1


@needs_libtpu
def test_tiny_generation_compiles_for_v5p8_with_the_decode_roofline(tmp_path, capsys):
    # An experiment that selects the generation programs itself (COMPILE_CHECK), on the tiny model.
    experiment = tmp_path / "tiny_generate.py"
    experiment.write_text("import importlib.util\nCOMPILE_CHECK = 'generate'\n"
                          "spec = importlib.util.spec_from_file_location('tiny1', 'experiments/tiny_stage1.py')\n"
                          "tiny = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(tiny)\n"
                          "get_config = tiny.get_config\n")
    out = tmp_path / "report.json"
    code = main(["compile-check", "--config", str(experiment), "--topology", "v5p-8", "--json", str(out), "--set",
                 "mesh.data=2", "mesh.fsdp=1", "mesh.tensor=2", "text.max_query_tokens=40",
                 "sampling.prompt_buckets=[64]", "sampling.max_new_tokens=16"])
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads(out.read_text())
    assert report["stage"] == "generate" and report["fits"] and [p["name"] for p in report["programs"]] == [
        "prefill", "decode"]
    prefill, decode = report["programs"]
    m = config_lib.load_config("experiments/tiny_stage1.py").model  # float32, tied, 2 layers
    b, tp, tensor, batch_shards = 8, 64, 2, 2
    cache_len = tp + 16 + 1
    assert m.tie_word_embeddings and m.compute_dtype == m.param_dtype == "float32"
    # By hand: every matrix split over tensor (q/o over heads, k/v over KV heads, MLP, vocab), norms replicated;
    # the tied embedding is the LM head, read whole (its shard) every step.
    d, f, n, k, h, v, layers = (m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads, m.head_dim,
                                m.vocab_size, m.num_layers)
    layer_matrices = d * h * (2 * n + 2 * k) + 3 * d * f
    weights = 4 * (layers * (layer_matrices // tensor + 2 * d + 2 * h) + v * d // tensor + d)
    kv = 4 * 2 * layers * (b // batch_shards) * cache_len * (k // tensor) * h + (b // batch_shards) * cache_len + 4
    step_flops = 2 * b * (layers * layer_matrices + d * v) + 4 * layers * n * h * cache_len * b
    roofline = decode["detail"]
    assert (roofline["weight_bytes"], roofline["kv_bytes"], roofline["step_flops"]) == (weights, kv, step_flops)
    memory_s, compute_s = (weights + kv) / 2765e9, step_flops / (4 * 459e12)
    assert roofline["memory_seconds"] == pytest.approx(memory_s) and roofline["compute_seconds"] == pytest.approx(
        compute_s)
    assert roofline["bound"] == "memory" and roofline["step_seconds"] == pytest.approx(max(memory_s, compute_s))
    assert roofline["tokens_per_second"] == pytest.approx(b / memory_s)
    prefill_s = max((weights + kv) / 2765e9, prefill["flops"]["total"] / (4 * 459e12))
    assert roofline["generation_seconds"] == pytest.approx(prefill_s + 17 * memory_s)
    # The decode loop updates the donated cache in place: the outputs alias at least the cache's bytes.
    assert decode["memory"]["alias_bytes"] >= kv - 4 and decode["breakdown_bytes"]["KV cache (donated)"] == kv
    assert decode["flops"]["total"] == step_flops and decode["tokens"] == b and prefill["tokens"] == b * tp
    for needle in ("[prefill] 8 prompts x 64 tokens into a KV cache of 81", "[decode] decoding loop: up to 17 steps",
                   "decode roofline per step and chip", "-> memory-bound", "result: fits"):
        assert needle in text
