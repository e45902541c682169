"""gs:// end to end against a real GCS API (the local emulator of tests/gcs.py): the file-system layer, embedding
stores and indexes on GCS, and a tiny stage-1 run with ``--workdir gs://...`` that is SIGKILLed, resumed, and then
used by ``t1 embed --checkpoint gs://...``."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO

pytest.importorskip("gcsfs", reason="gs:// needs gcsfs (the tpu and test extras install it)")
pytest.importorskip("gcp_storage_emulator", reason="the GCS tests need gcp-storage-emulator (the test extra)")

from tests.gcs import BUCKET, gcs_emulator  # noqa: E402
from t1_jax import fs  # noqa: E402

ROOT = f"gs://{BUCKET}"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator() as env:
        yield env


def test_file_system_layer_on_gcs(gcs, tmp_path):
    base = f"{ROOT}/fs"
    fs.write_text(f"{base}/a/config.json", '{"x": 1}\n')
    assert fs.exists(f"{base}/a/config.json") and fs.isfile(f"{base}/a/config.json") and fs.isdir(f"{base}/a")
    assert not fs.exists(f"{base}/nothing") and fs.read_text(f"{base}/a/config.json") == '{"x": 1}\n'
    with fs.open(f"{base}/a/b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert fs.listdir(f"{base}/a") == ["b.bin", "config.json"]
    assert fs.files(f"{base}/a") == [("b.bin", 2), ("config.json", 9)]

    local = tmp_path / "tok"
    (local / "sub").mkdir(parents=True)
    (local / "tokenizer.json").write_text("{}")
    (local / "sub" / "x.txt").write_text("x")
    fs.upload_dir(str(local), f"{base}/tok")
    assert fs.files(f"{base}/tok") == [("sub/x.txt", 1), ("tokenizer.json", 2)]
    with fs.local_copy(f"{base}/tok") as copy:
        assert sorted(os.listdir(copy)) == ["sub", "tokenizer.json"] and open(f"{copy}/sub/x.txt").read() == "x"
    assert not os.path.exists(copy)  # the download is temporary
    with fs.local_output_dir(f"{base}/out") as out:
        open(os.path.join(out, "meta.json"), "w").write("{}")
    assert fs.read_text(f"{base}/out/meta.json") == "{}"
    fs.rmtree(f"{base}/out")
    assert not fs.exists(f"{base}/out/meta.json")

    from t1_jax.observe import JsonlLog

    log = JsonlLog(f"{base}/metrics.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step, "loss": float(step)})
    resumed = JsonlLog(f"{base}/metrics.jsonl", resume_step=2)  # step 3 was logged after the last checkpoint
    resumed.append({"step": 3, "loss": 30.0})
    rows = [json.loads(line) for line in fs.read_text(f"{base}/metrics.jsonl").splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_store_index_and_runs_on_gcs(gcs):
    from t1_jax.retrieval.index import IndexSettings, build_index, load_index
    from t1_jax.retrieval.store import EmbeddingStore
    from t1_jax.retrieval.trec import read_run, write_run

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(50)]
    store = EmbeddingStore.create(f"{ROOT}/store", 50, 16, "float32", ids, fingerprint="abc", chunk_rows=32)
    assert store.missing_chunks() == [0, 1]
    store.write_chunk(0, x[:32])
    store.write_chunk(32, x[32:])
    reopened = EmbeddingStore.open(f"{ROOT}/store")
    assert reopened.ids == ids and reopened.fingerprint == "abc" and reopened.missing_chunks() == []
    np.testing.assert_array_equal(reopened.read(), x)

    index = build_index(x, ids, out_dir=f"{ROOT}/index", settings=IndexSettings(mode="brute_force"))
    loaded = load_index(f"{ROOT}/index", expected_dim=16)
    np.testing.assert_array_equal(loaded.search(x[:3], 5)[1], index.search(x[:3], 5)[1])

    write_run(f"{ROOT}/runs/run.trec", {"q1": {"d1": 2.0, "d2": 1.0}})
    assert read_run(f"{ROOT}/runs/run.trec") == {"q1": {"d1": 2.0, "d2": 1.0}}


def _t1(args, env, **kw):
    full_env = {**os.environ, **env, "XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}", "JAX_PLATFORMS": "cpu",
                "T1_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "t1_jax.cli", *args], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow  # ~75-100 s: out of the default run to keep CI under 15 minutes (`-m slow`); the local kill/resume
# tests (test_trainer.py) and the other gs:// tests here stay in it
def test_stage1_on_gcs_killed_resumed_then_embedded(gcs, tmp_path):
    from t1_jax.quickstart.task import PRESETS, generate_task, write_task
    from t1_jax.quickstart.tokenizer import train_tokenizer

    task = generate_task(PRESETS["fast"])
    files = write_task(task, str(tmp_path / "data"))
    tok = train_tokenizer(task.texts(), 400, str(tmp_path / "tok"))
    fs.upload_dir(str(tok), f"{ROOT}/inputs/tok")  # inputs on GCS too: tokenizer and training data
    fs.write_text(f"{ROOT}/inputs/train.jsonl", open(files.train_jsonl).read())
    workdir, steps = f"{ROOT}/runs/stage1", 8
    args = ["train", "--config", "experiments/tiny_stage1.py", "--workdir", workdir, "--set",
            f"text.tokenizer={ROOT}/inputs/tok", f"data.train_path={ROOT}/inputs/train.jsonl",
            "text.max_query_tokens=128", "text.max_doc_tokens=96", f"trainer.num_steps={steps}",
            "trainer.checkpoint_every=2", "trainer.log_every=1"]

    first = _t1(args, gcs)
    deadline = time.time() + 600
    # Kill it once step 2 is committed (orbax's marker of a complete step on GCS); each later checkpoint is another
    # round of uploads to the emulator, so the run is still before step 8 then.
    while not fs.exists(f"{workdir}/checkpoints/2/commit_success.txt"):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not fs.exists(f"{workdir}/model/model_config.json")  # killed before the end

    second = _t1(args, gcs)
    out = second.communicate(timeout=900)[0]
    assert second.returncode == 0, out[-3000:]
    resumed = [line for line in out.splitlines() if "resumed from step" in line]
    assert resumed, out[-3000:]
    start = int(resumed[0].split("resumed from step ")[1].split()[0])
    assert 2 <= start < steps
    rows = [json.loads(line) for line in fs.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # each step once, across the kill
    assert json.loads(fs.read_text(f"{workdir}/config.json"))["trainer"]["num_steps"] == steps
    assert fs.isfile(f"{workdir}/model/model_config.json") and fs.isfile(f"{workdir}/model/tokenizer/tokenizer.json")
    assert any(name.startswith("events.out.tfevents") for name in fs.listdir(f"{workdir}/tensorboard"))

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(5)))
    from t1_jax.cli import main

    assert main(["embed", "--checkpoint", workdir, "--docs", str(docs), "--out", f"{ROOT}/emb/docs.npy"]) == 0
    with fs.open(f"{ROOT}/emb/docs.npy", "rb") as f:
        emb = np.load(f)
    assert emb.shape == (5, 64) and np.isfinite(emb).all()
    assert fs.read_text(f"{ROOT}/emb/docs.ids.txt").split() == [f"d{i}" for i in range(5)]


def test_convert_from_and_to_gcs_carries_the_tokenizer(gcs, tmp_path):
    """`t1 convert hf-to-t1 gs://... gs://...`: the HF folder is staged locally, the model and its tokenizer land on
    GCS, and a training run from it takes that tokenizer (text.tokenizer empty)."""
    from tests.model_helpers import save_random_hf
    from t1_jax.cli import main
    from t1_jax.config import ExperimentConfig, TrainerConfig
    from t1_jax.model.params_io import load_model_config
    from t1_jax.quickstart.tokenizer import train_tokenizer
    from t1_jax.stages.build import resolve_tokenizer

    save_random_hf(tmp_path / "hf")
    train_tokenizer(["alpha beta gamma"] * 4, 300, str(tmp_path / "hf"))  # its <embtoken> is id 3
    fs.upload_dir(str(tmp_path / "hf"), f"{ROOT}/hf")
    assert main(["convert", "hf-to-t1", f"{ROOT}/hf", f"{ROOT}/models/tiny"]) == 0
    assert fs.isfile(f"{ROOT}/models/tiny/tokenizer/tokenizer.json")
    assert load_model_config(f"{ROOT}/models/tiny").emb_token_id == 3
    cfg = resolve_tokenizer(ExperimentConfig(trainer=TrainerConfig(init_from=f"{ROOT}/models/tiny")))
    assert cfg.text.tokenizer == f"{ROOT}/models/tiny/tokenizer"
