"""Document embeddings on disk with tensorstore (zarr, row-chunked), resumable and writable by many hosts.

Layout of a store folder (local path or ``gs://bucket/path``)::

    meta.json        num_docs, dim, dtype, chunk_rows, model fingerprint, sha256 of the ids
    ids.txt          document ids, one per line, in row order
    embeddings/      zarr array [num_docs, dim] (float16 or float32), chunks of ``chunk_rows`` rows x dim
    done/<chunk>     an empty marker written after a chunk's data: a chunk without it is (re)computed on resume

Chunk ``c`` is encoded by process ``c % process_count``, so hosts write disjoint chunks and never coordinate
beyond one barrier after creation and one at the end.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "t1-embeddings/1"
_DTYPES = {"float16": "<f2", "float32": "<f4"}
_TARGET_CHUNK_BYTES = 4 << 20
_MAX_CHUNK_ROWS = 1024


def _kvstore_spec(path: str) -> dict:
    if path.startswith("gs://"):
        bucket, _, rest = path[len("gs://"):].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": rest.rstrip("/") + "/"}
    import os

    return {"driver": "file", "path": os.path.abspath(path) + "/"}


def _ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for x in ids:
        h.update(x.encode("utf-8") + b"\n")
    return h.hexdigest()


def default_chunk_rows(dim: int, dtype: str, batch_size: int = 1) -> int:
    """At most 4 MiB and 1024 rows per chunk (the work a crash can lose), a multiple of the encoding batch size."""
    rows = max(1, min(_MAX_CHUNK_ROWS, _TARGET_CHUNK_BYTES // (dim * np.dtype(_DTYPES[dtype]).itemsize)))
    return max(batch_size, rows // batch_size * batch_size)


class EmbeddingStore:
    """Open with :meth:`create` or :meth:`open`; rows are written a whole chunk at a time."""

    def __init__(self, path: str, meta: dict, ids: list[str], kv, array):
        self.path, self.meta, self.ids, self._kv, self._array = path, meta, ids, kv, array

    # ---- construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, num_docs: int, dim: int, dtype: str, ids: Sequence[str], fingerprint: str = "",
               chunk_rows: Optional[int] = None) -> "EmbeddingStore":
        """A new store, or the existing one at ``path`` when it was created with the same corpus, shape and model."""
        import tensorstore as ts

        if dtype not in _DTYPES:
            raise ValueError(f"embedding dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if num_docs <= 0:
            raise ValueError("cannot create an embedding store for an empty corpus")
        if len(ids) != num_docs:
            raise ValueError(f"{len(ids)} ids for {num_docs} documents")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate document ids: every row of the store needs a distinct id")
        if dim <= 0:
            raise ValueError(f"embedding dim must be positive, got {dim}")
        if chunk_rows is not None and chunk_rows <= 0:
            raise ValueError(f"chunk rows must be positive, got {chunk_rows}")
        bad = next((i for i in ids if not i or any(ch.isspace() for ch in i)), None)
        if bad is not None:
            raise ValueError(f"document id {bad!r} is empty or contains whitespace: ids.txt holds one id per line and "
                             f"TREC runs separate fields by whitespace")
        chunk_rows = int(chunk_rows or default_chunk_rows(dim, dtype))
        meta = {"format": FORMAT, "num_docs": int(num_docs), "dim": int(dim), "dtype": dtype,
                "chunk_rows": chunk_rows, "fingerprint": fingerprint, "ids_sha256": _ids_digest(ids)}
        kv = ts.KvStore.open(_kvstore_spec(path)).result()
        existing = kv.read("meta.json").result()
        if existing.state == "value":
            store = cls.open(path)
            store._check_same(meta)
            return store
        array = ts.open({"driver": "zarr", "kvstore": {**_kvstore_spec(path), "path": _kvstore_spec(path)["path"]
                                                      + "embeddings/"},
                         "metadata": {"shape": [num_docs, dim], "chunks": [chunk_rows, dim],
                                      "dtype": _DTYPES[dtype], "compressor": None, "fill_value": 0}},
                        create=True, delete_existing=True).result()
        kv.write("ids.txt", "".join(x + "\n" for x in ids).encode("utf-8")).result()
        kv.write("meta.json", json.dumps(meta, indent=2).encode("utf-8")).result()  # last: marks a complete create
        return cls(path, meta, list(ids), kv, array)

    @classmethod
    def open(cls, path: str) -> "EmbeddingStore":
        import tensorstore as ts

        kv = ts.KvStore.open(_kvstore_spec(path)).result()
        raw = kv.read("meta.json").result()
        if raw.state != "value":
            raise FileNotFoundError(f"{path}: not an embedding store (no meta.json)")
        meta = json.loads(bytes(raw.value).decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown store format {meta.get('format')!r} (expected {FORMAT})")
        ids = bytes(kv.read("ids.txt").result().value).decode("utf-8").split("\n")[:-1]
        if len(ids) != meta["num_docs"] or _ids_digest(ids) != meta["ids_sha256"]:
            raise ValueError(f"{path}: ids.txt does not match meta.json (store damaged)")
        spec = _kvstore_spec(path)
        array = ts.open({"driver": "zarr", "kvstore": {**spec, "path": spec["path"] + "embeddings/"}}).result()
        return cls(path, meta, ids, kv, array)

    def _check_same(self, wanted: dict) -> None:
        for key in ("num_docs", "dim", "dtype", "fingerprint", "ids_sha256", "chunk_rows"):
            if self.meta[key] != wanted[key]:
                what = "document ids" if key == "ids_sha256" else key
                raise ValueError(f"{self.path}: existing store has a different {what} ({self.meta[key]!r} vs "
                                 f"{wanted[key]!r}); use a new folder or delete it to start over")

    # ---- properties --------------------------------------------------------------------------------------------
    num_docs = property(lambda self: self.meta["num_docs"])
    dim = property(lambda self: self.meta["dim"])
    dtype = property(lambda self: self.meta["dtype"])
    chunk_rows = property(lambda self: self.meta["chunk_rows"])
    fingerprint = property(lambda self: self.meta["fingerprint"])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_docs // self.chunk_rows)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_docs)

    # ---- writing and reading -----------------------------------------------------------------------------------
    def write_chunk(self, start: int, emb_ed: np.ndarray) -> None:
        """Write the whole chunk that begins at row ``start``, then its done-marker."""
        if start % self.chunk_rows or not 0 <= start < self.num_docs:
            raise ValueError(f"chunk start {start} is not a chunk boundary (chunk_rows={self.chunk_rows}, "
                             f"num_docs={self.num_docs})")
        chunk = start // self.chunk_rows
        stop = self.chunk_range(chunk)[1]
        if emb_ed.shape != (stop - start, self.dim):
            raise ValueError(f"chunk {chunk} needs shape {(stop - start, self.dim)}, got {emb_ed.shape}")
        if not np.isfinite(emb_ed).all():
            raise ValueError(f"chunk {chunk} (rows {start}..{stop - 1}) has NaN or infinite embeddings")
        self._array[start:stop].write(np.asarray(emb_ed, dtype=_DTYPES[self.dtype])).result()
        # The marker's content is never read (only its key): the row range, so it is not an empty object, which
        # some GCS servers (the test emulator) cannot receive.
        self._kv.write(f"done/{chunk:08d}", f"{start}:{stop}\n".encode()).result()

    def done_chunks(self) -> set[int]:
        keys = self._kv.list(range=__import__("tensorstore").KvStore.KeyRange("done/", "done0")).result()
        names = (bytes(k).decode() for k in keys)  # filtered again: not every GCS server honours the range
        return {int(n[len("done/"):]) for n in names if n.startswith("done/") and n[len("done/"):].isdigit()}

    def missing_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [c for c in range(self.num_chunks) if c not in done]

    def lost_chunks(self) -> list[int]:
        """Chunks marked done whose zarr data object is gone (deleted, or a partial copy of the folder): reading them
        would give the fill value, all-zero rows, without an error."""
        import tensorstore as ts

        keys = self._kv.list(range=ts.KvStore.KeyRange("embeddings/", "embeddings0")).result()
        present = set()
        for key in (bytes(k).decode() for k in keys):  # zarr v2 chunk keys: "embeddings/<row chunk>.0"
            name = key[len("embeddings/"):]
            if name.endswith(".0") and name[:-2].isdigit():
                present.add(int(name[:-2]))
        return [c for c in sorted(self.done_chunks()) if c not in present]

    def read(self, start: int = 0, stop: Optional[int] = None, check_complete: bool = True) -> np.ndarray:
        """Rows ``start:stop`` in the stored dtype; refuses an incomplete store unless ``check_complete=False``."""
        if check_complete:
            missing = self.missing_chunks()
            if missing:
                raise ValueError(f"{self.path}: {len(missing)} of {self.num_chunks} chunks are not written yet "
                                 f"(e.g. chunk {missing[0]}); finish encoding (it resumes) before reading")
            lost = self.lost_chunks()
            if lost:
                first = self.chunk_range(lost[0])
                raise ValueError(f"{self.path}: {len(lost)} chunk(s) marked done have no data (e.g. chunk {lost[0]}, "
                                 f"rows {first[0]}..{first[1] - 1}: its file under embeddings/ is missing); run "
                                 f"`t1 encode` again with the same arguments: it re-encodes them")
        return self._array[start:self.num_docs if stop is None else stop].read().result()


class EncodeInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`encode_corpus`: says what the store keeps (every chunk whose done-marker was written)."""

    def __init__(self, store: EmbeddingStore):
        done = store.done_chunks()
        rows = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in done)
        super().__init__(f"interrupted: {store.path} keeps the {len(done)} of {store.num_chunks} chunks already "
                         f"written ({rows} of {store.num_docs} documents); run the same command again to encode the "
                         f"rest")


def _barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def encode_corpus(doc_iter: Iterable[tuple[str, str]] | Callable[[], Iterable[tuple[str, str]]],
                  embed_fn: Callable[[list[str]], np.ndarray], store_path: str,
                  batch_size: int = 32, *, dtype: str = "float16", fingerprint: str = "",
                  chunk_rows: Optional[int] = None, dim: Optional[int] = None, normalize: bool = True,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  ids: Optional[Sequence[str]] = None, desc: str = "encode") -> EmbeddingStore:
    """Embed ``(id, text)`` documents into a store at ``store_path``; chunks already written are skipped.

    ``embed_fn(texts) -> [len(texts), dim]`` is the encoder hook (any model). ``dim`` is probed from one document
    when not given. Process ``p`` of ``P`` (default: JAX's) encodes chunks ``c`` with ``c % P == p``.

    ``doc_iter`` may be a function returning a fresh iterator (e.g. ``lambda: read_documents(path)``): then the
    corpus is streamed, never held: one pass for the ids (skipped when ``ids`` are given), one for the texts of the
    chunks still to encode, of which at most one batch is in memory at a time.
    """
    import jax

    from t1_jax.observe import progress

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if callable(doc_iter):
        open_docs = doc_iter
        ids = list(ids) if ids is not None else [doc_id for doc_id, _ in open_docs()]
    else:
        ids, texts = [], []
        for doc_id, text in doc_iter:
            ids.append(doc_id)
            texts.append(text)

        def open_docs():
            return zip(ids, texts)
    if not ids:
        raise ValueError("encode: the corpus is empty")
    if dim is None:
        dim = int(np.asarray(embed_fn([next(iter(open_docs()))[1]])).shape[-1])
    if chunk_rows is not None and chunk_rows <= 0:
        raise ValueError(f"--chunk-rows must be positive, got {chunk_rows}")
    rows = chunk_rows or default_chunk_rows(dim, dtype, batch_size)
    if pi == 0:
        store = EmbeddingStore.create(store_path, len(ids), dim, dtype, ids, fingerprint, rows)
    _barrier("t1-store-created")
    if pi != 0:
        store = EmbeddingStore.open(store_path)
        store._check_same({**store.meta, "num_docs": len(ids), "dim": dim, "dtype": dtype,
                           "fingerprint": fingerprint, "ids_sha256": _ids_digest(ids)})
    lost = store.lost_chunks()
    if lost:
        log.warning("%s: %d chunk(s) marked done have no data (e.g. chunk %d); encoding them again", store_path,
                    len(lost), lost[0])
    done = store.done_chunks() - set(lost)
    mine = [c for c in range(store.num_chunks) if c % pc == pi]
    todo = [c for c in mine if c not in done]
    skipped_rows = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in mine if c in done)
    if skipped_rows:
        log.info("%s: resuming, %d of %d chunks of this process already written", store_path,
                 len(mine) - len(todo), len(mine))
    my_rows = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in mine)
    bar = progress(None, total=my_rows, desc=desc, unit="doc", initial=skipped_rows)
    t0 = time.time()
    try:
        batches = _todo_batches(open_docs, store, todo, batch_size) if todo else iter(())
        for chunk in todo:
            start, stop = store.chunk_range(chunk)
            parts = []
            for b in range(start, stop, batch_size):
                batch = next(batches)
                if len(batch) != min(b + batch_size, stop) - b:
                    raise ValueError(f"{store_path}: the documents changed while encoding (expected "
                                     f"{store.num_docs} documents, fewer were read)")
                emb = np.asarray(embed_fn(batch), dtype=np.float32)
                if emb.shape != (len(batch), dim):
                    raise ValueError(f"embed_fn returned shape {emb.shape} for {len(batch)} texts (expected "
                                     f"{(len(batch), dim)})")
                parts.append(emb)
                bar.update(len(batch))
            emb_ed = np.concatenate(parts)
            if normalize:
                emb_ed = emb_ed / np.maximum(np.linalg.norm(emb_ed, axis=1, keepdims=True), 1e-12)
            store.write_chunk(start, emb_ed)
    except KeyboardInterrupt:
        bar.close()
        raise EncodeInterrupted(store) from None
    bar.close()
    if todo:
        log.info("encoded %d documents in %.1fs", sum(store.chunk_range(c)[1] - store.chunk_range(c)[0]
                                                      for c in todo), time.time() - t0)
    _barrier("t1-store-written")
    return store


def _todo_batches(open_docs: Callable[[], Iterable[tuple[str, str]]], store: EmbeddingStore, todo: Sequence[int],
                  batch_size: int):
    """Texts of the chunks in ``todo`` (ascending), ``batch_size`` at a time and never across a chunk boundary, from
    one pass over the documents; rows of other chunks are skipped without being kept."""
    wanted = iter(sorted(todo))
    chunk = next(wanted, None)
    batch: list[str] = []
    for row, (doc_id, text) in enumerate(open_docs()):
        if chunk is None:
            break
        start, stop = store.chunk_range(chunk)
        if row < start:
            continue
        if doc_id != store.ids[row]:
            raise ValueError(f"{store.path}: document {row} is {doc_id!r} but the store has {store.ids[row]!r} "
                             f"there (the corpus changed since the store was created)")
        batch.append(text)
        if len(batch) == batch_size or row == stop - 1:
            yield batch
            batch = []
        if row == stop - 1:
            chunk = next(wanted, None)
    if batch:
        yield batch
    yield []  # the corpus ended early: the caller sees a short batch
