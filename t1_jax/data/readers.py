"""Readers for the retrieval data formats: jsonl(.gz), BEIR folders, BRIGHT examples, TREC qrels, document files.

Shared by training and evaluation. Every problem in a file is reported as ``file:line: what is wrong`` (1-based line
numbers) through :class:`DataError`, a ``ValueError`` the ``t1`` command prints without a traceback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import zlib
from typing import Iterable, Iterator, Optional

from t1_jax import fs

log = logging.getLogger(__name__)

# Ids BRIGHT uses as "nothing here" placeholders inside id lists.
_PLACEHOLDER_IDS = frozenset({"N/A", ""})


class DataError(ValueError):
    """A problem in an input file; the message starts with ``file:line:`` when a line is at fault."""


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line_no, line)`` of a text file (1-based); bytes that are not UTF-8, or a ``.gz`` file that is not gzip or
    is cut short, raise a DataError naming the file and the line where reading stopped."""
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    line_no = 0
    try:
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(fs.open(path, "rb"))
            if path.endswith(".gz"):
                f = stack.enter_context(gzip.GzipFile(fileobj=f))  # closing it leaves the file open: both closed
            for line_no, data in enumerate(f, start=1):  # bytes per line: a decoding error names its own line
                yield line_no, data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at column "
                        f"{e.start + 1} cannot be decoded); convert the file to UTF-8") from None
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{path}:{line_no + 1}: cannot read on ({type(e).__name__}: {e}); is the file complete "
                        f"{'and really gzip' if path.endswith('.gz') else ''}?".replace(" ?", "?")) from None


def numbered_fields(path: str) -> Iterator[tuple[int, list[str]]]:
    """``(line_no, whitespace-separated fields)`` of each non-blank line (qrels, TREC runs, id pairs)."""
    for line_no, line in numbered_lines(path):
        fields = line.split()
        if fields:
            yield line_no, fields


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """``(line_no, object)`` for each non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file (1-based line numbers)."""
    for line_no, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def require(obj: dict, field: str, path: str, line_no: int, kinds: tuple[type, ...] = (str,)) -> object:
    """``obj[field]``, or a DataError naming the file and line when it is missing or of the wrong type."""
    if field not in obj:
        raise DataError(f"{path}:{line_no}: missing field {field!r} (fields present: {sorted(obj)})")
    value = obj[field]
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{path}:{line_no}: field {field!r} must be {names}, got {type(value).__name__}")
    return value


def _id(obj: dict, path: str, line_no: int, fields: tuple[str, ...]) -> str:
    for field in fields:
        if field in obj:
            value = obj[field]
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
            raise DataError(f"{path}:{line_no}: field {field!r} must be a string or integer id, got "
                            f"{type(value).__name__}")
    raise DataError(f"{path}:{line_no}: missing id field (one of {list(fields)}; fields present: {sorted(obj)})")


# --------------------------------------------------------------------------------------------------------------------
# qrels
# --------------------------------------------------------------------------------------------------------------------


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid iter docid rel`` (whitespace separated, no header) or BEIR TSV ``query-id corpus-id score``.

    A first line whose relevance column is not an integer is taken as a header. Repeated judgements keep the last.
    """
    qrels: dict[str, dict[str, int]] = {}
    for line_no, fields in numbered_fields(path):
        if len(fields) == 4:
            qid, _, docid, rel = fields
        elif len(fields) == 3:
            qid, docid, rel = fields
        else:
            raise DataError(f"{path}:{line_no}: expected 'qid 0 docid rel' or 'query-id corpus-id score', got "
                            f"{len(fields)} fields")
        try:
            value = int(rel)
        except ValueError:
            try:
                as_float = float(rel)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                value = int(as_float)
            elif line_no == 1 and not qrels:
                continue  # header, e.g. "query-id corpus-id score"
            else:
                raise DataError(f"{path}:{line_no}: relevance {rel!r} is not an integer") from None
        qrels.setdefault(qid, {})[docid] = value
    if not qrels:
        raise DataError(f"{path}: no judgements found (empty qrels)")
    return qrels


def read_id_pairs(path: str) -> dict[str, set[str]]:
    """``qid docid`` per line (e.g. BRIGHT's ``exclude.bright-leetcode.txt``) -> {qid: {docid}}."""
    pairs: dict[str, set[str]] = {}
    for line_no, fields in numbered_fields(path):
        if len(fields) != 2:
            raise DataError(f"{path}:{line_no}: expected 'qid docid', got {len(fields)} fields")
        pairs.setdefault(fields[0], set()).add(fields[1])
    return pairs


# --------------------------------------------------------------------------------------------------------------------
# BEIR
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BeirData:
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]  # only queries judged in the split
    qrels: dict[str, dict[str, int]]
    missing_docs: int = 0  # judgements whose document is not in the corpus (kept in qrels, counted here)
    missing_queries: int = 0  # judged query ids without a query text (dropped from qrels)


def _find(directory: str, stem: str) -> str:
    for suffix in (".jsonl", ".jsonl.gz"):
        path = fs.join(directory, stem + suffix)
        if fs.exists(path):
            return path
    raise FileNotFoundError(f"{directory}: no {stem}.jsonl or {stem}.jsonl.gz (expected the BEIR layout: corpus, "
                            f"queries, qrels/<split>.tsv)")


def beir_corpus_path(directory: str) -> str:
    """``corpus.jsonl`` or ``corpus.jsonl.gz`` of a BEIR folder."""
    return _find(directory, "corpus")


def read_beir_corpus(path: str) -> dict[str, dict[str, str]]:
    corpus: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for line_no, obj in read_jsonl(path):
        doc_id = _id(obj, path, line_no, ("_id", "id", "docid"))
        if doc_id in corpus:
            raise DataError(f"{path}:{line_no}: duplicate document id {doc_id!r} (first at line {first_line[doc_id]})")
        text = require(obj, "text", path, line_no)
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise DataError(f"{path}:{line_no}: field 'title' must be str, got {type(title).__name__}")
        corpus[doc_id] = {"title": title, "text": text}
        first_line[doc_id] = line_no
    if not corpus:
        raise DataError(f"{path}: the corpus is empty")
    return corpus


def read_queries(path: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for line_no, obj in read_jsonl(path):
        qid = _id(obj, path, line_no, ("_id", "id", "qid"))
        if qid in queries:
            raise DataError(f"{path}:{line_no}: duplicate query id {qid!r}")
        queries[qid] = require(obj, "text", path, line_no) if "text" in obj else require(obj, "query", path, line_no)
    return queries


def load_beir(directory: str, split: str = "test", with_corpus: bool = True) -> BeirData:
    """A BEIR dataset folder: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``.

    ``with_corpus=False``: the corpus is not read (``corpus`` is empty, ``missing_docs`` 0); stream it with
    ``read_documents(beir_corpus_path(directory))``."""
    corpus = read_beir_corpus(_find(directory, "corpus")) if with_corpus else {}
    all_queries = read_queries(_find(directory, "queries"))
    qrels_path = fs.join(directory, "qrels", f"{split}.tsv")
    if not fs.exists(qrels_path):
        raise FileNotFoundError(f"{qrels_path} does not exist (split {split!r})")
    qrels = read_qrels(qrels_path)
    missing_q = [q for q in qrels if q not in all_queries]
    if missing_q:
        log.warning("%s: %d judged query ids have no text in queries.jsonl and are dropped (e.g. %s)", qrels_path,
                    len(missing_q), missing_q[:3])
        qrels = {q: d for q, d in qrels.items() if q in all_queries}
    queries = {q: all_queries[q] for q in qrels}
    if not queries:
        raise DataError(f"{directory}: no queries with judgements in split {split!r} (empty query set)")
    missing_docs = count_missing_docs(qrels, corpus, qrels_path) if with_corpus else 0
    return BeirData(corpus, queries, qrels, missing_docs=missing_docs, missing_queries=len(missing_q))


def count_missing_docs(qrels: dict[str, dict[str, int]], doc_ids: Iterable[str] | dict, source: str) -> int:
    """How many judgements name a document that is not in the corpus (logged as a warning when any)."""
    known = doc_ids if isinstance(doc_ids, (dict, set, frozenset)) else set(doc_ids)
    missing = [(q, d) for q, docs in qrels.items() for d in docs if d not in known]
    if missing:
        log.warning("%s: %d judgements name documents missing from the corpus (e.g. %s); they count as relevant "
                    "documents never retrieved", source, len(missing), missing[:3])
    return len(missing)


def beir_document_text(doc: dict[str, str]) -> str:
    """Title and text joined by a space (the convention of BEIR's dense and BM25 baselines)."""
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


# --------------------------------------------------------------------------------------------------------------------
# BRIGHT
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BrightData:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    excluded: dict[str, set[str]]  # per query, document ids removed from its ranking before scoring
    reasoning: dict[str, str]  # BRIGHT's reference reasoning per query (may be empty / "empty")


def _id_list(obj: dict, field: str, path: str, line_no: int) -> list[str]:
    value = obj.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}:{line_no}: field {field!r} must be a list of string ids")
    return [v for v in value if v not in _PLACEHOLDER_IDS]


def load_bright(topics_jsonl: str, qrels_txt: Optional[str] = None, exclude_txt: Optional[str] = None,
                gold_field: str = "gold_ids") -> BrightData:
    """BRIGHT ``examples`` (id, query, reasoning, gold_ids, excluded_ids) -> queries, qrels, exclusions.

    ``qrels_txt`` (TREC qrels) replaces ``gold_ids`` when given; ``exclude_txt`` (``qid docid`` lines) adds exclusions.
    ``gold_field="gold_ids_long"``: the judgements of the long-document setting (whole web pages).
    """
    queries: dict[str, str] = {}
    gold: dict[str, dict[str, int]] = {}
    excluded: dict[str, set[str]] = {}
    reasoning: dict[str, str] = {}
    for line_no, obj in read_jsonl(topics_jsonl):
        qid = _id(obj, topics_jsonl, line_no, ("id", "_id", "qid"))
        if qid in queries:
            raise DataError(f"{topics_jsonl}:{line_no}: duplicate query id {qid!r}")
        queries[qid] = require(obj, "query", topics_jsonl, line_no)
        reasoning[qid] = obj.get("reasoning") or ""
        gold_ids = _id_list(obj, gold_field, topics_jsonl, line_no)
        if gold_ids:
            gold[qid] = {d: 1 for d in gold_ids}
        excluded[qid] = set(_id_list(obj, "excluded_ids", topics_jsonl, line_no))
    if not queries:
        raise DataError(f"{topics_jsonl}: no queries (empty file)")
    qrels = read_qrels(qrels_txt) if qrels_txt else gold
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        log.warning("%s: %d judged query ids are not in %s and are dropped (e.g. %s)", qrels_txt, len(unknown),
                    topics_jsonl, unknown[:3])
        qrels = {q: d for q, d in qrels.items() if q in queries}
    if exclude_txt:
        for qid, ids in read_id_pairs(exclude_txt).items():
            excluded.setdefault(qid, set()).update(ids)
    if not qrels:
        raise DataError(f"{topics_jsonl}: no query has judgements (empty query set)")
    return BrightData(queries, qrels, excluded, reasoning)


# --------------------------------------------------------------------------------------------------------------------
# Documents as (id, text)
# --------------------------------------------------------------------------------------------------------------------


def _document_from_record(obj: dict, path: str, line_no: int) -> tuple[str, str]:
    doc_id = _id(obj, path, line_no, ("_id", "id", "docid"))
    if "content" in obj:
        return doc_id, require(obj, "content", path, line_no)
    text = require(obj, "text", path, line_no)
    title = obj.get("title") or ""
    return doc_id, (f"{title} {text}".strip() if title else text)


def _read_parquet(path: str) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.ParquetFile(path)
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def read_documents(path: str) -> Iterator[tuple[str, str]]:
    """``(id, text)`` from a BEIR corpus (title + text) or BRIGHT documents (``id``/``content``, jsonl or parquet).

    Duplicate ids are refused (``file:line``); an empty file is an error. Parquet "lines" are 1-based row numbers.
    """
    rows = _read_parquet(path) if path.endswith(".parquet") else read_jsonl(path)
    first_seen: dict[str, int] = {}
    for line_no, obj in rows:
        doc_id, text = _document_from_record(obj, path, line_no)
        if doc_id in first_seen:
            raise DataError(f"{path}:{line_no}: duplicate document id {doc_id!r} (first at line {first_seen[doc_id]})")
        first_seen[doc_id] = line_no
        yield doc_id, text
    if not first_seen:
        raise DataError(f"{path}: no documents (empty corpus)")
