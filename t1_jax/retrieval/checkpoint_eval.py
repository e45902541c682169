"""``t1 eval --checkpoint``: a T1 model scored on BEIR folders / BRIGHT domains in one call, cached and resumable.

Per dataset, under ``WORKDIR/<dataset>/``::

    key.json              model fingerprint + sha256 of the documents (ids and texts) the store was encoded from
    store/                document embeddings (t1_jax.retrieval.store: chunked, resumes after a kill)
    index/                ScaNN folder, only for corpora at or above ``exact_below`` documents (exact search below)
    queries/<key>/        query embeddings + reasoning, one ``part-NNNNN.npz`` per chunk of queries (resumes)
    run.trec              the T1 row's TREC run (BRIGHT's excluded_ids removed), reasoning.jsonl beside it
    run.no-reasoning.trec the direct-query row (``--no-reasoning``)
    bm25.trec, bm25.json  the BM25 row's run and what it was computed from

A query cache folder is named by a digest of everything the embeddings depend on (model, decoding, text formats,
instruction, seed, the query texts), so changed settings never reuse old embeddings; a store built by another model
or from other documents is refused in one line before any work. Documents are streamed from their file: at most one
batch of texts is held, plus the embedding matrix being searched (BM25 holds its own corpus while it runs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from t1_jax import fs
from t1_jax.data import readers
from t1_jax.retrieval.evaluate import Dataset, Run

log = logging.getLogger(__name__)

SEARCH_MODES = ("auto", "exact", "scann")


@dataclasses.dataclass(frozen=True)
class Settings:
    workdir: str
    depth: int = 1000  # documents kept per query in the run
    search: str = "auto"  # exact below exact_below documents, ScaNN (t1_jax.retrieval.index) from there on
    exact_below: int = 20_000
    group: int = 8  # encoder batches per store write (texts sorted by length within a group)
    query_chunk: int = 0  # queries per resumable part (0: 4 x the encoder's batch size)
    seed: int = 0
    dtype: str = "float16"  # stored document embeddings


@dataclasses.dataclass
class Scan:
    """One streamed pass over a dataset's documents: ids in order, a digest of ids + texts, missing judgements."""

    ids: list[str]
    sha256: str
    missing_docs: int


def model_name(checkpoint: str) -> str:
    """``runs/quickstart/stage2`` -> ``stage2``; a model folder ``.../stage2/model`` -> ``stage2``."""
    parts = [p for p in checkpoint.rstrip("/").split("/") if p]
    name = parts[-1] if parts else "t1"
    return parts[-2] if name == "model" and len(parts) > 1 else name


def dataset_dir(workdir: str, dataset: Dataset) -> str:
    return fs.join(workdir, dataset.name)


def _read_json(path: str) -> Optional[dict]:
    return json.loads(fs.read_text(path)) if fs.exists(path) else None


def check_inputs(datasets: Sequence[Dataset]) -> None:
    """Every dataset has documents to encode (one line naming the dataset and where they were looked for)."""
    for d in datasets:
        if not d.documents_path:
            where = "--bright-docs DIR (or long_documents/ with --long)" if d.domain else "the BEIR folder"
            raise FileNotFoundError(f"no documents for {d.name}: expected {d.domain or d.name}.jsonl|.jsonl.gz|"
                                    f".parquet under {where}")


def check_tokenizer(model_path: str, tokenizer: Optional[str], config: Optional[str], overrides=()) -> None:
    """The checkpoint has a tokenizer (its ``tokenizer/``, ``--tokenizer`` or ``text.tokenizer``): checked before
    JAX starts, so the error is the only line."""
    from t1_jax import config as config_lib
    from t1_jax import inference_defaults
    from t1_jax.text import TOKENIZER_SUBDIR

    if tokenizer or fs.isdir(fs.join(model_path, TOKENIZER_SUBDIR)):
        return
    cfg = config_lib.load_config(config, overrides) if config else config_lib.apply_overrides(
        inference_defaults.run_config(model_path)[0], overrides)
    if not cfg.text.tokenizer:
        raise ValueError(f"{model_path} has no {TOKENIZER_SUBDIR}/ folder (converted from an HF folder without "
                         "tokenizer files?) and no tokenizer was given: pass --tokenizer DIR (or text.tokenizer)")


def check_workdir(workdir: str, datasets: Sequence[Dataset], fingerprint: str, checkpoint: str) -> None:
    """Refuse a workdir whose stores come from another model, before any work."""
    for d in datasets:
        key = _read_json(fs.join(dataset_dir(workdir, d), "key.json"))
        if key and key.get("fingerprint") != fingerprint:
            raise ValueError(f"{fs.join(dataset_dir(workdir, d), 'store')} was built by model {key.get('fingerprint')!r}"
                             f", not {checkpoint} ({fingerprint!r}); use another --workdir or delete that folder")


def scan_documents(dataset: Dataset) -> Scan:
    """Ids and a sha256 of ``(id, text)`` for every document, streamed; counts judgements naming absent documents."""
    h = hashlib.sha256()
    ids = []
    for doc_id, text in readers.read_documents(dataset.documents_path):
        ids.append(doc_id)
        h.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return Scan(ids, h.hexdigest(), readers.count_missing_docs(dataset.qrels, set(ids), dataset.documents_path))


def check_documents(workdir: str, dataset: Dataset, scan: Scan, fingerprint: str) -> None:
    """The store's key (written now when new): same model, same documents."""
    path = fs.join(dataset_dir(workdir, dataset), "key.json")
    key = _read_json(path)
    if key is None:
        fs.makedirs(dataset_dir(workdir, dataset))
        fs.write_text(path, json.dumps({"fingerprint": fingerprint, "documents_sha256": scan.sha256,
                                        "documents": dataset.documents_path, "num_docs": len(scan.ids)}, indent=2))
    elif key.get("documents_sha256") != scan.sha256:
        raise ValueError(f"{dataset.documents_path}: the documents differ from those {dataset_dir(workdir, dataset)}"
                         f"/store was encoded from ({key.get('documents')}, {key.get('num_docs')} documents); use "
                         f"another --workdir or delete that folder")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _save_npz(path: str, **arrays) -> None:
    """Written whole, then renamed (local) so a killed run never leaves a partial part behind."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    if fs.is_url(path):
        with fs.open(path, "wb") as f:
            f.write(buf.getvalue())
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_npz(path: str) -> dict:
    with fs.open(path, "rb") as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return {k: data[k] for k in data.files}


class CheckpointEval:
    """The T1 rows of ``t1 eval --checkpoint``: ``system(reasoning)`` is a ``Dataset -> Run`` for
    :func:`t1_jax.retrieval.evaluate.evaluate`; ``bm25(system)`` caches the BM25 row's run beside it."""

    def __init__(self, encoder, settings: Settings, index_settings=None):
        if settings.search not in SEARCH_MODES:
            raise ValueError(f"--search must be one of {SEARCH_MODES}, got {settings.search!r}")
        if settings.depth <= 0:
            raise ValueError(f"--depth must be positive, got {settings.depth}")
        self.encoder, self.s, self.index_settings = encoder, settings, index_settings
        self.scans: dict[str, Scan] = {}
        self._searcher: Optional[tuple[str, object]] = None  # (dataset name, index): shared by both T1 rows
        self.timings: dict[str, dict[str, float]] = {}

    # ---------------------------------------------------------------------------------------------- preparation
    def prepare(self, datasets: Sequence[Dataset]) -> None:
        """Scan every dataset's documents and check them against the workdir: all before the first encoding."""
        for d in datasets:
            scan = self.scans[d.name] = scan_documents(d)
            d.missing_docs = scan.missing_docs
            check_documents(self.s.workdir, d, scan, self.encoder.fingerprint)
            if d.domain and self.encoder.formatter.cfg.domain_instructions:
                for side in ("query", "doc"):  # one line naming the domain, not a failure in the middle of a run
                    self.encoder.formatter.instruction(side, d.domain)

    def _time(self, dataset: str, what: str, seconds: float) -> None:
        self.timings.setdefault(dataset, {})[what] = round(self.timings.get(dataset, {}).get(what, 0.0) + seconds, 3)

    # ---------------------------------------------------------------------------------------------- documents
    def _store(self, dataset: Dataset):
        from t1_jax.retrieval.store import encode_corpus

        enc = self.encoder
        domain = dataset.domain
        show = enc.show_progress
        enc.show_progress = False  # encode_corpus shows one bar with docs/s

        def embed_fn(texts):
            return enc.encode_documents(texts, [domain] * len(texts))

        t0 = time.time()
        try:
            store = encode_corpus(lambda: readers.read_documents(dataset.documents_path), embed_fn,
                                  fs.join(dataset_dir(self.s.workdir, dataset), "store"),
                                  batch_size=enc.batch_size * max(1, self.s.group), dtype=self.s.dtype,
                                  fingerprint=enc.fingerprint, dim=enc.dim, normalize=enc.normalize,
                                  ids=self.scans[dataset.name].ids, desc=f"{dataset.name} documents")
        finally:
            enc.show_progress = show
        self._time(dataset.name, "documents", time.time() - t0)
        return store

    def searcher(self, dataset: Dataset):
        """Exact search over the store below ``exact_below`` documents, a (cached) ScaNN index from there on."""
        if self._searcher and self._searcher[0] == dataset.name:
            return self._searcher[1]
        self._searcher = None  # the previous dataset's matrix goes before this one's is read
        store = self._store(dataset)
        t0 = time.time()
        mode = self.s.search
        if mode == "auto":
            mode = "exact" if store.num_docs < self.s.exact_below else "scann"
        docs = np.asarray(store.read(), np.float32)
        if mode == "exact":
            from t1_jax.retrieval.exact import ExactIndex

            index = ExactIndex(docs, store.ids, mesh=self.encoder.mesh)
        else:
            index = self._scann(dataset, store, docs)
        del docs
        self._time(dataset.name, "index", time.time() - t0)
        self._searcher = (dataset.name, index)
        return index

    def _scann(self, dataset: Dataset, store, docs):
        from t1_jax.retrieval.index import IndexSettings, build_index, load_index

        index_dir = fs.join(dataset_dir(self.s.workdir, dataset), "index")
        settings = self.index_settings or IndexSettings()
        meta = _read_json(fs.join(index_dir, "meta.json"))
        if meta and meta.get("fingerprint") == store.fingerprint and meta.get("num_docs") == store.num_docs \
                and meta.get("requested") == dataclasses.asdict(settings):
            index = load_index(index_dir, expected_dim=store.dim, expected_fingerprint=store.fingerprint)
            if list(index.ids) == store.ids:
                return index
        index = build_index(docs, store.ids, None, fingerprint=store.fingerprint, settings=settings)
        index.meta["requested"] = dataclasses.asdict(settings)
        index.save(index_dir)
        return index

    # ---------------------------------------------------------------------------------------------- queries
    def _query_key(self, dataset: Dataset, qids: Sequence[str], texts: Sequence[str], reasoning: bool) -> str:
        enc = self.encoder
        text_cfg = {k: v for k, v in dataclasses.asdict(enc.formatter.cfg).items() if k != "tokenizer"}
        return _digest({"model": enc.fingerprint, "reasoning": reasoning, "normalize": enc.normalize,
                        "sampling": dataclasses.asdict(enc.sampling) if reasoning else None,
                        "seed": self.s.seed if reasoning else None, "text": text_cfg,
                        "instruction": enc.formatter.instruction("query", dataset.domain),
                        "queries": [list(qids), list(texts)]})

    def queries(self, dataset: Dataset, reasoning: bool) -> tuple[list[str], np.ndarray, list[str]]:
        """``(ids, embeddings, reasoning)``, encoded in parts of ``query_chunk`` queries; parts on disk are reused."""
        qids = list(dataset.queries)
        texts = [dataset.queries[q] for q in qids]
        folder = fs.join(dataset_dir(self.s.workdir, dataset), "queries",
                         ("r-" if reasoning else "d-") + self._query_key(dataset, qids, texts, reasoning))
        fs.makedirs(folder)
        chunk = self.s.query_chunk or 4 * self.encoder.batch_size
        emb = np.zeros((len(qids), self.encoder.dim), np.float32)
        generated = [""] * len(qids)
        starts = list(range(0, len(qids), chunk))
        done = 0
        t0 = time.time()
        with self.encoder.keep_decode_weights():  # one preparation of the decode weights for every part
            try:
                for part, start in enumerate(starts):
                    stop = min(start + chunk, len(qids))
                    path = fs.join(folder, f"part-{part:05d}.npz")
                    if not fs.exists(path):
                        e, r, _ = self.encoder.encode_queries(texts[start:stop], [dataset.domain] * (stop - start),
                                                              reasoning=reasoning, seed=self.s.seed,
                                                              seeds=range(start, stop))
                        _save_npz(path, ids=np.asarray(qids[start:stop]), emb=e, reasoning=np.asarray(r, dtype=str))
                    saved = _load_npz(path)
                    if list(saved["ids"]) != qids[start:stop]:
                        raise ValueError(f"{path}: holds other queries; delete {folder} to encode them again")
                    emb[start:stop], generated[start:stop] = saved["emb"], [str(x) for x in saved["reasoning"]]
                    done = stop
            except KeyboardInterrupt:
                raise KeyboardInterrupt(f"interrupted: {folder} keeps {done} of {len(qids)} {dataset.name} "
                                        "queries; run the same command again to resume") from None
        self._time(dataset.name, "queries" if reasoning else "queries (no reasoning)", time.time() - t0)
        return qids, emb, generated

    # ---------------------------------------------------------------------------------------------- systems
    def search(self, dataset: Dataset, qids: Sequence[str], q_bd: np.ndarray) -> Run:
        """Top ``depth`` per query with the query's excluded ids removed first (searched deeper by as many)."""
        from t1_jax.retrieval.queries import search_to_run

        index = self.searcher(dataset)
        num_docs = len(index.ids)
        extra = max((len(dataset.excluded.get(q, ())) for q in qids), default=0)
        run = search_to_run(index, q_bd, list(qids), min(self.s.depth + extra, num_docs))
        out = {}
        for qid, ranked in run.items():
            excluded = dataset.excluded.get(qid, ())
            kept = [(d, s) for d, s in ranked.items() if d not in excluded]
            kept.sort(key=lambda kv: (-kv[1], kv[0]))
            out[qid] = dict(kept[:self.s.depth])
        return out

    def system(self, reasoning: bool, tag: str = "t1") -> Callable[[Dataset], Run]:
        def run_system(dataset: Dataset) -> Run:
            from t1_jax.retrieval.trec import write_run

            qids, q_bd, generated = self.queries(dataset, reasoning)
            t0 = time.time()
            run = self.search(dataset, qids, q_bd)
            self._time(dataset.name, "search", time.time() - t0)
            out_dir = dataset_dir(self.s.workdir, dataset)
            write_run(fs.join(out_dir, "run.trec" if reasoning else "run.no-reasoning.trec"), run,
                      tag=tag if reasoning else f"{tag}-no-reasoning")
            if reasoning:
                fs.write_text(fs.join(out_dir, "reasoning.jsonl"), "".join(
                    json.dumps({"id": q, "query": dataset.queries[q], "reasoning": r}, ensure_ascii=False) + "\n"
                    for q, r in zip(qids, generated)))
            return run

        return run_system

    def bm25(self, inner: Callable[[Dataset], Run]) -> Callable[[Dataset], Run]:
        """The BM25 row, its run cached beside the store (keyed by the documents and the depth)."""
        def run_system(dataset: Dataset) -> Run:
            from t1_jax.retrieval.trec import read_run, write_run

            out_dir = dataset_dir(self.s.workdir, dataset)
            key = {"documents_sha256": self.scans[dataset.name].sha256, "depth": self.s.depth,
                   "queries": _digest(dataset.queries)}
            path, meta_path = fs.join(out_dir, "bm25.trec"), fs.join(out_dir, "bm25.json")
            meta = _read_json(meta_path) or {}
            if {k: meta.get(k) for k in key} == key and fs.exists(path):
                return read_run(path) if meta.get("results") else {}  # BM25 may find nothing (no shared words)
            t0 = time.time()
            try:
                run = inner(dataset)
            finally:
                dataset.corpus = None  # BM25's corpus is not kept past its dataset
                dataset.missing_docs = self.scans[dataset.name].missing_docs
            write_run(path, run, tag="bm25")
            fs.write_text(meta_path, json.dumps({**key, "results": sum(map(len, run.values()))}, indent=2))
            self._time(dataset.name, "bm25", time.time() - t0)
            return run

        return run_system

    def release(self) -> None:
        self._searcher = None
