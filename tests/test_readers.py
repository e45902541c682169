"""Data readers: jsonl(.gz), BEIR (both qrels layouts), BRIGHT examples, documents; errors name file and line."""
import gzip
import json

import pytest

from t1_jax.data.readers import (DataError, load_beir, load_bright, read_documents, read_jsonl, read_qrels)


def _write_jsonl(path, rows, gz=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def _beir(tmp_path, qrels_text, corpus=None):
    corpus = corpus or [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "text": "two"}]
    _write_jsonl(tmp_path / "corpus.jsonl.gz", corpus, gz=True)
    _write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"},
                                              {"_id": "q3", "text": "unjudged"}])
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "qrels" / "test.tsv").write_text(qrels_text)
    return str(tmp_path)


def test_read_jsonl_skips_blank_lines_and_reports_lines(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl.gz", [{"a": 1}, "", {"a": 2}], gz=True)
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    bad = _write_jsonl(tmp_path / "corpus.jsonl", [{"a": 1}, "{not json"])
    with pytest.raises(DataError, match=r"corpus.jsonl:2: invalid JSON"):
        list(read_jsonl(bad))
    arr = _write_jsonl(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"arr.jsonl:1: expected a JSON object"):
        list(read_jsonl(arr))


def test_unreadable_bytes_name_the_file_and_line(tmp_path):
    """Non-UTF-8 bytes, a .gz that is not gzip, a .gz cut short: a DataError with file:line, not a traceback."""
    rows = "".join(json.dumps({"_id": f"d{i}", "text": "x"}) + "\n" for i in range(3))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(rows.encode() + '{"_id": "d3", "text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl:4: not UTF-8 text .* convert the file to UTF-8"):
        list(read_jsonl(str(latin)))
    fake = tmp_path / "plain.jsonl.gz"
    fake.write_text(rows)
    with pytest.raises(DataError, match=r"plain.jsonl.gz:1: cannot read on \(BadGzipFile.*really gzip"):
        list(read_jsonl(str(fake)))
    cut = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress((rows * 2000).encode())
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz:\d+: cannot read on \(EOFError"):
        list(read_jsonl(str(cut)))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_bytes("q1\t0\td1\t1\nq2\t0\td\xe9\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"qrels.tsv:2: not UTF-8 text \(byte b'\\xe9' at column 7"):
        read_qrels(str(qrels))


@pytest.mark.parametrize("qrels_text", ["q1\t0 d1\t2\nq2 0 d2 1\nq2 0 d9 1\n",
                                        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\nq2\td9\t1\n"])
def test_load_beir_both_qrels_layouts(tmp_path, qrels_text):
    data = load_beir(_beir(tmp_path, qrels_text))
    assert data.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1, "d9": 1}}
    assert data.queries == {"q1": "first?", "q2": "second?"}  # only judged queries
    assert data.corpus["d1"] == {"title": "T1", "text": "one"} and data.corpus["d2"]["title"] == ""
    assert data.missing_docs == 1  # d9 is judged but not in the corpus


def test_beir_refusals(tmp_path):
    with pytest.raises(DataError, match=r"corpus.jsonl.gz:2: duplicate document id 'd1' \(first at line 1\)"):
        load_beir(_beir(tmp_path, "q1 0 d1 1\n", corpus=[{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]))
    with pytest.raises(DataError, match=r"corpus.jsonl.gz:1: missing field 'text'"):
        load_beir(_beir(tmp_path, "q1 0 d1 1\n", corpus=[{"_id": "d1", "title": "x"}]))
    with pytest.raises(DataError, match="no queries with judgements"):
        load_beir(_beir(tmp_path, "qX 0 d1 1\n"))
    with pytest.raises(DataError, match=r"test.tsv:2: relevance 'high' is not an integer"):
        load_beir(_beir(tmp_path, "q1 0 d1 1\nq1 0 d2 high\n"))
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_jsonl(empty / "corpus.jsonl", [])
    with pytest.raises(DataError, match="corpus is empty"):
        load_beir(str(empty))


def test_load_bright(tmp_path):
    topics = _write_jsonl(tmp_path / "t.jsonl.gz", [
        {"id": "0", "query": "q zero", "reasoning": "because", "gold_ids": ["a", "b"], "excluded_ids": ["N/A"]},
        {"id": "1", "query": "q one", "gold_ids": ["c"], "excluded_ids": ["x", "y"]},
        {"id": "2", "query": "no gold", "gold_ids": [], "excluded_ids": []}], gz=True)
    data = load_bright(topics)
    assert data.qrels == {"0": {"a": 1, "b": 1}, "1": {"c": 1}}
    assert data.excluded == {"0": set(), "1": {"x", "y"}, "2": set()}
    assert data.reasoning["0"] == "because" and data.queries["2"] == "no gold"
    (tmp_path / "q.txt").write_text("1 0 c 2\n")
    (tmp_path / "ex.txt").write_text("0 z\n")
    data = load_bright(topics, str(tmp_path / "q.txt"), str(tmp_path / "ex.txt"))
    assert data.qrels == {"1": {"c": 2}} and data.excluded["0"] == {"z"}
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "0", "gold_ids": []}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field 'query'"):
        load_bright(bad)


def test_read_documents_jsonl_and_parquet(tmp_path):
    beir = _write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "x"}, {"_id": 7, "text": "y"}])
    assert list(read_documents(beir)) == [("d1", "T x"), ("7", "y")]
    bright = _write_jsonl(tmp_path / "docs.jsonl", [{"id": "a.txt", "content": "alpha"}, {"id": "a.txt",
                                                                                          "content": "again"}])
    with pytest.raises(DataError, match=r"docs.jsonl:2: duplicate document id 'a.txt'"):
        list(read_documents(bright))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["p1", "p2"], "content": ["one", "two"]}), str(tmp_path / "docs.parquet"))
    assert list(read_documents(str(tmp_path / "docs.parquet"))) == [("p1", "one"), ("p2", "two")]
    _write_jsonl(tmp_path / "none.jsonl", [])
    with pytest.raises(DataError, match="empty corpus"):
        list(read_documents(str(tmp_path / "none.jsonl")))


def test_real_data_loads(shared_data):
    sci = load_beir(str(shared_data / "scifact"))
    assert len(sci.corpus) == 5183 and len(sci.queries) == 300
    assert sum(len(d) for d in sci.qrels.values()) == 339 and sci.missing_docs == 0
    assert read_qrels(str(shared_data / "scifact" / "qrels" / "test.tsv")) == sci.qrels
    topics = shared_data / "bright" / "topics" / "topics.bright-biology-original.jsonl.gz"
    bio = load_bright(str(topics), str(shared_data / "bright" / "qrels" / "qrels.bright-biology.txt"))
    assert len(bio.queries) == 103 and bio.qrels == load_bright(str(topics)).qrels  # qrels file == gold_ids
    leet = load_bright(str(shared_data / "bright" / "topics" / "topics.bright-leetcode-original.jsonl.gz"))
    assert sum(len(v) for v in leet.excluded.values()) > 0
