"""``t1 generate``: teacher traces for stage 2 from a tiny random Qwen3 with the real Qwen3 tokenizer.

A run killed with SIGKILL (a subprocess, killed halfway) and run again, with a torn last line added
as a kill mid-write would leave it, writes exactly the bytes an uninterrupted run writes; a tiny stage 2 trains on
the output unchanged; bad input names its file:line and an unwritable --out is refused before anything loads.

The teacher's LM head is untied and its ``<|im_end|>`` row set to a larger random direction, so that greedy decoding
stops on its own for some queries (43 of the 200) and at the budget for the others (a random head never stops). The
run to be killed starts first, in a subprocess, and runs beside the in-process work (the uninterrupted run, then
stage 2: the two cores of a small CI host both work); a watcher thread kills it once OUT holds half the traces.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO
from tests.test_readme_typical_run import qwen3_tokenizer_files
from t1_jax import cli
from t1_jax.teacher_io import ChunkFiles, cut_torn_tail

N = 200
VOCAB = 151680  # the real tokenizer (151669 tokens) + <embtoken>, rounded up to a multiple of 128
GEN = ["--set", "sampling.max_new_tokens=6", "sampling.prompt_buckets=256", "text.max_query_tokens=256",
       "--batch-size", "40", "--chunk-rows", "40"]
TOPICS = ["volcano", "violin", "glacier", "bakery", "comet", "harbor", "orchid", "robot", "tax", "river"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A `t1 convert hf-to-t1`-shaped folder: model_config.json, params/, tokenizer/ (with <embtoken>)."""
    from flax import nnx

    from t1_jax.config import ModelConfig
    from t1_jax.model import Qwen3
    from t1_jax.model.params_io import save_model
    from t1_jax.text import load_tokenizer

    root = tmp_path_factory.mktemp("teacher")
    tok = load_tokenizer(str(qwen3_tokenizer_files()))
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, tie_word_embeddings=False,
                      emb_token_id=tok.convert_tokens_to_ids("<embtoken>"))
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    head = np.array(model.lm_head[...])
    head[tok.convert_tokens_to_ids("<|im_end|>")] = 0.07 * np.random.default_rng(0).standard_normal(32)
    model.lm_head[...] = head
    save_model(str(root / "model"), model)
    tok.save_pretrained(str(root / "model" / "tokenizer"))
    return root / "model"


def _rows():
    return [{"query": f"Why does the {t} number {i} behave this way?" + " More words." * (i % 9),
             "positives": [f"A {t} fact, number {i}."], "negatives": [f"Unrelated note {i}."], "extra": {"n": i}}
            for i, t in enumerate(TOPICS[i % len(TOPICS)] for i in range(N))]


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


def _argv(teacher, queries, out):
    return ["generate", "--checkpoint", str(teacher), "--queries", str(queries), "--out", str(out), *GEN]


@pytest.fixture(scope="module")
def killed(teacher, queries, tmp_path_factory):
    """A subprocess run of the same command, SIGKILLed by a watcher thread once OUT holds half the traces."""
    out = tmp_path_factory.mktemp("b") / "out.jsonl"
    log = open(out.parent / "log.txt", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "t1_jax.cli", *_argv(teacher, queries, out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)

    def watch():
        deadline = time.time() + 3600  # only against a hang: a loaded host may pause the subprocess for minutes
        while time.time() < deadline and proc.poll() is None and not (out.exists() and out.read_bytes().count(b"\n")
                                                                      >= N // 2):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # once half the traces are written (or at once if that never happens)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield proc, watcher, out
    proc.kill()
    log.close()


@pytest.fixture(scope="module")
def uninterrupted(teacher, queries, killed, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "out.jsonl"
    assert cli.main(_argv(teacher, queries, out)) == 0
    return out


def test_records_kept_with_reasoning_added(uninterrupted, capsys):
    rows = _rows()
    got = [json.loads(line) for line in uninterrupted.read_text().splitlines()]
    assert len(got) == N
    for i, (row, out) in enumerate(zip(rows, got)):
        assert {k: out[k] for k in row} == row  # every field kept, in input order
        assert out["teacher"]["id"] == f"line{i + 1}#0" and isinstance(out["reasoning"], str)
        assert out["teacher"]["tokens"] <= 6
    hits = [o for o in got if o["teacher"]["hit_budget"]]
    stopped = [o for o in got if not o["teacher"]["hit_budget"]]
    assert hits and stopped  # both ways of ending occur
    assert all(o["reasoning"] == "" and o["teacher"]["cut_reasoning"] for o in hits)  # cut traces: stage 2 skips
    assert all(o["teacher"]["tokens"] == 6 for o in hits) and all(o["teacher"]["tokens"] < 6 for o in stopped)
    assert any(o["reasoning"] for o in stopped)


def test_stage2_trains_on_the_output(teacher, uninterrupted, tmp_path):
    workdir = tmp_path / "stage2"
    kept = sum(bool(json.loads(x)["reasoning"]) for x in uninterrupted.read_text().splitlines())
    assert cli.main(["train", "--config", "experiments/tiny_stage2.py", "--workdir", str(workdir), "--set",
                     f"data.train_path={uninterrupted}", f"text.tokenizer={teacher / 'tokenizer'}",
                     f"model.vocab_size={VOCAB}", "model.hidden_size=32", "model.intermediate_size=64",
                     "model.num_layers=1", "model.head_dim=8", "mesh.fsdp=8", "mesh.tensor=1", "mesh.data=1",
                     "trainer.num_steps=2", "trainer.log_every=1", "optimizer.warmup_steps=0",
                     "data.length_buckets=64", "text.max_query_tokens=56", "text.max_doc_tokens=16"]) == 0
    report = json.loads((workdir / "data_report.json").read_text())
    assert report["examples"] == kept  # every record with a trace, none without
    metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["train/reasoning_ce"]) for m in metrics)


def test_killed_run_resumes_to_the_same_bytes_and_repairs_a_torn_line(teacher, queries, uninterrupted, killed,
                                                                      capsys):
    proc, watcher, out = killed
    watcher.join()
    assert proc.wait() == -signal.SIGKILL, (out.parent / "log.txt").read_text()[-3000:]
    lines = out.read_bytes().count(b"\n")
    assert N // 2 <= lines < N
    expected = uninterrupted.read_bytes()
    assert expected.startswith(out.read_bytes())
    with open(out, "ab") as f:  # a kill in the middle of a write leaves part of a line
        f.write(expected.split(b"\n")[lines][:25])
    capsys.readouterr()
    assert cli.main(_argv(teacher, queries, out)) == 0
    captured = capsys.readouterr()
    assert f"{out}: cut a partial last line (25 bytes) left by an interrupted run" in captured.err
    summary = json.loads(captured.out[captured.out.index("{"):])
    assert (summary["skipped_already_written"], summary["written"], summary["traces_in_out"]) == (
        lines, N - lines, N)
    assert out.read_bytes() == expected


def test_bad_input_names_file_and_line(tmp_path, capsys):
    cases = {
        '{"query": "a"}\n{"id": 1, "query": "b"}\n{"text": 3}\n': "{}:3: field 'text' must be str, got int",
        '{"id": "x", "query": "a"}\n\n{"id": "x", "query": "b"}\n': "{}:3: duplicate id 'x' (first at line 1)",
        '{"query": "a", "domain": "cooking"}\n': "{}:1: no teacher instruction for domain 'cooking'",
        '{"query": "a"}\n{"query": "b"\n': "{}:2: invalid JSON",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        rc = cli.main(["generate", "--checkpoint", str(tmp_path / "none"), "--queries", str(path), "--out",
                       str(tmp_path / "out.jsonl")])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("t1 generate: error: " + message.format(path)), err
        assert err.count("\n") == 1  # one line, no traceback; the (missing) checkpoint was never reached


def test_output_refused_before_any_work(tmp_path, queries, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, why in ((a_file / "out.jsonl", f"{a_file} is a file, not a folder"),
                     (queries, "would overwrite the input --queries")):
        rc = cli.main(["generate", "--checkpoint", str(tmp_path / "none"), "--queries", str(queries), "--out",
                       str(out)])
        err = capsys.readouterr().err
        assert rc == 1 and why in err and "does not exist" not in err, err
    foreign = tmp_path / "foreign.jsonl"  # a jsonl t1 generate did not write is never appended to
    foreign.write_text('{"query": "q"}\n')
    rc = cli.main(["generate", "--checkpoint", str(tmp_path / "none"), "--queries", str(queries), "--out",
                   str(foreign)])
    assert rc == 1 and f"{foreign}:1: not a line t1 generate writes" in capsys.readouterr().err


def test_torn_tail_and_chunk_files(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert cut_torn_tail(str(path), block=4) == 4 and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert cut_torn_tail(str(path)) == 0
    path.write_bytes(b'{"torn')
    assert cut_torn_tail(str(path), block=4) == 6 and path.read_bytes() == b""

    def line(i):
        return json.dumps({"q": i, "teacher": {"id": f"r{i}", "tokens": i, "hit_budget": False}}) + "\n"

    out = f"memory://{tmp_path.name}/out.jsonl"  # object storage: chunks as whole objects, merged in row order
    sink = ChunkFiles(out)
    sink.write(2, [line(2), line(3)])
    sink.write(0, [line(0)])
    assert sink.done() == {"r0", "r2", "r3"}
    metas = sink.finish([f"r{i}" for i in range(4)])
    assert [m["id"] for m in metas] == ["r0", "r2", "r3"]
    again = ChunkFiles(out)  # a later run sees the merged OUT as written, adds a chunk, merges in row order
    again.write(1, [line(1)])
    assert [m["id"] for m in again.finish([f"r{i}" for i in range(4)])] == ["r0", "r1", "r2", "r3"]


@pytest.mark.slow  # two more JAX processes start and compile: about as long as the rest of this file
def test_two_processes_write_what_one_writes(teacher, queries, uninterrupted, tmp_path):
    """2 processes x 4 devices (jax.distributed on localhost) form the same batches over the same 8-device mesh;
    process 0 alone writes OUT, from traces gathered across the processes."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.jsonl"
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4"}
    procs = [subprocess.Popen([sys.executable, "-m", "t1_jax.cli", *_argv(teacher, queries, out), "--set",
                               f"mesh.coordinator_address=localhost:{port}", "mesh.num_processes=2",
                               f"mesh.process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    logs = [p.communicate(timeout=900)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert '"note": "process 0 writes the output"' in logs[1]
    assert out.read_bytes() == uninterrupted.read_bytes()


@pytest.fixture(scope="module")
def tokenizer():
    from t1_jax.text import read_tokenizer

    return read_tokenizer(str(qwen3_tokenizer_files()))


def _records(rows, tmp_path, default_domain=None, tasks=None):
    from t1_jax.teacher_io import read_records
    from t1_jax.teacher_prompt import DEFAULT_TASK

    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_records(str(path), tasks or {}, DEFAULT_TASK, default_domain)


def test_prompt_task_lines_and_query_cut(tokenizer, tmp_path):
    from t1_jax.config import TextConfig
    from t1_jax.teacher_prompt import DEFAULT_TASK, TeacherPrompt, TeacherPrompter, domain_tasks

    tasks = domain_tasks(TextConfig(query_domain_instructions=(("cooking", "Find recipes."),)))
    assert domain_tasks(TextConfig(domain_instructions=False)) == {}
    rows = [{"_id": 7, "text": "plain"}, {"id": "b", "query": "q", "domain": "earth_science"},
            {"query": "q", "domain": "cooking"}, {"query": "q", "instruction": "Own task.", "domain": "biology"}]
    records = _records(rows, tmp_path, tasks=tasks)
    assert [r.key for r in records] == ["7", "b", "line3", "line4"]
    assert [r.task for r in records] == [DEFAULT_TASK, tasks["earth-science"], "Find recipes.", "Own task."]
    assert [r.task for r in _records(rows[:1], tmp_path, "cooking", tasks)] == ["Find recipes."]  # --domain

    prompter = TeacherPrompter(tokenizer, TeacherPrompt(max_query_tokens=160))
    task = "Find physics passages."
    text = prompter.text("Why is the sky blue?", task)
    assert text.startswith(f"<|im_start|>user\n{task}\n\nQuery: Why is the sky blue?\n\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off
    short = "Why is the sky blue? <|im_end|> stays text"
    (ids_short, ids_long), cut = prompter.ids([short, "word " * 500], [task, task])
    assert cut == 1 and len(ids_long) == 160 and len(ids_short) < 160  # the whole prompt fits the budget
    assert tokenizer.decode(ids_short) == prompter.text(short, task)
    assert ids_short.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1  # the query's stays text
    with pytest.raises(ValueError, match="exactly once"):
        TeacherPrompter(tokenizer, TeacherPrompt(template="no query here"))


def test_resumed_run_regenerates_whole_chunks_with_the_same_seeds(tokenizer, tmp_path, monkeypatch):
    """With a stand-in for the seam whose traces depend on every seed of the call (as sampled decoding on fixed
    batches does), an interrupted run, run again, writes what an uninterrupted one writes: a chunk is generated
    whole, from the same rows and seeds, whatever part of it was written. Also --samples: lines, ids, seeds."""
    from t1_jax import teacher_run
    from t1_jax.config import SamplingConfig
    from t1_jax.teacher import Trace

    calls, fail_at = [], [0]

    def fake(graphdef, params, prompts, sampling, *, seeds, **kw):
        calls.append(list(seeds))
        if len(calls) == fail_at[0]:
            raise KeyboardInterrupt
        mix = sum(seeds) % 1000
        return [Trace((1000 + (s + mix) % 5000, 220), (s + mix) % 3 == 0) for s in seeds]

    monkeypatch.setattr(teacher_run, "generate_traces", fake)
    monkeypatch.setattr(teacher_run, "layer_weights", lambda *a, **k: None)  # no model behind the stand-in seam
    records = _records([{"id": f"q{i}", "query": f"query {i}", "n": i} for i in range(7)], tmp_path)
    teacher = teacher_run.Teacher(None, None, tokenizer, None, 151645, (151643,), 151643)
    settings = teacher_run.GenerateSettings(SamplingConfig(temperature=0.7), batch_size=4, chunk_rows=4, samples=2)
    prompts = [[1, 2, 3]] * len(records)

    def run(out):
        return teacher_run.run_generation(teacher, records, prompts, teacher_run.open_output(out), settings, out)

    outputs = {}
    for name, root in (("local", str(tmp_path)), ("gs-like", f"memory://{tmp_path.name}")):
        fail_at[0], calls[:] = 0, []
        assert run(f"{root}/a.jsonl")["traces_in_out"] == 14
        whole, whole_calls = _read(f"{root}/a.jsonl"), list(calls)
        assert len(whole_calls) == 4  # 14 rows in chunks of 4
        fail_at[0], calls[:] = 3, []
        with pytest.raises(KeyboardInterrupt, match=r"keeps every trace written so far \(8 of 14\)"):
            run(f"{root}/b.jsonl")
        first_missing = 8
        if name == "local":
            assert _read(f"{root}/b.jsonl") == whole[:8]
            with open(f"{root}/b.jsonl", "r+") as f:  # as if a kill had come after 6 of the 8 lines
                f.truncate(len("".join(whole[:6])))
            first_missing = 6
        fail_at[0], calls[:] = 0, []
        assert run(f"{root}/b.jsonl")["written"] == 14 - first_missing
        assert _read(f"{root}/b.jsonl") == whole
        assert calls == whole_calls[first_missing // 4:]  # the partly written chunk again, whole, same seeds
        outputs[name] = whole
    assert outputs["local"] == outputs["gs-like"]
    got = [json.loads(line) for line in outputs["local"]]
    assert [g["id"] for g in got] == [f"q{i}#{k}" for i in range(7) for k in range(2)]  # unique, input order
    assert [g["teacher"]["sample"] for g in got] == [0, 1] * 7 and [g["n"] for g in got] == [i // 2 for i in range(14)]
    seeds = [s for c in whole_calls for s in c]
    assert len(set(seeds)) == 14  # every (record, sample) row draws from its own seed
    with pytest.raises(ValueError, match="greedy decoding would write one trace 2 times"):
        run_settings = teacher_run.GenerateSettings(SamplingConfig(), batch_size=4, chunk_rows=4, samples=2)
        teacher_run.run_generation(teacher, records, prompts, None, run_settings)


def _read(path):
    from t1_jax import fs

    return fs.read_text(path).splitlines(keepends=True) if fs.exists(path) else []


def test_generate_traces_batches_and_unpacks(monkeypatch):
    """The seam around sample(): length-sorted fixed batches left-padded to a bucket, short batches filled with copies
    of their first prompt, one key per batch from its rows' seeds, results in input order with the stop token (and an
    end-of-sequence token before it) dropped and budget hits marked."""
    import jax
    import jax.numpy as jnp

    from t1_jax import teacher
    from t1_jax.config import SamplingConfig
    from t1_jax.sampler import Rollout

    calls = []

    def fake_sample(graphdef, params, ids_bt, valid_bt, rng, cfg, *, emb_token_id, eos_token_ids, **kw):
        ids_bt, valid_bt = np.asarray(ids_bt), np.asarray(valid_bt)
        calls.append((ids_bt, valid_bt, tuple(np.asarray(jax.random.key_data(rng)).tolist()), emb_token_id,
                      eos_token_ids))
        last = ids_bt[:, -1]  # how each row ends: 0 draws the stop token, 1 an EOS first, 2 runs out of budget
        kind = last % 3
        tokens = np.stack([last, last + 1, np.where(kind == 1, 98, last + 2), np.full_like(last, 99)], axis=1)
        tokens[kind == 0, 2:] = [99, 0]
        lengths = np.where(kind == 0, 3, 4)
        return Rollout(jnp.asarray(tokens), jnp.zeros(tokens.shape), jnp.asarray(lengths), jnp.zeros((len(last), 2)),
                       jnp.asarray(kind == 2), jnp.asarray(kind == 1))

    monkeypatch.setattr(teacher, "sample", fake_sample)
    prompts = [[7] * n + [30 + i] for i, n in enumerate((2, 9, 4, 12, 1))]
    seeds = [11, 12, 13, 14, 15]
    args = dict(stop_id=99, eos_ids=(98, 99), batch_size=3, engine=False)
    traces = teacher.generate_traces(None, None, prompts, SamplingConfig(prompt_buckets=(8, 16)), seeds=seeds, **args)
    assert traces == [teacher.Trace((30, 31), False), teacher.Trace((31, 32), False),  # stop drawn; EOS then stop
                      teacher.Trace((32, 33, 34), True), teacher.Trace((33, 34), False), teacher.Trace((34, 35), False)]
    (ids1, valid1, key1, stop, eos), (ids2, valid2, key2, _, _) = calls
    assert (stop, eos) == (99, (98,))
    assert ids1.shape == (3, 16) and ids2.shape == (3, 8)  # longest first: prompts 3, 1, 2 then 0, 4 (+ a copy)
    assert [int(r[-1]) for r in ids1] == [33, 31, 32] and [int(r[-1]) for r in ids2] == [30, 34, 30]
    assert valid1.sum(axis=1).tolist() == [13, 10, 5] and not valid1[2, :11].any()  # left-padded
    again = teacher.generate_traces(None, None, prompts, SamplingConfig(prompt_buckets=(8, 16)), seeds=seeds, **args)
    assert again == traces and calls[2][2] == key1
    teacher.generate_traces(None, None, prompts, SamplingConfig(prompt_buckets=(8, 16)), seeds=[0] + seeds[1:], **args)
    assert calls[4][2] == key1 and calls[5][2] != key2  # a batch's key follows its own rows' seeds


def test_engine_and_batch_paths_give_the_same_greedy_traces():
    """The seam's two engines on a tiny random model whose stop token is likely (so traces end at different steps):
    greedy traces equal between continuous batching and fixed batches, the stop token dropped. (That a sampled trace
    depends on its own seed only is tests/test_engine.py's test_sampled_output_depends_only_on_the_sequence_seed.)"""
    import jax
    from flax import nnx

    from t1_jax import teacher
    from t1_jax.config import ModelConfig, SamplingConfig
    from t1_jax.model import Qwen3

    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, tie_word_embeddings=False, emb_token_id=255)
    model = Qwen3(cfg, rngs=nnx.Rngs(3))
    head = np.array(model.lm_head[...])
    head[5] = 0.05 * np.random.default_rng(1).standard_normal(32)  # the "chat end" token: some rows draw it early
    model.lm_head[...] = head
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(6, 250, size=n).tolist() for n in (3, 11, 6, 17, 2, 9, 5)]
    seeds = list(range(100, 107))
    args = dict(stop_id=5, eos_ids=(4,), max_new_tokens=12)
    greedy = SamplingConfig(prompt_buckets=(16, 32))
    on_engine = teacher.generate_traces(graphdef, params, prompts, greedy, seeds=seeds, batch_size=4, engine=True,
                                        **args)
    on_batches = teacher.generate_traces(graphdef, params, prompts, greedy, seeds=seeds, batch_size=4, engine=False,
                                         **args)
    assert on_engine == on_batches
    lengths = [len(t.token_ids) for t in on_engine]
    assert len(set(lengths)) > 1 and any(t.hit_budget for t in on_engine) and not all(t.hit_budget for t in on_engine)
    assert all(5 not in t.token_ids for t in on_engine)  # the stop token is not part of a trace

    assert jax.process_count() == 1


def test_filter_ranks_the_positive_among_its_own_candidates(tmp_path):
    """--filter's scorers on hand-made records: BM25 over query + trace keeps a trace that names the positive's
    words and drops one that names a negative's; ties count against the positive; records without a negative are
    unjudged (kept); malformed candidates name file:line."""
    from t1_jax.data.readers import DataError
    from t1_jax.teacher_filter import FilterSettings, make_scorer, rank_of_positive, verdict

    assert rank_of_positive(np.array([0.5, 0.2, 0.9, 0.5]), 1) == 3  # one negative above, one tied: rank 3
    assert rank_of_positive(np.array([0.1, 0.7, 0.2]), 2) == 1  # the best of two positives counts
    rows = [{"id": "a", "query": "which metal melts lowest", "positives": ["gallium melts in the hand at 30 celsius"],
             "negatives": ["tungsten has the highest melting point of any metal"]},
            {"id": "b", "query": "which metal melts lowest", "positives": [{"title": "Gallium",
                                                                            "text": "melts in the hand"}],
             "negatives": ["tungsten has the highest melting point", "iron rusts in water"]},
            {"id": "c", "query": "a record with no negative", "positives": ["anything"]}]
    records = _records(rows, tmp_path)
    settings = FilterSettings("bm25", top_k=1)
    scorer = make_scorer(records, settings)
    ranks = scorer.ranks([(records[0], "gallium celsius hand"), (records[0], "tungsten highest point"),
                          (records[1], "gallium hand"), (records[1], "tungsten highest rusts iron water"),
                          (records[2], "whatever")])
    assert ranks[0] == 1 and ranks[1] == 2 and ranks[2] == 1 and ranks[3] in (2, 3) and ranks[4] is None
    assert [verdict(settings, r)["kept"] for r in ranks] == [True, False, True, False, True]
    assert verdict(FilterSettings("bm25", top_k=3), 3)["kept"]
    assert FilterSettings("t1").validate() == ["--filter t1 needs --filter-checkpoint DIR (a T1 model that scores "
                                               "the traces)"]
    assert "not a filter" in FilterSettings("dense").validate()[0]
    bad = _records([{"query": "q", "positives": [3], "negatives": ["n"]}], tmp_path)
    with pytest.raises(DataError, match=r"records.jsonl:1: field 'positives' holds int"):
        make_scorer(bad, settings)


def _filter_rows():
    rows = []
    for i in range(16):
        q = f"why does the {TOPICS[i % len(TOPICS)]} number {i} glow at night"
        strong, weak = f"{q} {q} {q}", f"an unrelated note about tax forms {i}"
        rows.append({"id": f"r{i}", "query": q, "positives": [strong if i % 2 == 0 else weak],
                     "negatives": [weak if i % 2 == 0 else strong, f"another note {i}"]})
    return rows


def _filter_args(teacher, rows, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["generate", "--checkpoint", str(teacher), "--queries", str(queries), "--set", "sampling.max_new_tokens=4",
            "sampling.prompt_buckets=256", "text.max_query_tokens=256", "--batch-size", "8", "--keep-cut"]
    return base


def test_generate_with_the_bm25_filter_writes_verdicts_and_the_kept_fraction(teacher, tmp_path, capsys):
    """t1 generate --filter bm25 on records built so that half can never rank their positive first (a negative
    repeats the query) and half always do."""
    rows = _filter_rows()
    base = _filter_args(teacher, rows, tmp_path)
    out = tmp_path / "bm25.jsonl"
    capsys.readouterr()
    assert cli.main([*base, "--out", str(out), "--filter", "bm25"]) == 0
    summary = _summary(capsys)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    kept = [x["teacher"]["filter"]["kept"] for x in lines]
    assert kept == [i % 2 == 0 for i in range(16)]
    assert all(x["reasoning"] == "" and "filtered_reasoning" in x["teacher"] for x, k in zip(lines, kept) if not k)
    assert all(x["reasoning"] == x["teacher"].get("filtered_reasoning", x["reasoning"]) for x in lines if
               x["teacher"]["filter"]["kept"])
    assert summary["filter"] == {"method": "bm25", "top_k": 1, "judged": 16, "kept": 8, "kept_fraction": 0.5,
                                 "unjudged_kept": 0}

    assert cli.main([*base, "--out", str(tmp_path / "x.jsonl"), "--filter-checkpoint", str(teacher)]) == 1
    assert "--filter-checkpoint is the model of --filter t1" in capsys.readouterr().err


@pytest.mark.slow  # another model (the encoder's programs) compiled: ~10 s
def test_generate_with_the_t1_filter_ranks_as_the_encoder_does(teacher, tmp_path):
    """--filter t1 with the teacher folder as the T1 model: its ranks equal a float64 numpy ranking of the Encoder's
    own embeddings of the same texts."""
    from t1_jax.encoder import Encoder
    from t1_jax.teacher_filter import rank_of_positive

    rows = _filter_rows()
    base = _filter_args(teacher, rows, tmp_path)
    out_t1 = tmp_path / "t1.jsonl"
    assert cli.main([*base, "--out", str(out_t1), "--filter", "t1", "--filter-checkpoint", str(teacher),
                     "--filter-top-k", "2"]) == 0
    lines = [json.loads(x) for x in out_t1.read_text().splitlines()]
    enc = Encoder.from_checkpoint(str(teacher))
    fmt = enc.formatter
    traces = [x.get("reasoning") or x["teacher"].get("filtered_reasoning", "") for x in lines]
    q = enc.embed_encoded(fmt.encode_many("query_with_reasoning", [(r["query"], t) for r, t in zip(rows, traces)]))
    for r, x, q_d in zip(rows, lines, q.astype(np.float64)):
        d = enc.encode_documents(r["positives"] + r["negatives"]).astype(np.float64)
        assert x["teacher"]["filter"]["rank"] == rank_of_positive(d @ q_d, 1)
        assert x["teacher"]["filter"]["kept"] == (x["teacher"]["filter"]["rank"] <= 2)


def _summary(capsys):
    text = capsys.readouterr().out
    return json.loads(text[text.index("{\n"):])
