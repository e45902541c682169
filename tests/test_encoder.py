"""Encoder: length bucketing keeps order and padding invariance (documents and reasoning queries), the no-reasoning
query equals a zero-budget sampler call, sharded = unsharded, and the embed / encode / search commands end to end."""
import json

import numpy as np
import pytest

from tests.helpers.toy_run import random_text, write_toy_run
from tests.model_helpers import rel_err
from t1_jax import cli
from t1_jax.config import MeshConfig, RetrievalConfig, SamplingConfig
from t1_jax.encoder import Encoder, bucket_length, length_batches
from t1_jax.mesh import make_mesh
from t1_jax.retrieval.store import EmbeddingStore

TOL = 1e-5
_text = random_text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A `t1 train`-like workdir: config.json + model/ (orbax) + model/tokenizer, tiny random model."""
    return write_toy_run(tmp_path_factory.mktemp("run"), max_tokens=96, seed=4, vocab_size=512,
                         sampling=SamplingConfig(max_new_tokens=5, prompt_buckets=(16, 32, 64, 128)),
                         retrieval=RetrievalConfig(encode_batch_size=4))


@pytest.fixture(scope="module")
def encoder(run_dir):
    return Encoder.from_checkpoint(str(run_dir), show_progress=False)


def test_buckets_and_batches():
    assert [bucket_length(n, (32, 64)) for n in (1, 32, 33, 64, 65, 130)] == [32, 32, 64, 64, 128, 192]
    batches = length_batches([3, 9, 1, 7, 5], 2)
    assert [list(b) for b in batches] == [[1, 3], [4, 0], [2]]
    assert [list(b) for b in length_batches([3, 9, 1], 2, bucketing=False)] == [[0, 1], [2]]


def test_documents_bucketed_in_order_and_padding_invariant(encoder):
    rng = np.random.default_rng(0)
    texts = [_text(rng, n) for n in (2, 40, 5, 25, 3, 60, 12)]  # bucket lengths 32 / 64 / 128 mixed
    together = encoder.encode_documents(texts)
    unbucketed = encoder.encode_documents(texts, bucketing=False)
    assert rel_err(unbucketed, together) <= TOL
    for i in (0, 4, 5):  # a short text alone (short bucket) equals itself among longer texts
        alone = encoder.encode_documents([texts[i]])
        assert rel_err(alone[0], together[i]) <= TOL, i
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    assert rel_err(together[0], together[2]) > 1e-3  # different texts, different embeddings


def test_queries_with_reasoning_padding_invariant(encoder):
    rng = np.random.default_rng(1)
    queries = [_text(rng, n) for n in (2, 50, 30, 4, 70)]
    emb, reasoning, stats = encoder.encode_queries(queries)
    assert stats["queries"] == 5 and 1 <= stats["mean_generated_tokens"] <= 6
    for i in (0, 3):  # prompt bucket 16 or 32 alone vs 128 in the batch; different batch neighbours
        alone, text, _ = encoder.encode_queries([queries[i]])
        assert text[0] == reasoning[i]
        assert rel_err(alone[0], emb[i]) <= TOL, i


def test_query_without_reasoning_is_a_zero_budget_sample(encoder):
    queries = ["alpha beta", "river stone cloud seven forty apple"]
    direct, texts, _ = encoder.encode_queries(queries, reasoning=False)
    assert texts == ["", ""]
    zero, gen, stats = encoder.encode_queries(queries, sampling=SamplingConfig(max_new_tokens=0))
    assert gen == ["", ""] and stats["forced_fraction"] == 1.0
    assert rel_err(zero, direct) <= TOL



def test_keep_decode_weights_prepares_once_and_releases(encoder, monkeypatch):
    """Inside keep_decode_weights(), reasoning queries in several calls (and through a batch-size copy) reuse one
    preparation of the decode weights, with the same output as calls that prepare their own; it is dropped at exit."""
    from t1_jax import encoder as encoder_lib

    made = []
    real = encoder_lib.layer_weights

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder_lib, "layer_weights", counting)
    rng = np.random.default_rng(3)
    queries = [_text(rng, n) for n in (3, 20, 9)]
    alone = [encoder.encode_queries([q])[0][0] for q in queries]
    assert made == []  # outside the block the engine prepares (and frees) its own per call
    with encoder.keep_decode_weights():
        kept = [encoder.encode_queries([q])[0][0] for q in queries[:2]]
        kept.append(encoder.encode_queries([queries[2]], batch_size=2)[0][0])
        with encoder.keep_decode_weights():  # nested: still the same preparation
            encoder.encode_queries(queries[:1])
        assert "layers" in encoder._held
    assert made == [1]
    assert "layers" not in encoder._held
    for a, b in zip(alone, kept):
        assert rel_err(b, a) <= TOL

def test_sharded_encoder_equals_unsharded(run_dir, encoder):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = Encoder.from_checkpoint(str(run_dir), mesh=mesh, show_progress=False)
    assert sharded.batch_size == 4  # a multiple of the 4 batch shards
    rng = np.random.default_rng(2)
    docs = [_text(rng, n) for n in (3, 30, 7, 50, 9)]
    assert rel_err(sharded.encode_documents(docs), encoder.encode_documents(docs)) <= TOL
    queries = [_text(rng, n) for n in (3, 20, 6)]
    emb_s, text_s, _ = sharded.encode_queries(queries)
    emb_u, text_u, _ = encoder.encode_queries(queries)
    assert text_s == text_u
    assert rel_err(emb_s, emb_u) <= TOL


def test_embed_encode_search_commands(run_dir, encoder, tmp_path):
    rng = np.random.default_rng(3)
    docs = [{"_id": f"d{i}", "title": "", "text": _text(rng, n)} for i, n in enumerate((4, 20, 9, 33, 6, 14))]
    queries = [{"id": f"q{i}", "query": _text(rng, n)} for i, n in enumerate((3, 12, 6))]
    corpus, qfile = tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    qfile.write_text("".join(json.dumps(q) + "\n" for q in queries))
    ckpt = str(run_dir)

    assert cli.main(["embed", "--checkpoint", ckpt, "--docs", str(corpus), "--out", str(tmp_path / "d.npy")]) == 0
    doc_emb = np.load(tmp_path / "d.npy")
    assert (tmp_path / "d.ids.txt").read_text().split() == [d["_id"] for d in docs]
    assert rel_err(doc_emb, encoder.encode_documents([d["text"] for d in docs])) <= TOL

    assert cli.main(["embed", "--checkpoint", ckpt, "--queries", str(qfile), "--out", str(tmp_path / "q.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    emb, reasoning, _ = encoder.encode_queries([q["query"] for q in queries])
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and [r["reasoning"] for r in rows] == reasoning
    assert rel_err(np.array([r["embedding"] for r in rows]), emb) <= TOL

    store_dir = str(tmp_path / "store")
    assert cli.main(["encode", "--checkpoint", ckpt, "--corpus", str(corpus), "--out", store_dir,
                     "--dtype", "float32", "--chunk-rows", "4", "--group", "1"]) == 0
    store = EmbeddingStore.open(store_dir)
    assert store.ids == [d["_id"] for d in docs] and store.fingerprint == encoder.fingerprint
    assert rel_err(store.read(), doc_emb) <= TOL
    assert cli.main(["encode", "--checkpoint", ckpt, "--corpus", str(corpus), "--out", store_dir,
                     "--dtype", "float32", "--chunk-rows", "4", "--group", "1"]) == 0  # resume: nothing to do

    run_file = tmp_path / "run.trec"
    assert cli.main(["search", "--checkpoint", ckpt, "--queries", str(qfile), "--exact", store_dir, "--k", "3",
                     "--out", str(run_file)]) == 0
    lines = [x.split() for x in run_file.read_text().splitlines()]
    assert len(lines) == 9 and {x[0] for x in lines} == {"q0", "q1", "q2"}
    best = {x[0]: x[2] for x in lines if x[3] == "1"}
    expect = np.argmax(emb @ doc_emb.T, axis=1)
    assert best == {f"q{i}": f"d{expect[i]}" for i in range(3)}
    saved = [json.loads(x) for x in (tmp_path / "run.reasoning.jsonl").read_text().splitlines()]
    assert [r["reasoning"] for r in saved] == reasoning
    # a single --query text; a store from another model is refused
    one = tmp_path / "one.trec"
    assert cli.main(["search", "--checkpoint", ckpt, "--query", queries[1]["query"], "--exact", store_dir, "--k", "2",
                     "--out", str(one)]) == 0
    assert [x.split()[:3] for x in one.read_text().splitlines()][0] == ["q0", "Q0", best["q1"]]
    assert cli.main(["search", "--checkpoint", ckpt, "--query", "alpha", "--exact", store_dir, "--fingerprint",
                     "another-model", "--out", str(tmp_path / "x.trec")]) == 1
    # the precomputed-embeddings mode still works, with the same run
    assert cli.main(["search", "--query-embeddings", str(tmp_path / "q.jsonl"), "--exact", store_dir, "--k", "3",
                     "--out", str(tmp_path / "run2.trec")]) == 0
    assert (tmp_path / "run2.trec").read_text() == run_file.read_text()
