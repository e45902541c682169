"""The shared trainer: resume determinism after SIGKILL, partial checkpoints, SIGTERM preemption, non-finite loss.

Each scenario runs the real Trainer in a subprocess (tests/helpers/toy_train.py: a linear model on a grain pipeline,
sharded over an 8-device mesh, checkpointing every step) and compares with an uninterrupted run. The subprocesses of
this file share a JAX persistent compilation cache: each of them runs the same dozen small programs, compiled by the
first one (the checkpoints, the data-iterator state and the RNG that resume restores are what these tests check).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO


_COMPILE_CACHE = {}  # "dir": this module's persistent compilation cache (the autouse fixture below)


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
    _COMPILE_CACHE["dir"] = str(tmp_path_factory.mktemp("jax_compilation_cache"))
    yield
    _COMPILE_CACHE.clear()


def _run(workdir, steps, *flags, expect=0):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}"
    # Each compile here takes well under JAX's 1 s threshold for caching: cache them all.
    env.update(JAX_COMPILATION_CACHE_DIR=_COMPILE_CACHE["dir"], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    result = subprocess.run([sys.executable, "-m", "tests.helpers.toy_train", str(workdir), str(steps), *flags],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if expect is not None:
        assert result.returncode == expect, result.stderr[-3000:]
    return result


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows}


def _final(workdir):
    return np.load(os.path.join(workdir, "final_w.npy"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("baseline")
    _run(workdir, 6)
    return _losses(workdir), _final(workdir)


@pytest.fixture(scope="module")
def killed_before_step_4(tmp_path_factory):
    """A run SIGKILLed right before step 4, once step 3's checkpoint is on disk; each test resumes its own copy."""
    workdir = tmp_path_factory.mktemp("killed")
    _run(workdir, 6, "--die-before-step", "4", "--wait-for-checkpoint", expect=-9)
    return workdir


def test_resume_after_sigkill_is_deterministic(tmp_path, baseline, killed_before_step_4):
    losses, final = baseline
    shutil.copytree(killed_before_step_4, tmp_path, dirs_exist_ok=True)
    assert sorted(_losses(tmp_path)) == [1, 2, 3]
    result = _run(tmp_path, 6)
    assert "resumed from step 3" in result.stderr
    resumed = _losses(tmp_path)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(losses[step], rel=1e-6, abs=0), step
    np.testing.assert_allclose(_final(tmp_path), final, rtol=1e-6, atol=0)


def test_partial_checkpoint_is_ignored(tmp_path, baseline, killed_before_step_4):
    _, final = baseline
    shutil.copytree(killed_before_step_4, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "checkpoints"
    # A write of step 4 that was killed half-way: orbax only renames a step directory into place once it is complete.
    partial = ckpts / "4.orbax-checkpoint-tmp-1234"
    shutil.copytree(ckpts / "3", partial)
    (partial / "commit_success.txt").unlink(missing_ok=True)
    for path in partial.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    result = _run(tmp_path, 6)
    assert "resumed from step 3" in result.stderr
    np.testing.assert_allclose(_final(tmp_path), final, rtol=1e-6, atol=0)


def test_kill_during_async_write_resumes(tmp_path, baseline):
    _, final = baseline
    # No waiting: step 3's asynchronous save may or may not have been finalised when the process dies.
    _run(tmp_path, 6, "--die-before-step", "4", expect=-9)
    result = _run(tmp_path, 6)
    assert "resumed from step" in result.stderr
    np.testing.assert_allclose(_final(tmp_path), final, rtol=1e-6, atol=0)


# One handler serves both signals; SIGTERM reaches it only without jax.distributed (on TPU VMs XLA's notifier takes it,
# tests/test_multihost.py). Default run: SIGINT (Ctrl-C, the local case); `-m slow` adds SIGTERM.
@pytest.mark.parametrize("signal_name", [pytest.param("SIGTERM", marks=pytest.mark.slow), "SIGINT"])
def test_stop_signal_saves_and_exits_as_preempted(tmp_path, baseline, signal_name):
    """SIGTERM (the preemption notice) and Ctrl-C save at the end of the step and exit with status 75 ("preempted,
    resume"), which tpu/supervise.sh must never read as finished; the rerun continues to the uninterrupted result."""
    from t1_jax.trainer import Preempted

    _, final = baseline
    result = _run(tmp_path, 6, "--signal-before-step", "3", "--signal", signal_name, "--checkpoint-every", "100",
                  expect=Preempted.EXIT_CODE)
    assert f"{signal_name} received" in result.stderr and "saved step 3" in result.stderr
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [3]
    result = _run(tmp_path, 6, "--checkpoint-every", "100")
    assert "resumed from step 3" in result.stderr
    np.testing.assert_allclose(_final(tmp_path), final, rtol=1e-6, atol=0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    result = _run(tmp_path, 6, "--nan-at-step", "4", expect=None)
    assert result.returncode != 0
    assert "loss is nan at step 4; stopping without saving" in result.stderr
    assert "Last good checkpoint: step 3" in result.stderr
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [1, 2, 3]
