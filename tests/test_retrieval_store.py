"""Tensorstore embedding store: round trip, resume after a crash, per-process slices, refusals."""
import numpy as np
import pytest

from t1_jax.retrieval.store import EmbeddingStore, encode_corpus

DIM = 12


def _docs(n):
    return [(f"doc{i}", f"text number {i}") for i in range(n)]


def _embed(texts):
    """A deterministic stand-in encoder: a pseudo-random vector per text."""
    out = []
    for t in texts:
        rng = np.random.default_rng(abs(hash(t)) % (2 ** 32))
        out.append(rng.standard_normal(DIM))
    return np.asarray(out, np.float32)


def _reference(n):
    x = _embed([t for _, t in _docs(n)])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-7), ("float16", 1e-3)])
def test_encode_round_trip(tmp_path, dtype, tol):
    store = encode_corpus(_docs(45), _embed, str(tmp_path / "s"), batch_size=4, dtype=dtype, chunk_rows=8,
                          fingerprint="model-a")
    again = EmbeddingStore.open(str(tmp_path / "s"))
    assert again.ids == [f"doc{i}" for i in range(45)]
    assert again.num_chunks == 6 and again.missing_chunks() == []
    x = again.read()
    assert x.dtype == np.dtype(dtype) and x.shape == (45, DIM)
    np.testing.assert_allclose(x.astype(np.float64), _reference(45), atol=tol)
    assert store.fingerprint == "model-a"


def test_resume_skips_written_chunks(tmp_path):
    path = str(tmp_path / "s")
    calls = []

    def crashing(texts):
        calls.append(len(texts))
        if len(calls) == 5:  # dies in the middle of chunk 2 (batches of 4, chunks of 8 rows)
            raise RuntimeError("preempted")
        return _embed(texts)

    with pytest.raises(RuntimeError, match="preempted"):
        encode_corpus(_docs(30), crashing, path, batch_size=4, chunk_rows=8, dtype="float32", dim=DIM)
    partial = EmbeddingStore.open(path)
    assert partial.missing_chunks() == [2, 3]
    with pytest.raises(ValueError, match="2 of 4 chunks are not written"):
        partial.read()
    seen = []

    def counting(texts):
        seen.extend(texts)
        return _embed(texts)

    store = encode_corpus(_docs(30), counting, path, batch_size=4, chunk_rows=8, dtype="float32", dim=DIM)
    assert seen == [t for _, t in _docs(30)[16:]]  # only chunks 2 and 3 were embedded again
    np.testing.assert_allclose(store.read(), _reference(30), atol=1e-6)


def test_processes_write_disjoint_chunks(tmp_path):
    path = str(tmp_path / "s")
    seen = {0: [], 1: []}
    for p in (0, 1):
        def embed(texts, p=p):
            seen[p].extend(texts)
            return _embed(texts)

        encode_corpus(_docs(40), embed, path, batch_size=4, chunk_rows=8, dtype="float32", dim=DIM,
                      process_index=p, process_count=2)
    texts = [t for _, t in _docs(40)]
    assert seen[0] == texts[0:8] + texts[16:24] + texts[32:40]
    assert seen[1] == texts[8:16] + texts[24:32]
    np.testing.assert_allclose(EmbeddingStore.open(path).read(), _reference(40), atol=1e-6)


def test_refusals(tmp_path):
    path = str(tmp_path / "s")
    with pytest.raises(ValueError, match="empty"):
        encode_corpus([], _embed, path)
    with pytest.raises(ValueError, match="duplicate"):
        EmbeddingStore.create(path, 2, DIM, "float32", ["a", "a"])
    encode_corpus(_docs(10), _embed, path, batch_size=4, chunk_rows=4, dtype="float32", fingerprint="m1")
    with pytest.raises(ValueError, match="different fingerprint"):
        encode_corpus(_docs(10), _embed, path, batch_size=4, chunk_rows=4, dtype="float32", fingerprint="m2")
    with pytest.raises(ValueError, match="different num_docs"):
        encode_corpus(_docs(11), _embed, path, batch_size=4, chunk_rows=4, dtype="float32", fingerprint="m1")
    store = EmbeddingStore.open(path)
    with pytest.raises(ValueError, match="not a chunk boundary"):
        store.write_chunk(2, np.zeros((4, DIM), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        store.write_chunk(0, np.full((4, DIM), np.nan, np.float32))
    with pytest.raises(FileNotFoundError, match="not an embedding store"):
        EmbeddingStore.open(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="--chunk-rows must be positive, got -4"):  # was a raw tensorstore error
        encode_corpus(_docs(10), _embed, str(tmp_path / "neg"), batch_size=4, chunk_rows=-4)
    with pytest.raises(ValueError, match=r"document id 'a b' is empty or contains whitespace"):
        EmbeddingStore.create(str(tmp_path / "ws"), 2, DIM, "float32", ["a b", "c"])


def test_chunk_lost_after_its_marker_is_refused_then_re_encoded(tmp_path):
    """A chunk file deleted after its done-marker was written used to read back as all-zero rows (the zarr fill value)
    without a word; now reading refuses it with the rows and the fix, and the next encode writes it again."""
    import os

    path = str(tmp_path / "s")
    encode_corpus(_docs(10), _embed, path, batch_size=4, chunk_rows=4, dtype="float32", fingerprint="m1")
    want = EmbeddingStore.open(path).read()
    os.remove(os.path.join(path, "embeddings", "1.0"))  # rows 4..7
    store = EmbeddingStore.open(path)
    assert store.lost_chunks() == [1] and store.missing_chunks() == []
    with pytest.raises(ValueError, match=r"chunk 1, rows 4\.\.7: its file under embeddings/ is missing\); run `t1 "
                                         r"encode` again"):
        store.read()
    encode_corpus(_docs(10), _embed, path, batch_size=4, chunk_rows=4, dtype="float32", fingerprint="m1")
    np.testing.assert_array_equal(EmbeddingStore.open(path).read(), want)


def test_default_chunks_bound_lost_work():
    from t1_jax.retrieval.store import default_chunk_rows

    assert default_chunk_rows(384, "float16", 32) == 1024  # row cap
    rows = default_chunk_rows(2560, "float16", 32)
    assert rows % 32 == 0 and rows * 2560 * 2 <= 4 << 20 and rows == 800  # byte cap, batch multiple
    assert default_chunk_rows(100_000, "float32", 8) == 8  # never below one batch


def test_ctrl_c_keeps_written_chunks_says_so_in_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C in `t1 encode` (a KeyboardInterrupt in the middle of chunk 2): exit status 130, one line saying which
    chunks the store keeps, no traceback; the same command then encodes only the rest."""
    import argparse
    import json

    from t1_jax import cli
    from t1_jax.commands import embed

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in _docs(30)))
    store_dir = tmp_path / "store"
    calls, interrupt_at = [], [5]

    class Encoder:  # the encoder `t1 encode` would load: batches of 4, interrupted on the 5th
        batch_size, dim, fingerprint, normalize, show_progress = 4, DIM, "fp", True, True

        def encode_documents(self, texts, domains):
            calls.append(list(texts))
            if len(calls) == interrupt_at[0]:
                raise KeyboardInterrupt
            return _embed(texts)

    cfg = argparse.Namespace(retrieval=argparse.Namespace(embedding_dtype="float32"))
    monkeypatch.setattr(embed, "load_encoder", lambda args, checkpoint: (Encoder(), cfg))
    argv = ["encode", "--checkpoint", str(tmp_path), "--corpus", str(corpus), "--out", str(store_dir),
            "--chunk-rows", "8", "--group", "1"]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == (f"t1 encode: interrupted: {store_dir} keeps the 2 of 4 chunks already written "
                                       f"(16 of 30 documents); run the same command again to encode the rest\n")
    assert EmbeddingStore.open(str(store_dir)).missing_chunks() == [2, 3]
    calls.clear()
    interrupt_at[0] = 0  # no interruption this time
    assert cli.main(argv) == 0
    assert [t for batch in calls for t in batch] == [t for _, t in _docs(30)[16:]]  # only chunks 2 and 3 again
    np.testing.assert_allclose(EmbeddingStore.open(str(store_dir)).read(), _reference(30), atol=1e-6)
