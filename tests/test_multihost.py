"""Multi-host correctness on CPU: 2 processes x 4 fake devices (jax.distributed on localhost, gloo collectives) train
a tiny stage 1 through the real ``t1_jax.stages.build.train`` with cross-process all-gathered negatives, stop at a
checkpoint (the preemption path) and resume; the losses and final parameters equal one process with 8 devices.

Why they can be equal: the pipeline walks one global order whatever the number of hosts and each host collates the
rows of each global batch that its devices hold (t1_jax.data.pipeline), and one fixed length bucket gives both runs
the same padded shapes. Summation order in the cross-process (gloo) reductions may differ from the in-process ones,
so the comparison allows float32 round-off (rtol 1e-5), nothing more.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _launch(workdir, data, processes, *flags):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.helpers.multihost_train", str(workdir), data["tok"],
                               data["train"], str(STEPS), str(i), str(processes), str(port), *flags],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(processes)]
    return procs


def _wait_for_line(proc, needle, timeout=600):
    """Read ``proc``'s output until a line contains ``needle``; returns what was read."""
    import time

    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return "".join(lines)
    raise AssertionError(f"{needle!r} never appeared: {''.join(lines)[-3000:]}")


def _wait(procs, timeout=900, expect=0):
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == expect, out[-4000:]
    return outputs


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from t1_jax.quickstart.task import PRESETS, generate_task, write_task
    from t1_jax.quickstart.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("multihost")
    task = generate_task(PRESETS["fast"])
    files = write_task(task, str(root))
    return {"tok": str(train_tokenizer(task.texts(), 400, str(root / "tok"))), "train": files.train_jsonl,
            "root": root}


@pytest.mark.slow  # ~150 s of two JAX processes: out of the default run to keep CI under 15 minutes (`-m slow`)
def test_two_processes_preempted_by_sigterm_resume_and_equal_one_process(data):
    """The real preemption path: SIGTERM to both processes reaches XLA's preemption notifier (the trainer installs no
    handler of its own once jax.distributed is up), both stop at the step JAX's sync point names, save it together,
    and exit with the "preempted" status; the rerun resumes there and ends where one uninterrupted process does."""
    from t1_jax.trainer import Preempted

    one, two = data["root"] / "one_process", data["root"] / "two_processes"
    single = _launch(one, data, 1)
    first_half = _launch(two, data, 2)
    first_out = [_wait_for_line(p, "distributed: process") for p in first_half]  # the notifier is listening
    for p in first_half:
        p.send_signal(signal.SIGTERM)
    first_out = [head + tail for head, tail in zip(first_out, _wait(first_half, expect=Preempted.EXIT_CODE))]
    _wait(single)
    saved = sorted(int(d.name) for d in (two / "checkpoints").iterdir() if d.name.isdigit())
    stop = max(saved)  # the collective save at the step the sync point named, before the end
    assert 1 <= stop < STEPS, saved
    for out in first_out:
        assert f"saved step {stop}" in out and "preempted" in out, out[-3000:]
    assert sorted(_losses(two)) == list(range(1, stop + 1)) and not (two / "params.npz").exists()
    second_out = _wait(_launch(two, data, 2))
    assert f"resumed from step {stop}" in second_out[0] and f"resumed from step {stop}" in second_out[1]
    assert "distributed: process 0 of 2 (explicit); 4 local / 8 global devices" in first_out[0]

    reference, resumed = _losses(one), _losses(two)
    assert sorted(reference) == sorted(resumed) == list(range(1, STEPS + 1))
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=0), step
    assert reference[STEPS] != reference[1]  # it trained
    # Only process 0 wrote metrics (one line per step, no duplicates from process 1).
    assert len(open(two / "metrics.jsonl").read().splitlines()) == STEPS

    # Parameters: gloo sums the gradients across processes in another order than one process does, so a gradient
    # element that is a sum with cancellation (an embedding row hit by several tokens) can differ by ~1e-4 of itself.
    # AdamW turns that into a change of ~1e-4 of one step (lr 1e-3 here) per step: ~1e-7 (seen: 2.25e-7 on one of
    # 32,768 embed_tokens elements, on one x86 host). A wrong gradient or a lost update moves elements by a whole step.
    # So: each element within 1% of one step, each array within 1e-5 of its norm.
    one_step = 1e-3
    ref_params, params = np.load(one / "params.npz"), np.load(two / "params.npz")
    assert sorted(ref_params.files) == sorted(params.files) and ref_params.files
    for name in ref_params.files:
        np.testing.assert_allclose(params[name], ref_params[name], rtol=0, atol=0.01 * one_step, err_msg=name)
        diff = np.linalg.norm(params[name].astype(np.float64) - ref_params[name])
        assert diff <= 1e-5 * np.linalg.norm(ref_params[name].astype(np.float64)), name
    # The finished 2-process run saved its model (shared path) once, with the tokenizer from process 0.
    assert (two / "model" / "tokenizer").is_dir()
    shutil.rmtree(one, ignore_errors=True)
