"""``t1 compile-check``: the real stage-1/2 train steps compiled for compile-only TPU devices (libtpu) on this host,
the report's fields, the non-zero exit on a config that cannot fit, the layout tables of the 4B experiments, and the
stage-3 hook. TPU compiles are skipped, with the reason, only when libtpu is not installed."""
import json

import pytest

from t1_jax import compile_check, config as config_lib, layouts, tpu
from t1_jax.cli import main

needs_libtpu = pytest.mark.skipif(not tpu.libtpu_available(),
                                  reason="libtpu is not installed (pip install -e '.[tpu]'); TPU compiles need it")

GiB = 1024 ** 3
SMALL = ["text.max_query_tokens=40", "text.max_doc_tokens=64", "data.length_buckets=64"]


@needs_libtpu
def test_tiny_stage2_compiles_for_v5p8_through_the_command(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["compile-check", "--config", "experiments/tiny_stage2.py", "--topology", "v5p-8", "--json", str(out),
                 "--set", *SMALL, "text.max_reasoning_tokens=20", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=1"])
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads(out.read_text())
    assert (report["topology"], report["chips"], report["chip"], report["fits"]) == ("v5p-8", 4, "v5p", True)
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    (program,) = report["programs"]
    memory = program["memory"]
    assert program["name"] == "train step" and memory["hbm_bytes"] == 95 * GiB and memory["fits"]
    # Arguments: the train state (params + 2 AdamW moments, float32, sharded over fsdp x data... at least / 4) and the
    # batch; the donated state is aliased by the outputs.
    cfg = config_lib.load_config("experiments/tiny_stage2.py")
    from t1_jax.model.counts import param_count

    state_bytes = 3 * param_count(cfg.model) * 4
    assert state_bytes / 4 * 0.9 <= memory["argument_bytes"] <= state_bytes * 1.1
    assert memory["alias_bytes"] >= 0.5 * state_bytes / 4 and memory["temp_bytes"] > 0
    assert memory["total_bytes"] == (memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
                                     + memory["temp_bytes"] + memory["generated_code_bytes"])
    # By role (t1_jax.chip_memory): float32 masters, two float32 moments, the batch: together the arguments, which
    # XLA lays out in TPU tiles (8 x 128), so this model's narrow arrays take up to about twice their bytes there.
    parts = program["breakdown_bytes"]
    assert parts["moments"] == pytest.approx(2 * parts["masters"], rel=0.01)
    assert 0.5 * memory["argument_bytes"] <= parts["masters"] + parts["moments"] + parts["batch"] <= memory[
        "argument_bytes"]
    assert parts["gradients (est.)"] == parts["masters"] and parts["activations and the rest"] > 0
    # Query = prompt 40 + reasoning 20 + <embtoken> = 61 -> bucket 64; documents 64: tokens = 8*64 + 16*64.
    assert program["tokens"] == 8 * 64 + 16 * 64
    flops = program["flops"]
    assert flops["lm_head"] > 0 and flops["attention"] > 0 and flops["total"] == pytest.approx(
        flops["layers"] + flops["attention"] + flops["lm_head"] + flops["recompute"])
    assert program["roofline_seconds"] == pytest.approx(flops["total"] / (4 * 459e12))
    assert program["tokens_per_second"] == pytest.approx(program["tokens"] / program["roofline_seconds"])
    for needle in ("per-device memory (4 devices, v5p)", "FLOPs per step", "roofline step time", "result: fits",
                   "global batch 8 queries x 64 tokens + 16 documents x 64 tokens (prompt + reasoning)",
                   "per-chip by role: masters"):
        assert needle in text


@needs_libtpu
def test_config_that_cannot_fit_exits_nonzero_with_the_overflow(capsys):
    # v5e-4 (16 GiB chips) and an absurd batch: 65536 queries + 131072 documents of 64 tokens per step.
    code = main(["compile-check", "--config", "experiments/tiny_stage1.py", "--topology", "v5e-4", "--set", *SMALL,
                 "mesh.data=4", "mesh.fsdp=1", "mesh.tensor=1", "data.global_batch_size=65536"])
    captured = capsys.readouterr()
    assert code == 1
    assert "DOES NOT FIT" in captured.out
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith("t1 compile-check: tiny-stage1 does not fit v5litepod-4: over by ")
    over = float(message.split("over by ")[1].split(" GiB")[0])
    assert over > 1.0


@needs_libtpu
def test_tiny_stage3_step_and_rollout_compile_for_v5p8(capsys):
    code = main(["compile-check", "--config", "experiments/tiny_stage3_grpo.py", "--topology", "v5p-8",
                 "--set", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=1", "data.length_buckets=64"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[train step] 4 queries x 4 rollouts, prompt 64 + up to 17 generated tokens" in out
    assert "[rollout] 16 sequences: prefill 64 + 17 decoding steps" in out
    assert out.count("per-device memory (4 devices, v5p)") == 2 and "result: fits" in out


def test_padded_lengths_follow_the_pipeline():
    import dataclasses

    cfg = config_lib.load_config("experiments/t1_4b_stage2.py")  # length_buckets (512, 832)
    from t1_jax.data.batch_spec import padded_lengths
    from t1_jax.stages.registry import STAGES

    assert padded_lengths(cfg, "query_direct") == (512, 512)  # 256 + 1 -> bucket 512
    assert padded_lengths(cfg, "query_with_reasoning") == (832, 512)  # 256 + 512 + 1 -> 832
    assert padded_lengths(cfg, "query_prompt") == (512, 512)  # 256, no <embtoken>
    unbucketed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, length_buckets=()))
    assert padded_lengths(unbucketed, "query_direct") == (320, 512)  # multiples of 64
    assert padded_lengths(unbucketed, "query_prompt") == (256, 512)
    shapes = STAGES["reasoning"].batch_spec(cfg)
    b = cfg.data.global_batch_size
    assert shapes["q_ids"][0] == (b, 832) and shapes["d_ids"][0] == (2 * b, 512)
    assert shapes["pos_keys"][0] == (b, cfg.data.max_positives)


def test_gradcache_and_reasoning_flops_accounting():
    cfg = config_lib.load_config("experiments/tiny_stage2.py", SMALL + ["text.max_reasoning_tokens=20"])
    base = compile_check.contrastive_flops(cfg, "query_with_reasoning")
    stage1 = compile_check.contrastive_flops(cfg, "query_direct")
    assert stage1.lm_head == 0 and base.lm_head > 0
    # The CE's rematerialised logits: one extra forward of the LM head over every query position (8 x 63 -> 64).
    m = cfg.model
    assert base.recompute == pytest.approx(2 * m.hidden_size * m.vocab_size * 8 * 64)
    gc = compile_check.contrastive_flops(config_lib.apply_overrides(cfg, ["loss.gradcache_chunk=4"]),
                                     "query_with_reasoning")
    forward = (base.layers + base.attention + base.lm_head) / 3
    assert gc.recompute - base.recompute == pytest.approx(forward)


def _layout_rows(name: str) -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"layouts_{name}", f"experiments/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.LAYOUTS)


def test_4b_layout_tables(monkeypatch):
    from t1_jax.data.batch_spec import padded_lengths
    from t1_jax.stages.registry import STAGES

    rows = {name: _layout_rows(name) for name in ("t1_4b_stage1", "t1_4b_stage2", "t1_4b_stage3_grpo",
                                                  "t1_4b_eval_bright")}
    # Every training stage has a row for the three slice families' common sizes; v4-8 (4 x 32 GiB) cannot hold
    # stages 1-2 with float32 masters (docs/tpu.md), which start at v4-16.
    for name in ("t1_4b_stage1", "t1_4b_stage2", "t1_4b_stage3_grpo"):
        assert {"v4-32", "v5litepod-16", "v5p-8", "v5p-64"} <= set(rows[name]), name
    assert "v4-8" in rows["t1_4b_stage3_grpo"] and "v4-16" in rows["t1_4b_stage1"] and "v4-16" in rows["t1_4b_stage2"]
    for name, topologies in rows.items():
        for topology in topologies:
            monkeypatch.setenv(layouts.TOPOLOGY_ENV, topology)
            cfg = config_lib.load_config(f"experiments/{name}.py")
            chips = tpu.parse_topology(topology).chips
            config_lib.validate(cfg, device_count=chips)  # the mesh uses every chip; the batch splits evenly
            assert cfg.mesh.data * cfg.mesh.fsdp * cfg.mesh.tensor == chips
            chunk, shards = cfg.loss.gradcache_chunk, cfg.mesh.data * cfg.mesh.fsdp
            assert not chunk or (chunk % shards == 0 and cfg.data.global_batch_size % chunk == 0)  # splits evenly
            assert cfg.model.compute_dtype == "bfloat16" and cfg.model.num_layers == 36
            if name != "t1_4b_eval_bright":  # training: float32 masters, accepted by the precision policy
                assert cfg.model.param_dtype == "float32"
                config_lib.validate(cfg, device_count=chips, training=True)
                # A few explicit padded lengths: a single-host run compiles the 4B step once per shape, not per 64
                # tokens; the longest of those the budgets use is the shape the compile check proves (stage 1 has
                # longer ones for a raised text.max_doc_tokens).
                longest = max(padded_lengths(cfg, STAGES[cfg.trainer.stage].query_kind))
                assert 1 <= len([b for b in cfg.data.length_buckets if b <= longest]) <= 2
            assert cfg.name.endswith("@" + tpu.parse_topology(topology).accelerator_type)
    monkeypatch.setenv(layouts.TOPOLOGY_ENV, "v4-8")
    with pytest.raises(config_lib.ConfigError, match="no mesh/batch layout for v4-8"):
        config_lib.load_config("experiments/t1_4b_stage1.py")
    # TPU VMs name themselves; explicit T1_TOPOLOGY wins; --set still overrides the row.
    monkeypatch.delenv(layouts.TOPOLOGY_ENV)
    monkeypatch.setenv(layouts.TPU_ENV, "v4-32")
    assert config_lib.load_config("experiments/t1_4b_stage1.py").mesh.fsdp == 8
    cfg = config_lib.load_config("experiments/t1_4b_stage1.py", ["data.global_batch_size=64"])
    assert cfg.data.global_batch_size == 64
    monkeypatch.setenv(layouts.TOPOLOGY_ENV, "v6e-8")
    with pytest.raises(config_lib.ConfigError, match="no mesh/batch layout for v6e-8; known: v4-16, v4-32"):
        config_lib.load_config("experiments/t1_4b_stage1.py")


def test_default_topology_without_env(monkeypatch):
    monkeypatch.delenv(layouts.TOPOLOGY_ENV, raising=False)
    monkeypatch.delenv(layouts.TPU_ENV, raising=False)
    cfg = config_lib.load_config("experiments/t1_4b_stage1.py")
    assert cfg.name == "t1-4b-stage1@v5p-8" and (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, 4, 1)


def test_bad_topology_is_one_line(capsys):
    assert main(["compile-check", "--config", "experiments/tiny_stage1.py", "--topology", "v5p-7"]) == 1
    assert "multiple of 2" in capsys.readouterr().err


def test_state_shardings_equal_the_trainers_compiled_initialiser():
    import jax

    from t1_jax import mesh as mesh_lib
    from t1_jax.optimizer import make_optimizer
    from t1_jax.model.functions import model_functions
    from t1_jax.stages.contrastive import make_loss_fn
    from t1_jax.trainer import TrainStage, init_state_fn

    cfg = config_lib.load_config("experiments/tiny_stage1.py")  # fsdp 2 x tensor 2 on the 8 CPU devices
    mesh = mesh_lib.make_mesh(cfg.mesh)
    graphdef, init_params, shardings = model_functions(cfg, mesh)
    stage = TrainStage("s1", init_params, None, make_loss_fn(cfg, graphdef, mesh), param_shardings=shardings)
    tx, _ = make_optimizer(cfg.optimizer, 10)
    rng = jax.random.PRNGKey(0)
    with mesh_lib.use_mesh(mesh):
        expected = jax.jit(init_state_fn(stage, tx)).lower(rng).compile().output_shardings  # what Trainer.fit does
        got = compile_check.state_shardings_of(stage, tx, mesh, rng)
    shapes = jax.eval_shape(init_state_fn(stage, tx), rng)
    flat_expected, tree_expected = jax.tree_util.tree_flatten(expected)
    flat_got, tree_got = jax.tree_util.tree_flatten(got)
    assert tree_expected == tree_got
    leaves = jax.tree_util.tree_leaves(shapes)
    assert len(leaves) == len(flat_got) > 10
    sharded = 0
    for e, g, leaf in zip(flat_expected, flat_got, leaves):
        assert e.is_equivalent_to(g, leaf.ndim), (e, g, leaf.shape)
        sharded += not g.is_fully_replicated
    assert sharded > len(leaves) // 2  # parameters and both AdamW moments are sharded, not replicated
