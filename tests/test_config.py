"""Config loading, dotted overrides (types, unknown keys, bad values), validation, and the JSON round trip."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from t1_jax import config as cfg_lib
from t1_jax.config import ConfigError, ExperimentConfig

from conftest import REPO

TINY = str(REPO / "experiments" / "tiny_stage1.py")


def test_overrides_convert_types():
    cfg = cfg_lib.apply_overrides(ExperimentConfig(), [
        "optimizer.lr=1e-5", "mesh.fsdp=8", "loss.symmetric=true", "text.tokenizer=/tmp/tok",
        "eval.ks=1,10,100", "grpo.rewards=ndcg:1.0,forced_penalty:0.5", "model.emb_token_id=none",
        "sampling.prompt_buckets=[32, 64]", "model.num_layers=1_000"])
    assert cfg.optimizer.lr == 1e-5 and isinstance(cfg.optimizer.lr, float)
    assert cfg.mesh.fsdp == 8 and isinstance(cfg.mesh.fsdp, int)
    assert cfg.loss.symmetric is True
    assert cfg.text.tokenizer == "/tmp/tok"
    assert cfg.eval.ks == (1, 10, 100)
    assert cfg.grpo.rewards == (("ndcg", 1.0), ("forced_penalty", 0.5))
    assert cfg.model.emb_token_id is None
    assert cfg.sampling.prompt_buckets == (32, 64)
    assert cfg.model.num_layers == 1000
    assert ExperimentConfig().optimizer.lr != 1e-5  # the original is untouched (frozen, copied)


@pytest.mark.parametrize("key,suggestion", [("optimizer.lrr", "optimizer.lr"), ("optimiser.lr", "optimizer.lr"),
                                            ("mesh.fdsp", "mesh.fsdp"), ("lr", "optimizer.lr")])
def test_unknown_key_suggests_closest(key, suggestion):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' \(did you mean {suggestion}\?\)"):
        cfg_lib.apply_overrides(ExperimentConfig(), [f"{key}=1"])


@pytest.mark.parametrize("item,message", [
    ("mesh.fsdp=two", "mesh.fsdp: expected an integer, got 'two'"),
    ("mesh.fsdp=2.5", "expected an integer"),
    ("optimizer.lr=fast", "optimizer.lr: expected a number"),
    ("loss.symmetric=maybe", "expected a boolean"),
    ("optimizer", "not of the form key=value"),
    ("optimizer=1", "is a section"),
])
def test_bad_override_values(item, message):
    with pytest.raises(ConfigError, match=message):
        cfg_lib.apply_overrides(ExperimentConfig(), [item])


def test_validation_reports_bad_values():
    cfg = cfg_lib.apply_overrides(ExperimentConfig(), ["optimizer.lr=-1", "model.num_kv_heads=3"])
    with pytest.raises(ConfigError) as info:
        cfg_lib.validate(cfg)
    text = str(info.value)
    assert "optimizer.lr must be positive, got -1.0" in text
    assert "model.num_heads (4) must be a multiple of model.num_kv_heads (3)" in text


@pytest.mark.parametrize("mesh,devices,ok", [((-1, 2, 2), 8, True), ((2, 2, 2), 8, True), ((3, 1, 1), 8, False),
                                             ((-1, 3, 1), 8, False), ((2, 2, 1), 8, False), ((-1, -1, 1), 8, False)])
def test_mesh_shape_against_device_count(mesh, devices, ok):
    cfg = dataclasses.replace(ExperimentConfig(), mesh=cfg_lib.MeshConfig(*mesh),
                              data=cfg_lib.DataConfig(global_batch_size=8))
    if ok:
        cfg_lib.validate(cfg, device_count=devices)
    else:
        with pytest.raises(ConfigError, match="mesh"):
            cfg_lib.validate(cfg, device_count=devices)


def test_batch_must_divide_batch_shards():
    cfg = cfg_lib.apply_overrides(ExperimentConfig(), ["mesh.data=4", "mesh.fsdp=2", "data.global_batch_size=12"])
    with pytest.raises(ConfigError, match="not divisible by the batch shards data x fsdp = 8"):
        cfg_lib.validate(cfg, device_count=8)


def test_grpo_refuses_gradient_accumulation():
    """A GRPO step never read optimizer.grad_accum_steps: it is refused there (one line saying what to use) and
    accepted for the contrastive stages, which accumulate."""
    grpo = cfg_lib.apply_overrides(ExperimentConfig(), ["trainer.stage=grpo", "optimizer.grad_accum_steps=4"])
    with pytest.raises(ConfigError) as info:
        cfg_lib.validate(grpo)
    assert str(info.value) == ("optimizer.grad_accum_steps=4 is not supported by trainer.stage=grpo (a step samples, "
                               "scores against its whole batch's documents and updates at once): set it to 1; for less "
                               "memory lower data.global_batch_size, grpo.group_size or grpo.logprob_chunk_size")
    cfg_lib.validate(cfg_lib.apply_overrides(grpo, ["optimizer.grad_accum_steps=1"]))
    for stage in ("contrastive", "reasoning"):
        cfg_lib.validate(cfg_lib.apply_overrides(grpo, [f"trainer.stage={stage}"]))


def test_resolved_config_round_trip(tmp_path):
    cfg = cfg_lib.load_config(TINY, ["optimizer.lr=2e-5", "grpo.rewards=ndcg:1,contrastive:0.5", "eval.ks=5,10"])
    path = tmp_path / "run" / "config.json"
    cfg_lib.save_json(cfg, str(path))
    again = cfg_lib.load_config(str(path))
    assert again == cfg
    assert json.loads(path.read_text())["optimizer"]["lr"] == 2e-5
    # A resolved config can itself be overridden.
    assert cfg_lib.load_config(str(path), ["mesh.tensor=1"]).mesh.tensor == 1


def test_json_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "config.json"
    data = cfg_lib.to_dict(ExperimentConfig())
    data["optimizer"]["learning_rate"] = 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.learning_rate'"):
        cfg_lib.load_config(str(path))


def test_every_experiment_file_survives_the_type_check():
    for path in sorted(os.listdir(os.path.join(REPO, "experiments"))):
        if path.endswith(".py") and not path.startswith("_"):
            cfg = cfg_lib.load_config(os.path.join(REPO, "experiments", path))
            assert cfg_lib.from_dict(cfg_lib.to_dict(cfg)) == cfg  # typed, and unchanged by the check


@pytest.mark.parametrize("body,message", [
    ("raise RuntimeError('boom')\n", r"bad\.py:1: the experiment file raised RuntimeError: boom"),
    ("import t1_jax.config as c\n\ndef get_config():\n    return c.ExperimentConfig(\n"
     "        optimizer=c.OptimizerConfig(lr=1 / 0))\n", r"bad\.py:5: the experiment file raised ZeroDivisionError"),
    ("import t1_jax.config as c\n\ndef get_config():\n    return c.ExperimentConfig(optimizer=c.OptimizerConfig("
     "lr='abc'))\n", r"bad\.py: optimizer\.lr: expected a number, got 'abc'"),
    ("def get_config():\n    return 3\n", r"get_config\(\) returned int, expected ExperimentConfig"),
])
def test_a_config_file_that_fails_is_one_line_naming_it(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        cfg_lib.load_config(str(path))


def test_a_json_config_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="a resolved config is a JSON object of sections, got a list"):
        cfg_lib.load_config(str(path))
    result = _t1("config", "--config", str(path))
    assert result.returncode != 0 and "Traceback" not in result.stderr and "got a list" in result.stderr


def _t1(*args, env=None):
    return subprocess.run([sys.executable, "-m", "t1_jax.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=env)


def test_cli_config_checks_a_pod_config_on_a_laptop():
    """`t1 config` for a pod experiment on a 1-device CPU: --topology (or $T1_TOPOLOGY) checks it against the slice
    it targets; without it, the mesh error says how to check for the target or emulate devices."""
    import os

    laptop = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "T1_TOPOLOGY")}
    laptop["JAX_PLATFORMS"] = "cpu"
    bright = "experiments/t1_4b_eval_bright.py"
    result = _t1("config", "--config", bright, "--topology", "v5p-8", env=laptop)
    assert result.returncode == 0, result.stderr
    assert "config valid for v5p-8 (4 chips)" in result.stderr
    result = _t1("config", "--config", bright, env={**laptop, "T1_TOPOLOGY": "v5p-8"})
    assert result.returncode == 0 and "config valid for v5p-8 (4 chips)" in result.stderr, result.stderr
    result = _t1("config", "--config", TINY, env=laptop)  # the tiny configs want 8 (fake) devices
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checked against the 1 cpu device(s) here" in result.stderr
    assert "--xla_force_host_platform_device_count=N" in result.stderr and "--topology SLICE" in result.stderr
    result = _t1("config", "--config", bright, "--topology", "v9-8", env=laptop)
    assert result.returncode != 0 and "unknown TPU generation 'v9'" in result.stderr and "Traceback" not in result.stderr


def test_cli_config_prints_resolved_config(tmp_path):
    out = tmp_path / "resolved.json"
    result = _t1("config", "--config", TINY, "--set", "optimizer.lr=1e-5", "mesh.fsdp=4", "mesh.tensor=1",
                 "--devices", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["optimizer"]["lr"] == 1e-5 and printed["mesh"]["fsdp"] == 4
    assert "mesh data=2 fsdp=4 tensor=1" in result.stderr
    assert cfg_lib.load_config(str(out)).mesh.fsdp == 4


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.lrr=1"], "did you mean optimizer.lr?"),
    (["mesh.fsdp=x"], "mesh.fsdp: expected an integer"),
    (["mesh.fsdp=3"], "does not divide 8 devices"),
    (["optimizer.lr=-0.1"], "optimizer.lr must be positive"),
])
def test_cli_config_errors_exit_nonzero(overrides, message):
    result = _t1("config", "--config", TINY, "--devices", "8", "--set", *overrides)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_lists_config():
    result = _t1("--help")
    assert result.returncode == 0 and "config" in result.stdout
