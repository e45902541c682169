"""Precomputed embeddings (``.npy`` + ids file, or jsonl of ``{id, embedding[, reasoning]}``) and search -> run."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from t1_jax import fs
from t1_jax.data.readers import DataError, read_jsonl, require


def read_ids(path: str) -> list[str]:
    """One id per line (blank lines are an error: an id file must line up row for row with its embeddings)."""
    with fs.open(path, encoding="utf-8") as f:
        ids = [line.rstrip("\n") for line in f]
    if ids and ids[-1] == "":
        ids.pop()
    for i, x in enumerate(ids, start=1):
        if not x.strip() or x != x.strip():
            raise DataError(f"{path}:{i}: ids must be non-empty and have no surrounding whitespace, got {x!r}")
    return ids


def write_ids(path: str, ids: Sequence[str]) -> None:
    for x in ids:
        if "\n" in x or not x.strip():
            raise ValueError(f"id {x!r} cannot be written one per line")
    fs.write_text(path, "".join(x + "\n" for x in ids))


def check_unique(ids: Sequence[str], source: str) -> None:
    seen: dict[str, int] = {}
    for i, x in enumerate(ids, start=1):
        if x in seen:
            raise DataError(f"{source}:{i}: duplicate id {x!r} (first at line {seen[x]})")
        seen[x] = i


def load_npy(path: str, what: str = "embeddings") -> np.ndarray:
    """A ``.npy`` array (memory-mapped when local), or a DataError when the file is not one: numpy's own message
    for other bytes talks about pickled data, which we never load."""
    with fs.open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise DataError(f"{path}: not a .npy file (no NumPy header); {what} must be a float array written by "
                        f"numpy.save")
    if fs.is_url(path):
        with fs.open(path, "rb") as f:
            return np.load(f)
    return np.load(path, mmap_mode="r")


def load_embeddings(path: str, ids_path: Optional[str], what: str = "embeddings") -> tuple[list[str], np.ndarray]:
    """``(ids, emb float32)`` from ``.npy`` + ids file; checks shape, row count, finiteness and unique ids."""
    if not ids_path:
        raise ValueError(f"{path}: a .npy file of {what} needs its ids file (one id per line, same order)")
    emb = load_npy(path, what)
    if emb.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [rows, dim] of {what}, got shape {emb.shape}")
    ids = read_ids(ids_path)
    if len(ids) != emb.shape[0]:
        raise DataError(f"{ids_path}: {len(ids)} ids for {emb.shape[0]} rows of {path}")
    if not ids:
        raise DataError(f"{path}: no {what} (empty)")
    check_unique(ids, ids_path)
    emb = np.asarray(emb, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise DataError(f"{path}: {what} contain NaN or infinite values")
    return ids, emb


def load_query_embeddings(path: str, ids_path: Optional[str] = None) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """``(query_ids, q_bd float32, reasoning)``: a ``.npy`` + ids file, or jsonl ``{id, embedding[, reasoning]}``."""
    if path.endswith(".npy"):
        ids, q_bd = load_embeddings(path, ids_path, "query embeddings")
        return ids, q_bd, {}
    ids, rows, reasoning = [], [], {}
    for line_no, obj in read_jsonl(path):
        qid = str(require(obj, "id", path, line_no, (str, int)))
        emb = require(obj, "embedding", path, line_no, (list,))
        if rows and len(emb) != len(rows[0]):
            raise DataError(f"{path}:{line_no}: embedding has {len(emb)} values, earlier ones {len(rows[0])}")
        ids.append(qid)
        rows.append(emb)
        if obj.get("reasoning"):
            reasoning[qid] = obj["reasoning"]
    if not ids:
        raise DataError(f"{path}: no query embeddings (empty query set)")
    check_unique(ids, path)
    return ids, np.asarray(rows, dtype=np.float32), reasoning


def search_to_run(index, q_bd: np.ndarray, query_ids: Sequence[str], k: int,
                  batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Search ``index`` (anything with ``.search(q_bd, k) -> (scores_br, ids_br)``) in batches -> TREC-style run."""
    from t1_jax.retrieval.trec import run_from_arrays

    if len(query_ids) == 0:
        raise ValueError("search: the query set is empty")
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), batch_size):
        scores_br, ids_br = index.search(q_bd[start:start + batch_size], k)
        run.update(run_from_arrays(query_ids[start:start + batch_size], scores_br, ids_br))
    return run
