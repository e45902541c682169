"""Every command refuses an output it could not write, in one line naming the flag, before doing any work.

A read-only folder (chmod 0o555) stands for an unwritable place. Root writes through permission bits, so when the
tests run as root ``os.access`` is made to answer as it would for an unprivileged user: the same guard code runs and
the assertions are the same. Each command's ``run`` is replaced by one that fails the test, so "no work done" means
the command was never started (nothing loaded, nothing computed).
"""
import importlib
import os

import pytest

from t1_jax import cli
from t1_jax.commands import output_guard


@pytest.fixture
def readonly(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root ignores the mode bits; answer as the kernel would for anyone else
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and os.path.abspath(path) == str(folder):
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield folder
    folder.chmod(0o755)


def _no_work(monkeypatch):
    started = []
    for module_name in cli.COMMAND_MODULES:
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, "run", lambda args, name=module.NAME: started.append(name))
    return started


# (argv with OUT standing for the output path, the flag the message names, the output's name inside the folder)
COMMANDS = {
    "embed": (["embed", "--checkpoint", "m", "--queries", "q.jsonl", "--out", "OUT"], "--out", "q.npy"),
    "encode": (["encode", "--checkpoint", "m", "--corpus", "c.jsonl", "--out", "OUT"], "--out", "store"),
    "index": (["index", "--embeddings", "e.npy", "--out", "OUT"], "--out", "index"),
    "search": (["search", "--query-embeddings", "q.npy", "--exact", "d.npy", "--out", "OUT"], "--out", "run.trec"),
    "search reasoning": (["search", "--query-embeddings", "q.npy", "--exact", "d.npy", "--reasoning-out", "OUT"],
                         "--reasoning-out", "r.jsonl"),
    "eval": (["eval", "--no-bm25", "--run", "a=r.trec", "--out", "OUT"], "--out", "metrics.json"),
    "train": (["train", "--config", "experiments/tiny_stage1.py", "--workdir", "OUT"], "--workdir", "run"),
    "quickstart": (["quickstart", "--workdir", "OUT"], "--workdir", "qs"),
    "convert": (["convert", "hf-to-t1", "hf", "OUT"], "DST_DIR", "model"),
    "generate": (["generate", "--checkpoint", "m", "--queries", "q.jsonl", "--out", "OUT"], "--out", "t.jsonl"),
    "config": (["config", "--config", "experiments/tiny_stage1.py", "--out", "OUT"], "--out", "config.json"),
    "compile-check": (["compile-check", "--config", "experiments/tiny_stage1.py", "--topology", "v4-8", "--json",
                       "OUT"], "--json", "report.json"),
}


@pytest.mark.parametrize("case", list(COMMANDS))
def test_unwritable_output_is_one_line_before_any_work(case, readonly, monkeypatch, capsys):
    argv, flag, name = COMMANDS[case]
    started = _no_work(monkeypatch)
    for out, where in ((readonly / name, readonly), (readonly / "new" / "deeper" / name, readonly)):
        assert cli.main([str(out) if a == "OUT" else a for a in argv]) == 1
        err = capsys.readouterr().err
        assert err == f"t1 {argv[0]}: error: {flag} {out}: folder {where} is not writable\n"
        assert not out.exists()
    assert started == []


def test_existing_unwritable_output_folder_and_writable_ones(readonly, monkeypatch, tmp_path, capsys):
    started = _no_work(monkeypatch)
    assert cli.main(["train", "--config", "experiments/tiny_stage1.py", "--workdir", str(readonly)]) == 1
    assert capsys.readouterr().err == f"t1 train: error: --workdir {readonly}: folder {readonly} is not writable\n"
    assert started == []
    writable = tmp_path / "w"
    assert cli.main(["train", "--config", "experiments/tiny_stage1.py", "--workdir", str(writable / "run")]) == 0
    assert cli.main(["eval", "--no-bm25", "--run", "a=r.trec", "--out", str(writable / "m.json")]) == 0
    assert started == ["train", "eval"] and not writable.exists()  # the check creates nothing


def test_unwritable_reasons(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert output_guard.unwritable(str(tmp_path / "new" / "x.json"), folder=False) is None
    assert output_guard.unwritable(str(tmp_path), folder=True) is None
    assert output_guard.unwritable("gs://bucket/none/of/this", folder=False) is None  # checked when written
    assert output_guard.unwritable(str(a_file / "x.json"), folder=False) == f"{a_file} is a file, not a folder"
    assert output_guard.unwritable(str(a_file / "sub" / "store"), folder=True) == f"{a_file} is a file, not a folder"
    assert output_guard.unwritable(str(tmp_path), folder=False) == f"{tmp_path} is a folder; it must be a file"
