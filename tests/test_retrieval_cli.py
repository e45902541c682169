"""End to end through the CLI: .npy embeddings -> t1 index -> t1 search -> t1 eval (BEIR and BRIGHT layouts),
and SciFact's BM25 row against the published Lucene number."""
import json

import numpy as np
import pytest
import pytrec_eval

from t1_jax.cli import main
from t1_jax.retrieval import metrics, trec

D = 16


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def beir_dir(tmp_path):
    """60 documents, 20 queries; query i is judged relevant to docs 3i (grade 2) and 3i+1 (grade 1)."""
    root = tmp_path / "toy"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i} topic{i // 3}"}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"_id": f"q{i}", "text": f"topic{i}"}) + "\n")
    with open(root / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(20):
            f.write(f"q{i}\td{3 * i}\t2\nq{i}\td{3 * i + 1}\t1\n")
        f.write("q0\tmissing-doc\t1\n")
    return root


def _embeddings(tmp_path):
    rng = np.random.default_rng(0)
    topics = _unit(rng.standard_normal((20, D)))
    docs = _unit(topics[np.arange(60) // 3] + 0.6 * rng.standard_normal((60, D)))
    queries = _unit(topics + 0.3 * rng.standard_normal((20, D)))
    np.save(tmp_path / "docs.npy", docs)
    (tmp_path / "doc_ids.txt").write_text("".join(f"d{i}\n" for i in range(60)))
    np.save(tmp_path / "q.npy", queries)
    (tmp_path / "q_ids.txt").write_text("".join(f"q{i}\n" for i in range(20)))
    return docs, queries


def test_npy_index_search_eval(tmp_path, beir_dir, capsys):
    docs, queries = _embeddings(tmp_path)
    assert main(["index", "--embeddings", str(tmp_path / "docs.npy"), "--ids", str(tmp_path / "doc_ids.txt"),
                 "--out", str(tmp_path / "idx")]) == 0
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(tmp_path / "q.npy"),
                 "--query-ids", str(tmp_path / "q_ids.txt"), "--k", "10", "--out", str(tmp_path / "run.trec")]) == 0
    run = trec.read_run(str(tmp_path / "run.trec"))
    assert len(run) == 20 and all(len(v) == 10 for v in run.values())
    reasoning = [json.loads(x) for x in open(tmp_path / "run.reasoning.jsonl")]
    assert [r["id"] for r in reasoning] == [f"q{i}" for i in range(20)]
    # exact search through the CLI gives the same ranking as numpy
    assert main(["search", "--exact", str(tmp_path / "docs.npy"), "--doc-ids", str(tmp_path / "doc_ids.txt"),
                 "--query-embeddings", str(tmp_path / "q.npy"), "--query-ids", str(tmp_path / "q_ids.txt"),
                 "--k", "10", "--out", str(tmp_path / "exact.trec")]) == 0
    exact = trec.read_run(str(tmp_path / "exact.trec"))
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    assert [metrics.rank(exact[f"q{i}"]) for i in range(20)] == [[f"d{j}" for j in row] for row in top]

    capsys.readouterr()
    out_json = tmp_path / "results.json"
    assert main(["eval", "--beir", str(beir_dir), "--run", f"dense={tmp_path / 'run.trec'}",
                 "--dense", f"dense2={tmp_path / 'idx'},{tmp_path / 'q.npy'},{tmp_path / 'q_ids.txt'}",
                 "--ks", "10", "--out", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "bm25" in printed and "dense2" in printed
    assert "missing from the corpus: {'toy': 1}" in printed
    results = json.loads(out_json.read_text())
    qrels = trec.read_qrels(str(beir_dir / "qrels" / "test.tsv"))
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    expected = sum(v["ndcg_cut_10"] for v in ref.values()) / len(qrels)
    assert results["scores"]["dense"]["toy"]["nDCG@10"] == pytest.approx(expected, abs=1e-6)
    assert results["scores"]["dense2"]["toy"]["nDCG@10"] == pytest.approx(expected, abs=1e-6)
    assert results["scores"]["bm25"]["toy"]["nDCG@10"] > 0.5  # the toy texts share a topic word
    assert results["datasets"]["toy"]["missing_docs"] == 1


def test_bad_inputs_fail_clearly(tmp_path, beir_dir, capsys):
    _embeddings(tmp_path)
    (tmp_path / "dup_ids.txt").write_text("".join(f"d{i % 59}\n" for i in range(60)))
    assert main(["index", "--embeddings", str(tmp_path / "docs.npy"), "--ids", str(tmp_path / "dup_ids.txt"),
                 "--out", str(tmp_path / "idx")]) == 1
    assert "dup_ids.txt:60: duplicate id 'd0' (first at line 1)" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    main(["index", "--embeddings", str(tmp_path / "docs.npy"), "--ids", str(tmp_path / "doc_ids.txt"),
          "--out", str(tmp_path / "idx")])
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(tmp_path / "empty.jsonl"),
                 "--out", str(tmp_path / "r.trec")]) == 1
    assert "empty query set" in capsys.readouterr().err
    (tmp_path / "not.npy").write_text("d0 0.1 0.2\n")  # numpy's own error suggested loading a pickle
    assert main(["index", "--embeddings", str(tmp_path / "not.npy"), "--ids", str(tmp_path / "doc_ids.txt"),
                 "--out", str(tmp_path / "idx2")]) == 1
    assert "not.npy: not a .npy file (no NumPy header)" in capsys.readouterr().err
    assert main(["eval", "--no-bm25", "--run", "x=nothing.trec"]) == 1
    assert "pass --beir DIR and/or --bright DIR" in capsys.readouterr().err
    # A run path with a typo used to print a table of dashes and exit 0.
    assert main(["eval", "--beir", str(beir_dir), "--no-bm25", "--run", f"mine={tmp_path / 'missing.trec'}"]) == 1
    captured = capsys.readouterr()
    assert f"mine scored no dataset (e.g. no run file {tmp_path / 'missing.trec'})" in captured.err
    assert "skipped mine on toy" in captured.out  # the table and the reason are still printed
    # --k 0 used to mean the default (100) silently.
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(tmp_path / "q.npy"),
                 "--query-ids", str(tmp_path / "q_ids.txt"), "--k", "0", "--out", str(tmp_path / "k0.trec")]) == 1
    assert "--k must be positive, got 0" in capsys.readouterr().err
    # --k 1000 on 60 documents used to announce top-1000: it says what it returns, and the run holds all 60.
    for searcher in (["--index", str(tmp_path / "idx")], ["--exact", str(tmp_path / "docs.npy"), "--doc-ids",
                                                           str(tmp_path / "doc_ids.txt")]):
        assert main(["search", *searcher, "--query-embeddings", str(tmp_path / "q.npy"), "--query-ids",
                     str(tmp_path / "q_ids.txt"), "--k", "1000", "--out", str(tmp_path / "k1000.trec")]) == 0
        captured = capsys.readouterr()
        assert "--k 1000 is more than the 60 documents searched: returning all 60 per query" in captured.err
        assert "top-60" in captured.out
        assert all(len(v) == 60 for v in trec.read_run(str(tmp_path / "k1000.trec")).values())


def test_bright_layout(tmp_path, capsys):
    root = tmp_path / "bright"
    (root / "examples").mkdir(parents=True)
    (root / "documents").mkdir()
    with open(root / "examples" / "biology.jsonl", "w") as f:
        f.write(json.dumps({"id": "0", "query": "why do moths fly to lamps", "reasoning": "light",
                            "gold_ids": ["moth_1"], "excluded_ids": ["moth_0"]}) + "\n")
        f.write(json.dumps({"id": "1", "query": "how do bees dance", "reasoning": "",
                            "gold_ids": ["bee_0"], "excluded_ids": ["N/A"]}) + "\n")
    with open(root / "documents" / "biology.jsonl", "w") as f:
        for doc_id, text in [("moth_0", "moths fly to lamps lamps lamps moths"), ("moth_1", "moths fly to lamps"),
                             ("bee_0", "bees dance to tell direction"), ("x", "unrelated text about rocks")]:
            f.write(json.dumps({"id": doc_id, "content": text}) + "\n")
    run_path = tmp_path / "runs" / "biology.trec"
    trec.write_run(str(run_path), {"0": {"moth_0": 3.0, "moth_1": 2.0, "x": 1.0}, "1": {"x": 2.0, "bee_0": 1.0}})
    out = tmp_path / "bright.json"
    assert main(["eval", "--bright", str(root), "--run", f"mine={tmp_path / 'runs' / '{dataset}.trec'}",
                 "--ks", "1", "10", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["scores"]
    # moth_0 is excluded, so query 0 ranks moth_1 first; query 1 has its gold document second
    assert scores["mine"]["biology"]["MRR@1"] == pytest.approx(0.5)
    assert scores["mine"]["biology"]["MRR@10"] == pytest.approx(0.75)
    assert scores["bm25"]["biology"]["MRR@1"] == pytest.approx(1.0)  # BM25 with moth_0 excluded
    assert "biology" in capsys.readouterr().out


def test_real_bright_runs_only(shared_data, tmp_path):
    """The shared BRIGHT layout (topics/ + qrels/, no documents): a run scores; BM25 is reported as skipped."""
    run = {"0": {"leetcode/leetcode_11.txt": 2.0, "leetcode/leetcode_1996.txt": 3.0}}
    trec.write_run(str(tmp_path / "leetcode.trec"), run)
    out = tmp_path / "r.json"
    assert main(["eval", "--bright", str(shared_data / "bright"), "--domains", "leetcode", "--run",
                 f"r={tmp_path / '{dataset}.trec'}", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "leetcode" in res["skipped"]["bm25"]
    n = res["datasets"]["leetcode"]["judged_queries"]
    # leetcode_1996 is excluded for query 0, so leetcode_11 (gold) is at rank 1 -> MRR 1 for that query only
    assert res["scores"]["r"]["leetcode"]["MRR@10"] == pytest.approx(1.0 / n)


def test_scifact_bm25_row_matches_published(shared_data, tmp_path):
    out = tmp_path / "scifact.json"
    assert main(["eval", "--beir", str(shared_data / "scifact"), "--ks", "10", "100", "--out", str(out)]) == 0
    ndcg = json.loads(out.read_text())["scores"]["bm25"]["scifact"]["nDCG@10"]
    assert abs(ndcg - 0.679) <= 0.01, ndcg


def test_store_to_index_and_exact_search(tmp_path):
    """encode_corpus (any embed_fn) -> t1 index --store (fingerprint carried) -> t1 search on index and exact."""
    from t1_jax.retrieval.store import encode_corpus

    rng = np.random.default_rng(5)
    table = _unit(rng.standard_normal((50, D)))
    docs = [(f"doc{i}", str(i)) for i in range(50)]
    encode_corpus(docs, lambda texts: table[[int(t) for t in texts]], str(tmp_path / "store"), batch_size=8,
                  dtype="float32", fingerprint="enc-v1")
    assert main(["index", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "idx")]) == 0
    q = _unit(table[:6] + 0.1 * rng.standard_normal((6, D)))
    with open(tmp_path / "q.jsonl", "w") as f:
        for i, row in enumerate(q):
            f.write(json.dumps({"id": f"q{i}", "embedding": row.tolist(), "reasoning": f"think {i}"}) + "\n")
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(tmp_path / "q.jsonl"),
                 "--fingerprint", "enc-v1", "--k", "5", "--out", str(tmp_path / "a.trec")]) == 0
    assert main(["search", "--exact", str(tmp_path / "store"), "--query-embeddings", str(tmp_path / "q.jsonl"),
                 "--k", "5", "--out", str(tmp_path / "b.trec")]) == 0
    a, b = trec.read_run(str(tmp_path / "a.trec")), trec.read_run(str(tmp_path / "b.trec"))
    assert {qid: metrics.rank(v) for qid, v in a.items()} == {qid: metrics.rank(v) for qid, v in b.items()}
    top = np.argsort(-(q @ table.T), axis=1)[:, :5]
    assert [metrics.rank(a[f"q{i}"]) for i in range(6)] == [[f"doc{j}" for j in row] for row in top]
    assert json.loads(open(tmp_path / "a.reasoning.jsonl").readline()) == {"id": "q0", "reasoning": "think 0"}
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(tmp_path / "q.jsonl"),
                 "--fingerprint", "other", "--out", str(tmp_path / "c.trec")]) == 1


def test_index_tunes_on_given_query_embeddings(tmp_path, capsys):
    _embeddings(tmp_path)
    capsys.readouterr()
    assert main(["index", "--embeddings", str(tmp_path / "docs.npy"), "--ids", str(tmp_path / "doc_ids.txt"),
                 "--mode", "tree_ah", "--num-leaves", "12", "--tune-queries", str(tmp_path / "q.npy"),
                 "--out", str(tmp_path / "idx")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tuning"]["source"] == "queries" and summary["tuning"]["num_queries"] == 20
    assert summary["tuning"]["reached"] and summary["tuning"]["recall"] >= 0.95
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["tuning"]["trials"] and meta["settings"]["target_recall"] == 0.95
    np.save(tmp_path / "bad_q.npy", np.zeros((3, 5), np.float32))
    assert main(["index", "--embeddings", str(tmp_path / "docs.npy"), "--ids", str(tmp_path / "doc_ids.txt"),
                 "--mode", "tree_ah", "--tune-queries", str(tmp_path / "bad_q.npy"), "--out",
                 str(tmp_path / "idx2")]) == 1
    assert "bad_q.npy: expected [num_queries, 16] query embeddings, got shape (3, 5)" in capsys.readouterr().err


def test_search_without_out_prints_top_results_with_texts(tmp_path, capsys):
    docs, queries = _embeddings(tmp_path)
    assert main(["index", "--embeddings", str(tmp_path / "docs.npy"), "--ids", str(tmp_path / "doc_ids.txt"),
                 "--out", str(tmp_path / "idx")]) == 0
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"text of document {i}"}) + "\n"
                                                   for i in range(60)))
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(tmp_path / "q.npy"),
                 "--query-ids", str(tmp_path / "q_ids.txt"), "--k", "10", "--show", "2",
                 "--corpus", str(tmp_path / "corpus.jsonl")]) == 0
    printed = capsys.readouterr().out.splitlines()
    best = int(np.argmax(queries[0] @ docs.T))
    at = printed.index("q0: top 2")
    assert printed[at + 1].split()[:3] == ["1.", f"{float(queries[0] @ docs[best]):.4f}", f"d{best}"]
    assert printed[at + 1].endswith(f"text of document {best}") and printed[at + 2].lstrip().startswith("2.")
    assert not list(tmp_path.glob("*.trec"))  # nothing written


def test_output_that_would_replace_an_input_is_refused_before_any_work(tmp_path, capsys):
    """`t1 index --store S --out S` used to overwrite the store's meta.json (store unreadable, corpus to re-encode);
    `t1 embed --queries q.jsonl --out q.jsonl` replaced the queries with embeddings. Every command refuses an output
    path that is one of its inputs, with both arguments named, and leaves the inputs as they were."""
    from t1_jax.retrieval.store import EmbeddingStore, encode_corpus

    rng = np.random.default_rng(6)
    table = _unit(rng.standard_normal((12, D)))
    store = tmp_path / "store"
    encode_corpus([(f"d{i}", str(i)) for i in range(12)], lambda texts: table[[int(t) for t in texts]], str(store),
                  batch_size=4, dtype="float32", fingerprint="enc")
    meta = (store / "meta.json").read_bytes()
    assert main(["index", "--store", str(store), "--out", str(store)]) == 1
    assert f"--out {store} would overwrite the input --store {store}" in capsys.readouterr().err
    assert (store / "meta.json").read_bytes() == meta and EmbeddingStore.open(str(store)).read().shape == (12, D)

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "q0", "query": "alpha"}) + "\n")
    before = queries.read_bytes()
    assert main(["embed", "--checkpoint", str(tmp_path / "no-model"), "--queries", str(queries), "--out",
                 str(queries)]) == 1  # refused before the (missing) model is even looked at
    assert "would overwrite the input --queries" in capsys.readouterr().err and queries.read_bytes() == before
    npy_sidecar = tmp_path / "e.ids.txt"  # --out e.npy also writes e.ids.txt
    npy_sidecar.write_text("x\n")
    assert main(["embed", "--checkpoint", str(tmp_path / "no-model"), "--queries", str(npy_sidecar), "--out",
                 str(tmp_path / "e.npy")]) == 1
    assert f"{npy_sidecar} would overwrite the input --queries" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(tmp_path / "no-model"), "--queries", str(queries), "--out",
                 str(tmp_path / "q.npy")]) == 1  # used to say "no tokenizer given"
    assert f"--checkpoint {tmp_path / 'no-model'} does not exist" in capsys.readouterr().err

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for argv in (["train", "--config", "experiments/tiny_stage1.py", "--workdir", str(a_file)],
                 ["index", "--store", str(store), "--out", str(a_file)]):
        assert main(argv) == 1  # was a FileExistsError traceback (train) or a tensorstore error
        assert f"{a_file} is a file; it must be a folder" in capsys.readouterr().err

    run = tmp_path / "r.trec"
    run.write_text("q0 Q0 d0 1 1.0 t\n")
    assert main(["eval", "--no-bm25", "--run", f"mine={run}", "--out", str(run)]) == 1
    assert "would overwrite the input --run" in capsys.readouterr().err and run.read_text() == "q0 Q0 d0 1 1.0 t\n"
