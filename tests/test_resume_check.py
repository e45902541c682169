"""Resuming a workdir with a changed config: refused for what the checkpoints or the data stream depend on (with the
keys named, config.json untouched), accepted with the history kept for the rest (t1_jax/resume_check.py)."""
import json

import pytest

from t1_jax import config as cfg_lib
from t1_jax import resume_check


def test_changed_keys_and_the_fixed_list_names_real_keys():
    before = cfg_lib.to_dict(cfg_lib.ExperimentConfig())
    after = cfg_lib.to_dict(cfg_lib.apply_overrides(cfg_lib.ExperimentConfig(), [
        "trainer.num_steps=7", "data.length_buckets=32,64"]))
    assert resume_check.changed_keys(before, after) == {"data.length_buckets": ([], [32, 64]),
                                                        "trainer.num_steps": (100, 7)}
    known = set(resume_check._flat(before))
    assert set(resume_check.FIXED_ON_RESUME) <= known, set(resume_check.FIXED_ON_RESUME) - known


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny stage-1 run of 2 steps with its checkpoint at step 2."""
    from t1_jax.quickstart.task import PRESETS, generate_task, write_task
    from t1_jax.quickstart.tokenizer import train_tokenizer
    from t1_jax.stages import build

    root = tmp_path_factory.mktemp("resume")
    task = generate_task(PRESETS["fast"])
    files = write_task(task, str(root / "data"))
    tok = train_tokenizer(task.texts(), 400, str(root / "tok"))
    common = [f"text.tokenizer={tok}", f"data.train_path={files.train_jsonl}", "text.max_query_tokens=128",
              "text.max_doc_tokens=96", "trainer.checkpoint_every=2", "trainer.log_every=1"]
    cfg = cfg_lib.load_config("experiments/tiny_stage1.py", common + ["trainer.num_steps=2"])
    workdir = str(root / "run")
    build.train(cfg, workdir)
    return cfg, workdir


@pytest.mark.parametrize("override,key", [("model.hidden_size=128", "model.hidden_size"),
                                          ("data.global_batch_size=16", "data.global_batch_size"),
                                          ("data.seed=3", "data.seed")])
def test_resume_refuses_a_change_the_checkpoint_cannot_follow(trained, override, key):
    from t1_jax.stages import build

    cfg, workdir = trained
    saved = open(f"{workdir}/config.json").read()
    with pytest.raises(cfg_lib.ConfigError) as err:
        build.train(cfg_lib.apply_overrides(cfg, [override]), workdir)
    message = str(err.value)
    assert "checkpoints up to step 2" in message and f"{key}: " in message
    assert f"--config {workdir}/config.json" in message
    assert open(f"{workdir}/config.json").read() == saved  # the record of what trained the checkpoints is kept


def test_resume_with_more_steps_keeps_the_earlier_config(trained, caplog):
    from t1_jax.stages import build

    cfg, workdir = trained
    caplog.set_level("INFO")
    build.train(cfg_lib.apply_overrides(cfg, ["trainer.num_steps=3"]), workdir)
    assert "resumed from step 2" in caplog.text and "trainer.num_steps: 2 -> 3" in caplog.text
    assert json.load(open(f"{workdir}/config.before-step-2.json"))["trainer"]["num_steps"] == 2
    assert json.load(open(f"{workdir}/config.json"))["trainer"]["num_steps"] == 3
    rows = [json.loads(line)["step"] for line in open(f"{workdir}/metrics.jsonl")]
    assert rows == [1, 2, 3]
    report = json.load(open(f"{workdir}/data_report.json"))  # what the token budgets cut (t1_jax/data/budget.py)
    assert report["examples"] == report["examples_kept"] == len(open(cfg.data.train_path).read().splitlines())
    assert report["traces_cut"] == report["traces_skipped"] == 0 and report["documents"] > 0
