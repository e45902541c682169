"""Metric parity with pytrec_eval (the C trec_eval) and TREC run IO."""
import random

import pytest
import pytrec_eval

from t1_jax.data.readers import DataError
from t1_jax.retrieval import metrics, trec

KS = (1, 3, 10, 100)


def _reference(run, qrels, ks=KS):
    """Per-query metrics from pytrec_eval, renamed to ours. MRR@k = recip_rank of the run cut at trec_eval's top k."""
    measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}",
                f"map_cut.{','.join(map(str, ks))}", "map"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    out = {}
    for qid, m in full.items():
        out[qid] = {"MAP": m["map"]}
        for k in ks:
            out[qid][f"nDCG@{k}"] = m[f"ndcg_cut_{k}"]
            out[qid][f"Recall@{k}"] = m[f"recall_{k}"]
            out[qid][f"MAP@{k}"] = m[f"map_cut_{k}"]
            # cut the run with trec_eval's own ordering (our rank() is what is under test elsewhere: ties below)
            top = dict(sorted(run[qid].items(), key=lambda ds: (ds[1], ds[0]), reverse=True)[:k])
            out[qid][f"MRR@{k}"] = rr.evaluate({qid: top})[qid]["recip_rank"] if top else 0.0
    return out


def _random_case(seed, n_queries=40, n_docs=300):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 15))
        qrels[qid] = {d: rng.choice([0, 0, 1, 1, 2, 3]) for d in judged}
        if rng.random() < 0.15:
            continue  # a judged query missing from the run
        retrieved = rng.sample(docs, rng.randint(0, 150))
        # coarse scores -> many ties, which trec_eval breaks by document id
        run[qid] = {d: float(rng.randint(0, 8)) / 4 for d in retrieved}
    run["unjudged"] = {"d1": 1.0}
    return qrels, run


@pytest.mark.parametrize("seed", range(5))
def test_per_query_parity_with_pytrec_eval(seed):
    qrels, run = _random_case(seed)
    ours = metrics.per_query(run, qrels, KS)
    ref = _reference(run, qrels)
    assert set(ref) == {q for q in qrels if q in run}  # pytrec_eval drops absent queries
    for qid, ref_m in ref.items():
        for name, value in ref_m.items():
            assert ours[qid][name] == pytest.approx(value, abs=1e-6), (qid, name)


def test_missing_queries_score_zero_and_count_in_the_mean():
    qrels, run = _random_case(7)
    missing = [q for q in qrels if q not in run]
    assert missing
    means = metrics.evaluate_run(run, qrels, KS)
    ref = _reference(run, qrels)
    for name in metrics.metric_names(KS):
        assert means[name] == pytest.approx(sum(m[name] for m in ref.values()) / len(qrels), abs=1e-9)
    per_q = metrics.per_query(run, qrels, KS)
    assert all(v == 0.0 for q in missing for v in per_q[q].values())


def test_ties_are_broken_like_trec_eval():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0, "A": 1.0}}  # trec_eval ranks b, a, A (id descending)
    assert metrics.rank(run["q"]) == ["b", "a", "A"]
    ours = metrics.per_query(run, qrels, (1, 2))["q"]
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,2", "recip_rank"}).evaluate(run)["q"]
    assert ours["nDCG@1"] == ref["ndcg_cut_1"] == 0.0
    assert ours["nDCG@2"] == pytest.approx(ref["ndcg_cut_2"], abs=1e-12)
    assert ours["MRR@2"] == pytest.approx(ref["recip_rank"]) == 0.5


def test_excluded_ids_are_removed_before_scoring():
    qrels, run = _random_case(3)
    rng = random.Random(0)
    excluded = {q: set(rng.sample(sorted(run[q]), min(5, len(run[q])))) for q in qrels if q in run}
    ours = metrics.per_query(run, qrels, KS, excluded=excluded)
    pruned = {q: {d: s for d, s in docs.items() if d not in excluded.get(q, ())} for q, docs in run.items()}
    ref = _reference(pruned, qrels)
    changed = 0
    for qid, ref_m in ref.items():
        for name, value in ref_m.items():
            assert ours[qid][name] == pytest.approx(value, abs=1e-6), (qid, name)
        changed += ours[qid] != metrics.per_query(run, qrels, KS)[qid]
    assert changed > 0  # the exclusions mattered somewhere


def test_graded_ndcg_matches_hand_computation():
    import math

    qrels = {"q": {"a": 3, "b": 1, "c": 0, "z": 2}}
    run = {"q": {"b": 0.9, "a": 0.8, "c": 0.7}}
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    idcg = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert metrics.per_query(run, qrels, (3,))["q"]["nDCG@3"] == pytest.approx(dcg / idcg, abs=1e-12)


def test_run_file_round_trip(tmp_path):
    qrels, run = _random_case(11)
    path = str(tmp_path / "run.trec")
    trec.write_run(path, run, tag="bm25")
    back = trec.read_run(path)
    assert back == {q: d for q, d in run.items() if d}
    lines = open(path).read().splitlines()
    q0 = lines[0].split()[0]
    ranks = [int(x.split()[3]) for x in lines if x.split()[0] == q0]
    assert ranks == list(range(1, len(ranks) + 1))
    assert metrics.evaluate_run(back, qrels, KS) == metrics.evaluate_run(run, qrels, KS)


def test_run_reader_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.trec"
    path.write_text("q Q0 d 1 0.5 t\nq Q0 d 2 0.4 t\n")
    with pytest.raises(DataError, match=r"bad.trec:2: document 'd' appears twice"):
        trec.read_run(str(path))
    path.write_text("q Q0 d 1 x t\n")
    with pytest.raises(DataError, match=r"bad.trec:1: score 'x'"):
        trec.read_run(str(path))
    with pytest.raises(ValueError, match="must be finite"):
        trec.write_run(str(tmp_path / "out.trec"), {"q": {"d": 1.0, "e": float("nan")}})
    assert not (tmp_path / "out.trec").exists()
    for bad in ("nan", "inf", "-inf"):  # a nan would rank by line order: MRR 1.0 or 0.5 for the same run
        path.write_text(f"q Q0 d 1 0.5 t\nq Q0 e 2 {bad} t\n")
        with pytest.raises(DataError, match=rf"bad.trec:2: score '{bad}' is not finite"):
            trec.read_run(str(path))


def test_empty_qrels_is_a_clear_error():
    with pytest.raises(ValueError, match="qrels are empty"):
        metrics.evaluate_run({"q": {"d": 1.0}}, {})
