"""Training data: jsonl/BEIR loading with file:line errors and skip reports; the grain batch layout; resumable state."""
import json

import numpy as np
import pytest

from t1_jax import config as cfg_lib
from t1_jax.data.examples import doc_key, load_beir_examples, load_examples, load_jsonl_examples
from t1_jax.data.batch_spec import training_length
from t1_jax.data.pipeline import contrastive_batches
from t1_jax.data.readers import DataError


@pytest.fixture(scope="module")
def formatter(tmp_path_factory):
    from t1_jax.quickstart.task import PRESETS, generate_task
    from t1_jax.quickstart.tokenizer import train_tokenizer
    from t1_jax.text import formatter_from_config

    task = generate_task(PRESETS["fast"])
    tok = train_tokenizer(task.texts(), 400, str(tmp_path_factory.mktemp("tok")))
    text_cfg = cfg_lib.TextConfig(tokenizer=tok, max_query_tokens=128, max_doc_tokens=96, max_reasoning_tokens=64)
    return formatter_from_config(text_cfg)


def _write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def _rows(n, negatives=2):
    return [{"query": f"what is {i} times 3", "positives": [f"the number {i * 3} in words"],
             "negatives": [f"wrong answer {i * 3 + k + 1}" for k in range(negatives)],
             "reasoning": f"{i} * 3 = {i * 3}"} for i in range(n)]


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "train.jsonl", [_rows(1)[0], "", '{"query": "x", "positives": ["y"]', _rows(1)[0]])
    with pytest.raises(DataError, match=r"train\.jsonl:3: invalid JSON"):
        load_jsonl_examples(path)


@pytest.mark.parametrize("row,message", [
    ({"positives": ["a"]}, r"train\.jsonl:2: missing field 'query'"),
    ({"query": "q"}, r"train\.jsonl:2: missing field 'positives'"),
    ({"query": 3, "positives": ["a"]}, r"train\.jsonl:2: field 'query' must be str"),
    ({"query": "q", "positives": "a", "negatives": 5}, r"train\.jsonl:2: field 'negatives' must be a list"),
    ({"query": "q", "positives": ["a"], "reasoning": ["r"]}, r"train\.jsonl:2: field 'reasoning' must be str"),
])
def test_missing_and_mistyped_fields(tmp_path, row, message):
    path = _write(tmp_path / "train.jsonl", [_rows(1)[0], row])
    with pytest.raises(DataError, match=message):
        load_jsonl_examples(path)


def test_unusable_examples_are_reported_not_silently_dropped(tmp_path, caplog):
    rows = _rows(3) + [{"query": "q", "positives": []}, {"query": "  ", "positives": ["p"]},
                       {"query": "q2", "positives": ["", "p2"], "negatives": [""]}]
    path = _write(tmp_path / "train.jsonl", rows)
    examples, report = load_jsonl_examples(path)
    assert len(examples) == 4 and report.kept == 4
    assert report.skipped == {"no positive": [f"{path}:4"], "empty query": [f"{path}:5"]}
    assert report.empty_texts_removed == 2
    assert examples[-1].positives == ("p2",) and examples[-1].negatives == ()
    data_cfg = cfg_lib.DataConfig(train_path=path)
    with caplog.at_level("WARNING"):
        load_examples(data_cfg)
    assert "2 skipped" not in caplog.text and "1 skipped (no positive" in caplog.text
    assert f"{path}:4" in caplog.text


def test_stage2_requires_reasoning(tmp_path):
    rows = _rows(2)
    del rows[1]["reasoning"]
    path = _write(tmp_path / "train.jsonl", rows)
    examples, report = load_jsonl_examples(path, require_reasoning=True)
    assert len(examples) == 1 and list(report.skipped) == ["no reasoning (stage 2 needs a teacher trace)"]


def test_ids_resolved_through_a_corpus(tmp_path):
    corpus = _write(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "alpha"},
                                                {"_id": "d2", "text": "beta"}])
    path = _write(tmp_path / "train.jsonl", [{"query": "q", "positives": ["d1"], "negatives": ["d2"]},
                                             {"query": "q", "positives": ["d3"]}])
    with pytest.raises(DataError, match=r"train\.jsonl:2: positives id 'd3' is not in the corpus"):
        load_jsonl_examples(path, corpus_path=corpus)


def test_beir_join_on_scifact(shared_data):
    examples, report = load_beir_examples(str(shared_data / "scifact"), "train")
    assert report.kept == len(examples) > 700  # SciFact's train split judges 809 queries
    assert all(e.positives and e.query for e in examples)


def test_batch_layout_and_duplicate_keys(tmp_path, formatter):
    rows = _rows(16, negatives=3)
    rows[1]["negatives"] = ["only one"]  # fewer than H: padding slots
    rows[2]["positives"] = rows[3]["positives"] = ["shared positive"]
    path = _write(tmp_path / "train.jsonl", rows)
    examples, _ = load_jsonl_examples(path)
    data_cfg = cfg_lib.DataConfig(train_path=path, num_hard_negatives=2, shuffle=False)
    batch = next(contrastive_batches(examples, formatter, data_cfg, 8, with_reasoning=True))
    per = 3
    assert batch["q_ids"].shape[0] == 8 and batch["d_ids"].shape[0] == 8 * per
    assert batch["q_ids"].shape[1] % 64 == 0 and batch["d_ids"].shape[1] % 64 == 0
    np.testing.assert_array_equal(batch["pos_col"], np.arange(8) * per)
    for i in range(8):
        assert batch["doc_keys"][i * per] in batch["pos_keys"][i]  # the labelled column is a positive
        last = batch["q_valid"][i].sum() - 1
        assert batch["q_ids"][i, last] == formatter.emb_token_id
        assert batch["q_loss"][i, last] == 1  # stage 2 trains the <embtoken> after the reasoning too
    assert batch["doc_keys"][2 * per] == batch["doc_keys"][3 * per] == doc_key("shared positive")
    assert list(batch["doc_keys"][1 * per + 1:1 * per + 3] == -1) == [False, True]  # one real negative, one padding
    assert batch["d_valid"][1 * per + 2].sum() == 1  # a padding slot still has one key for attention
    for j in range(8 * per):
        if batch["doc_keys"][j] != -1:
            assert batch["d_ids"][j, batch["d_valid"][j].sum() - 1] == formatter.emb_token_id


def test_iterator_state_resumes_same_batches(tmp_path, formatter):
    path = _write(tmp_path / "train.jsonl", _rows(20))
    examples, _ = load_jsonl_examples(path)
    data_cfg = cfg_lib.DataConfig(train_path=path, num_hard_negatives=1, seed=7)
    it = contrastive_batches(examples, formatter, data_cfg, 4, with_reasoning=False)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses an epoch boundary (20 examples / 4)
    fresh = contrastive_batches(examples, formatter, data_cfg, 4, with_reasoning=False)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_bucket_lengths():
    assert training_length(10, (32, 64)) == 32 and training_length(33, (32, 64)) == 64
    assert training_length(65, ()) == 128
    with pytest.raises(ValueError, match="exceeds the largest length bucket 64"):
        training_length(65, (32, 64))


def _budget_rows():
    """12 rows (lines 1-12) against max_query 128 / reasoning 64 / doc 96 tokens; one digit = one token here. Line 3's
    trace is one token over the budget, line 5's exactly on it, line 7's far over (with its own over-long positive,
    which must not be counted once the row is skipped); line 9's query and line 10's positive are cut."""
    rows = _rows(12)
    rows[2]["reasoning"] = "7" * 65
    rows[4]["reasoning"] = "7" * 64
    rows[6]["reasoning"], rows[6]["positives"] = "7" * 200, ["8" * 100]
    rows[8]["query"] = "what is " + "1" * 100
    rows[9]["positives"] = ["9" * 100]
    return rows


def test_token_budgets_counted_and_cut_traces_skipped(tmp_path, formatter, caplog):
    """Stage 2 skips examples whose teacher trace would be cut (and counts them); cut queries and documents are counted;
    the skipped rows never reach a batch; data.keep_cut_reasoning keeps them; stage 1 ignores the traces."""
    from t1_jax.data.budget import apply_budgets
    from t1_jax.mesh import make_mesh
    from t1_jax.stages.build import training_batches

    path = _write(tmp_path / "train.jsonl", _budget_rows())
    examples, _ = load_jsonl_examples(path)
    assert [len(formatter.tokenizer(e.reasoning, add_special_tokens=False)["input_ids"])
            for e in examples[2:7:2]] == [65, 64, 200]  # the rows are what they claim to be
    data_cfg = cfg_lib.DataConfig(train_path=path, global_batch_size=8, num_epochs=4, num_hard_negatives=2)
    cfg = cfg_lib.ExperimentConfig(text=formatter.cfg, data=data_cfg)
    with caplog.at_level("WARNING", logger="t1_jax.data.budget"):
        batches, metrics = training_batches(cfg, make_mesh(cfg.mesh), formatter, "query_with_reasoning")
    assert metrics == {"examples": 12, "examples_kept": 10, "queries_cut": 1, "traces_cut": 2, "traces_skipped": 2,
                       "documents": 30, "documents_cut": 1}
    line = [r.getMessage() for r in caplog.records if r.name == "t1_jax.data.budget"]
    assert line == [f"training data: 12 examples; 2 teacher traces longer than text.max_reasoning_tokens=64 skipped "
                    f"({path}:3, {path}:7); 1 of the 10 trained queries cut to text.max_query_tokens=128 ({path}:9); "
                    f"1 of 30 documents cut to text.max_doc_tokens=96"]

    kept = [e for i, e in enumerate(examples) if i not in (2, 6)]
    encoded = formatter.encode_many("query_with_reasoning", [(e.query, e.reasoning) for e in kept])
    source_of = {e.ids: x.source for e, x in zip(encoded, kept)}
    seen = set()
    for batch in batches:  # 4 epochs of the 10 kept examples: 5 batches of 8
        for ids, valid in zip(batch["q_ids"], batch["q_valid"]):
            seen.add(source_of[tuple(int(t) for t in ids[:valid.sum()])])  # KeyError: a row that is not kept
    assert seen == {e.source for e in kept}

    _, report = apply_budgets(examples, formatter, "query_with_reasoning", keep_cut_reasoning=True)
    assert report.metrics() == {"examples": 12, "examples_kept": 12, "queries_cut": 1, "traces_cut": 2,
                                "traces_skipped": 0, "documents": 36, "documents_cut": 2}
    assert "kept, cut there (data.keep_cut_reasoning)" in str(report)
    stage1, report = apply_budgets(examples, formatter, "query_direct")
    assert len(stage1) == 12 and report.traces_cut == [] and report.queries_cut == [f"{path}:9"]


def test_nothing_left_after_skipping_cut_traces_is_an_error(tmp_path, formatter):
    from t1_jax.data.budget import apply_budgets

    path = _write(tmp_path / "train.jsonl", [{**row, "reasoning": "7" * 65} for row in _rows(2)])
    examples, _ = load_jsonl_examples(path)
    with pytest.raises(DataError, match="every one of the 2 training examples has a teacher trace longer than "
                                        "text.max_reasoning_tokens=64: raise it, or set data.keep_cut_reasoning=true"):
        apply_budgets(examples, formatter, "query_with_reasoning")
