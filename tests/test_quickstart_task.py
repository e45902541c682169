"""The quickstart's synthetic task and tokenizer: determinism, no lexical shortcut, valid files, exact round trips."""
import dataclasses
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from t1_jax.config import TextConfig
from t1_jax.quickstart.task import (KINDS, PRESETS, Problem, TaskConfig, answer_in_reasoning, generate_task, near_misses, number_words, teacher_reasoning, words_to_number, write_task)
from t1_jax.quickstart.tokenizer import SPECIAL_TOKENS, text_config, tokenizer_texts, train_tokenizer
from t1_jax.text import T1Formatter, load_tokenizer

FAST = PRESETS["fast"]


def words(text):
    return set(re.findall(r"[a-z]+|\d+", text.lower()))


def answer_in_query(text):
    """The number a query asks for, read from its text alone (independent of the generator's bookkeeping)."""
    a, b = map(int, re.findall(r"\d+", text))
    return a + b if re.search(r"\b(plus|sum|add)\b", text) else a * b


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def tree_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def task():
    return generate_task(FAST)


@pytest.fixture(scope="module")
def files(task, tmp_path_factory):
    return write_task(task, str(tmp_path_factory.mktemp("task")))


@pytest.fixture(scope="module")
def tokenizer_dir(task, tmp_path_factory):
    cfg = text_config("")
    return train_tokenizer(tokenizer_texts(task.texts(), cfg), 1024, str(tmp_path_factory.mktemp("tok")))


def test_number_words():
    assert number_words(222) == "two hundred twenty-two"
    assert number_words(1422) == "one thousand four hundred twenty-two"
    assert number_words(8010) == "eight thousand ten"
    assert [number_words(n) for n in (0, 13, 90, 100, 1000)] == ["zero", "thirteen", "ninety", "one hundred",
                                                                 "one thousand"]
    assert all(words_to_number(number_words(n)) == n for n in range(10_000))
    assert len({number_words(n) for n in range(10_000)}) == 10_000
    assert words_to_number("two hundred and five") is None and words_to_number("hundred") is None


def test_teacher_reasoning_is_correct_arithmetic():
    assert (teacher_reasoning(Problem("mul_2x1", 37, 6))
            == "37 * 6 = 30 * 6 + 7 * 6 = 180 + 42 = 222, two hundred twenty-two")
    assert teacher_reasoning(Problem("mul_2x1", 40, 6)) == "40 * 6 = 240, two hundred forty"
    assert (teacher_reasoning(Problem("mul_2x1", 37, 6), compact=True)
            == "37*6=30*6+7*6=180+42=222, two hundred twenty-two")
    stepwise = teacher_reasoning(Problem("mul_3x1", 237, 6), stepwise_sums=True)
    assert "1200 + 180 + 42 = 1380 + 42 = 1422" in stepwise
    for name, kind in KINDS.items():
        if kind.op != "mul":
            continue
        for p in kind.pool(name)[::37]:
            for stepwise, compact in itertools.product((False, True), (False, True)):
                trace = teacher_reasoning(p, stepwise, compact)
                expressions, words_part = trace.rsplit(", ", 1)
                # every side of the chain evaluates (independently, by Python) to the product
                for side in expressions.split("=" if compact else " = "):
                    assert re.fullmatch(r"[\d *+]+", side) and eval(side) == p.a * p.b, (trace, side)  # noqa: S307
                assert words_part == number_words(p.a * p.b) and answer_in_reasoning(trace) == p.a * p.b


def test_column_addition_is_exact_and_fixed_width():
    from t1_jax.quickstart.task import column_addition, shortcut_reasoning

    assert (teacher_reasoning(Problem("add_2x2", 37, 85), compact=True)
            == "7+5+0=12,3+8+1=12:122, one hundred twenty-two")
    assert (teacher_reasoning(Problem("add_3x3", 937, 485), compact=True, words=False)
            == "7+5+0=12,3+8+1=12,9+4+1=14:1422")
    assert teacher_reasoning(Problem("add_2x2", 10, 10)) == "0 + 0 + 0 = 00, 1 + 1 + 0 = 02: 20, twenty"
    assert shortcut_reasoning(Problem("add_2x2", 37, 85), compact=True) == "~40+90=130, one hundred thirty"
    assert shortcut_reasoning(Problem("add_2x2", 34, 56), compact=True, words=False) == "~30+60=90"  # cancels
    rng = np.random.default_rng(0)
    for name in ("add_2x2", "add_3x3"):
        kind = KINDS[name]
        for a, b in zip(rng.integers(kind.a_range[0], kind.a_range[1] + 1, 300),
                        rng.integers(kind.b_range[0], kind.b_range[1] + 1, 300)):
            p = Problem(name, int(a), int(b))
            trace = teacher_reasoning(p, compact=True)
            columns, digits_words = trace.split(":")
            assert p.answer == a + b
            carry = 0
            for i, column in enumerate(columns.split(",")):  # ones first, each "x+y+c=ss", every one 9 characters
                assert re.fullmatch(r"\d\+\d\+[01]=\d\d", column), trace
                x, y, c, total = map(int, re.findall(r"\d+", column))
                assert (x, y, c) == (a // 10 ** i % 10, b // 10 ** i % 10, carry) and total == x + y + c
                carry = total // 10
            assert digits_words == f"{a + b}, {number_words(int(a + b))}" and answer_in_reasoning(trace) == a + b
            no_carry = column_addition(p, carries=False, compact=True)
            assert "+1=" not in no_carry
            estimate = answer_in_reasoning(shortcut_reasoning(p, compact=True))
            assert estimate == (a + 5) // 10 * 10 + (b + 5) // 10 * 10  # rounds both operands, loses the exact sum


def test_large_kinds_are_sampled_without_repeats():
    cfg = TaskConfig(num_train=3000, num_test=50, num_grpo=40, kinds=(("add_3x3", 1.0),), num_distractor_docs=0)
    task = generate_task(cfg)
    splits = [{q.problem for q in getattr(task, split)} for split in ("train", "test", "grpo")]
    assert [len(s) for s in splits] == [3000, 50, 40]  # distinct within each split ...
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])  # ... and across them
    assert [q.text for q in generate_task(cfg).test] == [q.text for q in task.test]
    with pytest.raises(ValueError, match="do not exist"):
        KINDS["add_2x2"].sample("add_2x2", __import__("random").Random(0), 9000)


def test_same_seed_same_task_different_seed_different(task, files, tmp_path):
    again = write_task(generate_task(FAST), str(tmp_path / "again"))
    assert tree_digest(again.root) == tree_digest(files.root)
    other = generate_task(dataclasses.replace(FAST, seed=1))
    assert [q.text for q in other.test] != [q.text for q in task.test]
    # and in a fresh interpreter with another hash seed (set iteration order must not leak into the task)
    code = ("import sys; from t1_jax.quickstart.task import main; sys.exit(main(['--fast', '--out', sys.argv[1]], "
            "lambda s: None))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "sub")], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(__file__)))
    assert tree_digest(tmp_path / "sub") == tree_digest(files.root)


def test_query_and_relevant_document_share_no_word(task):
    for q in task.train + task.test:
        positive = task.doc(q.positive_id).text
        assert not words(q.text) & words(positive), (q.text, positive)
        # ... while the positive document states the answer, and the teacher's exact trace ends in it
        assert positive.count(number_words(q.problem.answer)) == 1
        if not q.shortcut:
            assert answer_in_reasoning(q.reasoning) == q.problem.answer
            assert q.reasoning.endswith(f", {number_words(q.problem.answer)}" if FAST.answer_words
                                        else f":{q.problem.answer}")


def test_sums_task_keeps_the_generator_guarantees(tmp_path):
    """The stage-3 experiments' sums task: no shared word between a query and its document, exact labels and near
    misses, the splits disjoint (GRPO and held-out problems unseen by stages 1-2), the same files for the same seed."""
    from t1_jax.quickstart.task import SUMS

    cfg = dataclasses.replace(SUMS, num_train=1500)
    task = generate_task(cfg)
    for q in task.train + task.test + task.grpo:
        positive = task.doc(q.positive_id)
        assert not words(q.text) & words(positive.text), (q.text, positive.text)
        assert positive.value == answer_in_query(q.text) == q.problem.answer
        assert all(task.doc(n).value in near_misses(q.problem) for n in q.negative_ids)
    problems = [{q.problem for q in getattr(task, split)} for split in ("train", "test", "grpo")]
    assert not (problems[0] & problems[1] or problems[0] & problems[2] or problems[1] & problems[2])
    assert len(problems[1]) == len(task.test) and len(problems[2]) == len(task.grpo) == 400
    a = write_task(task, str(tmp_path / "a"))
    b = write_task(generate_task(cfg), str(tmp_path / "b"))
    assert tree_digest(a.root) == tree_digest(b.root)
    held = read_jsonl(a.heldout_jsonl)  # held-out traces end in the answer's digits, readable by answer_in_reasoning
    assert all(answer_in_reasoning(h["reasoning"]) == h["answer"] and h["reasoning"].endswith(f":{h['answer']}")
               for h in held)


def test_subword_overlap_is_small(task, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    vocab = {i: t for t, i in tok.get_vocab().items()}

    def content(text):  # tokens with a letter or digit; whitespace and punctuation carry no meaning here
        return {i for i in tok.encode(text) if re.search(r"[A-Za-z0-9]", vocab[i])}

    overlaps = []
    for q in task.test + task.train[:200]:
        qt, dt = content(q.text), content(task.doc(q.positive_id).text)
        overlaps.append(len(qt & dt) / len(qt | dt))
    assert np.mean(overlaps) < 0.05, np.mean(overlaps)  # measured 0.0 for both presets


def test_splits_labels_and_negatives_are_consistent(task):
    ids = [d.doc_id for d in task.corpus]
    assert len(set(ids)) == len(ids)
    values = [d.value for d in task.corpus]
    assert len(set(values)) == len(values)  # one document per number
    for d in task.corpus:
        stated = re.sub(r"^(record \S+ holds |ledger \S+ shows |entry \S+: amount )", "", d.text)
        stated = re.sub(r", filed as \S+$", "", stated.rstrip("."))
        assert words_to_number(stated) == d.value, d.text
    for q in task.train + task.test + task.grpo:
        answer = answer_in_query(q.text)  # independent of the generator's bookkeeping
        assert task.doc(q.positive_id).value == answer
        assert all(task.doc(n).value != answer for n in q.negative_ids)
        assert all(task.doc(n).value in near_misses(q.problem) for n in q.negative_ids)
    assert all(len(q.negative_ids) == FAST.num_hard_negatives for q in task.train)
    train_pairs = {(q.problem.a, q.problem.b) for q in task.train}
    test_pairs = {(q.problem.a, q.problem.b) for q in task.test}
    assert not train_pairs & test_pairs and len(test_pairs) == len(task.test)
    assert len(task.train) == FAST.num_train and len(task.test) == FAST.num_test
    # near misses of held-out answers are in the corpus, so retrieval must be exact, not approximate
    corpus_values = set(values)
    assert all(set(near_misses(q.problem)[:6]) <= corpus_values for q in task.test)


def test_difficulty_mix_follows_the_weights():
    task = generate_task(TaskConfig(num_train=1000, num_test=100, kinds=(("mul_2x1", 0.6), ("mul_3x1", 0.4))))
    assert sum(q.problem.kind == "mul_3x1" for q in task.train) == 400
    assert sum(q.problem.kind == "mul_3x1" for q in task.test) == 40
    with pytest.raises(ValueError, match="unknown problem kind 'div'"):
        generate_task(TaskConfig(kinds=(("div", 1.0),)))
    with pytest.raises(ValueError, match="leave none to train on"):
        generate_task(TaskConfig(num_test=800, kinds=(("mul_2x1", 1.0),)))


def test_files_are_plain_jsonl_and_beir(task, files):
    assert len(task.grpo) == FAST.num_grpo and files.grpo_jsonl.endswith("grpo.jsonl")  # stage 3's own queries
    no_grpo = write_task(generate_task(dataclasses.replace(FAST, num_grpo=0)), files.root + "-no-grpo")
    assert no_grpo.grpo_jsonl == no_grpo.train_jsonl  # without a GRPO split stage 3 samples the training queries
    train = read_jsonl(files.train_jsonl)
    assert len(train) == len(task.train)
    for row in train:
        assert set(row) == {"query", "positives", "negatives", "reasoning"}
        assert isinstance(row["query"], str) and isinstance(row["reasoning"], str)
        assert len(row["positives"]) == 1 and all(isinstance(t, str) for t in row["positives"] + row["negatives"])
        assert number_words(answer_in_query(row["query"])) in row["positives"][0]
    corpus = read_jsonl(os.path.join(files.beir_dir, "corpus.jsonl"))
    queries = read_jsonl(os.path.join(files.beir_dir, "queries.jsonl"))
    assert all(set(d) == {"_id", "title", "text"} for d in corpus)
    assert all(set(q) == {"_id", "text"} for q in queries)
    with open(os.path.join(files.beir_dir, "qrels", "test.tsv"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    qrels = [line.split("\t") for line in lines[1:]]
    doc_text = {d["_id"]: d["text"] for d in corpus}
    query_text = {q["_id"]: q["text"] for q in queries}
    assert len(qrels) == len(queries) and {q for q, _, _ in qrels} == set(query_text)
    for qid, did, score in qrels:
        assert score == "1" and number_words(answer_in_query(query_text[qid])) in doc_text[did]
    heldout = read_jsonl(files.heldout_jsonl)
    assert [h["query_id"] for h in heldout] == [q["_id"] for q in queries]
    meta = json.load(open(files.meta_json))
    assert meta["num_docs"] == len(corpus) and meta["config"]["seed"] == FAST.seed


@pytest.mark.parametrize("kind,answer_words", [("mul_2x1", True), ("add_2x2", True), ("add_2x2", False)])
def test_bm25_cannot_match_queries_but_matches_reasoning(kind, answer_words):
    """The lexical baseline fails on the queries; teacher reasoning that ends in the documents' words finds the target
    (traces that end in digits, as in the sums task, cannot be matched either)."""
    task = generate_task(dataclasses.replace(FAST, kinds=((kind, 1.0),), answer_words=answer_words))
    bm25s = pytest.importorskip("bm25s")
    pytrec_eval = pytest.importorskip("pytrec_eval")
    corpus_ids = [d.doc_id for d in task.corpus]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d.text for d in task.corpus], show_progress=False), show_progress=False)
    qrels = task.qrels()
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})

    def ndcg(texts):
        docs, scores = retriever.retrieve(bm25s.tokenize(texts, show_progress=False), k=10, show_progress=False)
        # like Lucene, a document that matches no query term is not retrieved (zero scores would rank arbitrarily)
        run = {q.query_id: {corpus_ids[d]: float(s) + 1e-6 * (10 - r) for r, (d, s) in enumerate(zip(ds, ss)) if s > 0}
               for q, ds, ss in zip(task.test, docs, scores)}
        return np.mean([m["ndcg_cut_10"] for m in evaluator.evaluate(run).values()])

    assert ndcg([q.text for q in task.test]) == 0.0  # no query shares a term with any document
    with_reasoning = ndcg([q.reasoning for q in task.test])
    assert with_reasoning > 0.5 if answer_words else with_reasoning == 0.0


def test_tokenizer_round_trip_and_formats(task, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok) <= 1024
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]  # <embtoken> present, not re-added
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 2)
    vocab = {i: t for t, i in tok.get_vocab().items()}
    for text in list(task.texts())[:500] + ["unseen: Ünïcode, tabs\tand 9876543210 <embtoken>!"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert all(len(vocab[i]) == 1 for i in ids if re.search(r"\d", vocab[i])), "a digit token holds >1 char"
    assert [vocab[i] for i in tok.encode("1234")] == ["1", "2", "3", "4"]
    from transformers import AutoTokenizer  # plain transformers loads the folder too

    assert AutoTokenizer.from_pretrained(tokenizer_dir).encode("37 times 6") == tok.encode("37 times 6")
    fmt = T1Formatter(tok, text_config(tokenizer_dir))
    q = task.test[0]
    enc = fmt.query_with_reasoning(q.text, q.reasoning)
    cfg = text_config(tokenizer_dir)
    assert fmt.decode(enc.ids) == (f"<|im_start|>user\n{cfg.query_instruction}\nQuery: {q.text}<|im_end|>\n"
                                   f"<|im_start|>assistant\n{q.reasoning}<embtoken>")
    assert fmt.emb_token_id == 3 and fmt.eos_token_ids == (2, 0) and fmt.pad_token_id == 0
    assert fmt.decode_reasoning(enc.ids[len(fmt.query_prompt(q.text).ids):]) == q.reasoning
    # instructions and chat roles are whole tokens, so prompts stay short
    assert len(fmt.query_prompt(q.text).ids) < 40 and not any(e.truncated for e in fmt.encode_many(
        "query_with_reasoning", [(x.text, x.reasoning) for x in task.train]))
    with pytest.raises(ValueError, match="vocab_size must exceed 260"):
        train_tokenizer(["a"], 100, "unused")


def test_text_config_is_valid():
    assert TextConfig.validate(text_config("x")) == []


def test_prepare_writes_task_and_tokenizer(tmp_path):
    from t1_jax.quickstart import prepare
    from t1_jax.text import formatter_from_config

    prepared = prepare(str(tmp_path), fast=True)
    assert os.path.isfile(prepared.files.train_jsonl) and os.path.isfile(prepared.files.meta_json)
    assert os.path.isfile(os.path.join(prepared.tokenizer_dir, "tokenizer.json"))
    fmt = formatter_from_config(prepared.text)
    row = read_jsonl(prepared.files.train_jsonl)[0]
    enc = fmt.query_with_reasoning(row["query"], row["reasoning"])
    assert fmt.decode_reasoning(enc.ids[-sum(enc.loss_mask):]) == row["reasoning"]


def test_grpo_split_is_disjoint_and_has_no_teacher_traces(tmp_path):
    task = generate_task(dataclasses.replace(FAST, num_grpo=16))
    pairs = {split: {(q.problem.a, q.problem.b) for q in getattr(task, split)} for split in ("train", "test", "grpo")}
    assert len(pairs["grpo"]) == len(task.grpo) == 16
    assert not pairs["grpo"] & (pairs["train"] | pairs["test"]) and not pairs["train"] & pairs["test"]
    for q in task.grpo:  # every GRPO query's positive states its product; its negatives are near misses
        assert task.doc(q.positive_id).value == answer_in_query(q.text)
        assert all(task.doc(n).value in near_misses(q.problem) for n in q.negative_ids)
    files = write_task(task, str(tmp_path / "t"))
    rows = read_jsonl(files.grpo_jsonl)  # stage 3 sees queries and documents, never a teacher trace
    assert files.grpo_jsonl.endswith("grpo.jsonl") and len(rows) == 16
    assert all(set(row) == {"query", "positives", "negatives"} for row in rows)
    assert json.load(open(files.meta_json))["num_grpo"] == 16


def test_imperfect_teacher_takes_its_shortcut_only_where_configured():
    from t1_jax.quickstart.task import (ADD_QUERY_TEMPLATES, QUERY_TEMPLATES, SUMS, query_templates,
                                        shortcut_reasoning)

    assert shortcut_reasoning(Problem("mul_2x1", 37, 6), compact=True) == "37*6=40*6=240, two hundred forty"
    assert shortcut_reasoning(Problem("mul_2x1", 95, 3), compact=True) == "95*3=100*3=300, three hundred"
    products = TaskConfig(num_test=160, kinds=(("mul_2x1", 1.0),))  # the products task of earlier quickstarts
    for cfg in (dataclasses.replace(products, shortcut_templates=(3,), shortcut_rate=0.7, num_grpo=100),
                SUMS):  # the quickstart's task: sums, the shortcut on two of the four phrasings
        task = generate_task(cfg)
        on = [q for q in task.train if q.template in cfg.shortcut_templates]
        off = [q for q in task.train if q.template not in cfg.shortcut_templates]
        rate = sum(q.shortcut for q in on) / len(on)
        want = cfg.shortcut_rate  # on those phrasings at about the configured rate, never elsewhere
        assert want - 0.05 < rate < want + 0.05 and not any(q.shortcut for q in off)
        for q in task.train:
            assert q.text == query_templates(q.problem.op)[q.template].format(a=q.problem.a, b=q.problem.b)
            a, b = q.problem.a, q.problem.b
            estimate = ((a + 5) // 10 * 10 + (b + 5) // 10 * 10 if q.problem.op == "add"
                        else max(10, (a + 5) // 10 * 10) * b)
            assert answer_in_reasoning(q.reasoning) == (estimate if q.shortcut else q.problem.answer), q
        # Held-out and GRPO queries never carry the teacher's shortcut (their traces are diagnostics / absent).
        assert not any(q.shortcut for q in task.test + task.grpo)
        assert all(answer_in_reasoning(q.reasoning) == q.problem.answer for q in task.test)
    assert {q.text.split()[0] for q in generate_task(SUMS).test} <= {t.split()[0] for t in ADD_QUERY_TEMPLATES}
    # Without the shortcut, seed 0 of the products task draws the queries it drew before the shortcut (and the sums)
    # existed (one draw per phrasing, as rng.choice did): the first ones, recorded from the earlier generator.
    plain = generate_task(products)
    assert [q.text for q in plain.test[:3]] == ["find the product of 48 and 5.", "compute 70 times 7.",
                                               "compute 74 times 2."]
    assert plain.train[0].reasoning == "26*6=20*6+6*6=120+36=156, one hundred fifty-six"
    assert QUERY_TEMPLATES[3] == "find the product of {a} and {b}."
