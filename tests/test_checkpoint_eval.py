"""`t1 eval --checkpoint` on a tiny random T1 model: BEIR + BRIGHT (excluded_ids, long documents) in one call, the
scores equal to encoding and searching by hand, a finished workdir only re-scored, a killed run resumed to the same
table, and each bad input refused in one line before any work."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO
from t1_jax import cli
from t1_jax.config import RetrievalConfig, SamplingConfig
from t1_jax.retrieval import metrics, trec
from tests.helpers.toy_run import random_text, write_toy_run

NUM_DOCS, NUM_QUERIES = 24, 8
_text = random_text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A `t1 train`-like workdir with a tiny random model (greedy, 4 reasoning tokens)."""
    return write_toy_run(
        tmp_path_factory.mktemp("run"), max_tokens=64, seed=3,
        sampling=SamplingConfig(max_new_tokens=4, temperature=0.0, prompt_buckets=(32, 64, 128)),
        retrieval=RetrievalConfig(encode_batch_size=4, embedding_dtype="float32"),
        vocab_size=384, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
        scan_layers=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A BEIR folder and a BRIGHT folder (domain biology: documents, long documents, excluded_ids)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    docs = {f"d{i}": _text(rng, 3 + i % 9) for i in range(NUM_DOCS)}
    queries = {f"q{i}": _text(rng, 4) for i in range(NUM_QUERIES)}
    beir = root / "toy"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                               for d, t in docs.items()))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (beir / "qrels" / "test.tsv").write_text("".join(f"q{i}\t0\td{3 * i}\t1\n" for i in range(NUM_QUERIES)))
    bright = root / "bright"
    for sub in ("examples", "documents", "long_documents", "qrels"):
        (bright / sub).mkdir(parents=True)
    (bright / "qrels" / "qrels.bright-biology.txt").write_text("".join(
        f"q{i} 0 d{3 * i + j} 1\n" for i in range(NUM_QUERIES) for j in (0, 1)))
    with open(bright / "examples" / "biology.jsonl", "w") as f:
        for i, (q, t) in enumerate(queries.items()):
            f.write(json.dumps({"id": q, "query": t, "reasoning": "", "gold_ids": [f"d{3 * i}", f"d{3 * i + 1}"],
                                "gold_ids_long": [f"page{i % 4}"], "excluded_ids": [f"d{3 * i + 2}", "d0"],
                                "gold_answer": ""}) + "\n")
    (bright / "documents" / "biology.jsonl").write_text("".join(json.dumps({"id": d, "content": t}) + "\n"
                                                                for d, t in docs.items()))
    pages = {f"page{j}": " ".join(docs[f"d{i}"] for i in range(j, NUM_DOCS, 4)) for j in range(4)}
    (bright / "long_documents" / "biology.jsonl").write_text("".join(json.dumps({"id": d, "content": t}) + "\n"
                                                                     for d, t in pages.items()))
    return {"beir": beir, "bright": bright, "docs": docs, "queries": queries, "pages": pages}


def _eval(run_dir, workdir, *extra):
    return ["eval", "--checkpoint", str(run_dir), "--workdir", str(workdir), "--name", "t1", "--ks", "10", "--depth",
            "20", *extra]


def _table(out: str) -> str:
    return out[out.index("nDCG@10"):out.index("t1 eval: everything")]


def test_beir_and_bright_scores_equal_encoding_by_hand(run_dir, data, tmp_path, capsys, monkeypatch):
    from t1_jax.encoder import Encoder

    work = tmp_path / "work"
    assert cli.main(_eval(run_dir, work, "--beir", str(data["beir"]), "--bright", str(data["bright"]),
                          "--no-reasoning")) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert "toy" in table and "biology" in table and "average" in table
    assert [line.split()[0] for line in table.splitlines()[2:5]] == ["t1", "t1", "bm25"]  # t1, t1 (no r.), bm25
    results = json.loads((work / "results.json").read_text())
    assert set(results["scores"]) == {"t1", "t1 (no reasoning)", "bm25"}

    # The same numbers by hand: the Encoder, numpy inner products, BRIGHT's exclusions, trec_eval metrics.
    enc = Encoder.from_checkpoint(str(run_dir), show_progress=False)
    ids = list(data["docs"])
    qids = list(data["queries"])
    for dataset, domain in (("toy", None), ("biology", "biology")):
        d_ed = enc.encode_documents([data["docs"][d] for d in ids], [domain] * len(ids))
        for reasoning, system in ((True, "t1"), (False, "t1 (no reasoning)")):
            q_bd, texts, _ = enc.encode_queries([data["queries"][q] for q in qids], [domain] * len(qids),
                                                reasoning=reasoning)
            scores = q_bd @ d_ed.T
            run = {q: {ids[j]: float(scores[i, j]) for j in range(len(ids))} for i, q in enumerate(qids)}
            if domain:
                qrels = {q: {f"d{3 * i}": 1, f"d{3 * i + 1}": 1} for i, q in enumerate(qids)}
                excluded = {q: {f"d{3 * i + 2}", "d0"} for i, q in enumerate(qids)}
            else:
                qrels, excluded = {q: {f"d{3 * i}": 1} for i, q in enumerate(qids)}, {}
            expected = metrics.evaluate_run(run, qrels, (10,), excluded)
            got = results["scores"][system][dataset]
            assert got["nDCG@10"] == pytest.approx(expected["nDCG@10"], abs=1e-4), (dataset, system)
            assert got["Recall@10"] == pytest.approx(expected["Recall@10"], abs=1e-4), (dataset, system)
            if reasoning and domain:
                written = [json.loads(x) for x in (work / dataset / "reasoning.jsonl").read_text().splitlines()]
                assert [w["reasoning"] for w in written] == texts
    written = trec.read_run(str(work / "biology" / "run.trec"))
    assert all("d0" not in ranked and f"d{3 * i + 2}" not in ranked and len(ranked) == 20
               for i, ranked in enumerate(written[q] for q in qids))  # excluded ids removed, depth kept

    # A finished workdir is only re-scored: no document or query is encoded again, the same table comes out.
    def refuse(*a, **k):
        raise AssertionError("encoded again")

    with monkeypatch.context() as m:
        m.setattr(Encoder, "encode_documents", refuse)
        m.setattr(Encoder, "encode_queries", refuse)
        m.setattr("t1_jax.retrieval.bm25.bm25_run", refuse)
        assert cli.main(_eval(run_dir, work, "--beir", str(data["beir"]), "--bright", str(data["bright"]),
                              "--no-reasoning")) == 0
        assert _table(capsys.readouterr().out) == table

    # What a kill leaves (a store chunk without its done-marker, query parts missing) is encoded again: same table.
    for marker in (work / "biology" / "store" / "done").iterdir():
        marker.unlink()
    for part in list((work / "toy" / "queries").rglob("part-*.npz"))[::2]:
        part.unlink()
    assert cli.main(_eval(run_dir, work, "--beir", str(data["beir"]), "--bright", str(data["bright"]),
                          "--no-reasoning")) == 0
    assert _table(capsys.readouterr().out) == table


def test_long_documents_judged_by_gold_ids_long(run_dir, data, tmp_path, capsys):
    work = tmp_path / "work"
    assert cli.main(_eval(run_dir, work, "--bright", str(data["bright"]), "--long", "--no-bm25",
                          "--search", "scann")) == 0
    assert "biology-long" in _table(capsys.readouterr().out)
    run = trec.read_run(str(work / "biology-long" / "run.trec"))
    assert all(set(r) <= set(data["pages"]) for r in run.values())
    assert (work / "biology-long" / "index" / "meta.json").exists()  # --search scann: a ScaNN folder, cached
    results = json.loads((work / "results.json").read_text())
    assert results["datasets"]["biology-long"]["judgements"] == NUM_QUERIES


def _one_line_error(args, capsys, *needles):
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_one_line_before_any_work(run_dir, data, tmp_path, capsys):
    work = tmp_path / "work"
    bright = str(data["bright"])
    _one_line_error(_eval(run_dir, work, "--bright", bright, "--domains", "geology"), capsys, "geology", "biology")
    empty = tmp_path / "no-docs"
    empty.mkdir()
    _one_line_error(_eval(run_dir, work, "--bright", bright, "--bright-docs", str(empty)), capsys,
                    "no documents for biology")
    no_tok = tmp_path / "no-tok"
    shutil.copytree(run_dir / "model", no_tok / "model", ignore=shutil.ignore_patterns("tokenizer"))
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["text"]["tokenizer"] = ""
    (no_tok / "config.json").write_text(json.dumps(cfg))
    _one_line_error(_eval(no_tok, work, "--beir", str(data["beir"])), capsys, "no tokenizer/ folder", "--tokenizer")
    (work / "toy").mkdir(parents=True)
    (work / "toy" / "key.json").write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    _one_line_error(_eval(run_dir, work, "--beir", str(data["beir"])), capsys, "built by model '0123456789abcdef'",
                    str(work / "toy" / "store"))
    assert not (work / "toy" / "store").exists()


@pytest.mark.slow  # three processes (start, JAX, compile): the in-process resume is in the first test
def test_killed_run_resumes_to_the_same_table(run_dir, data, tmp_path):
    """SIGKILL while queries are being reasoned (one query per part), then the same command: the same table."""
    env = {**os.environ, "T1_NO_PROGRESS": "1", "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu"}
    def command(workdir):
        return [sys.executable, "-m", "t1_jax.cli", *_eval(run_dir, workdir, "--beir", str(data["beir"]),
                                                           "--query-chunk", "1", "--no-bm25")]

    args = command(tmp_path / "work")
    full = subprocess.run(command(tmp_path / "ref"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "work" / "toy" / "queries"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if parts.exists() and any(p.name.startswith("part-") for p in parts.rglob("part-*.npz")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    kept = len(list(parts.rglob("part-*.npz")))
    resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _table(resumed.stdout) == _table(full.stdout)
    assert kept < NUM_QUERIES or proc.returncode == 0  # killed part-way (or, on a fast machine, it had finished)
