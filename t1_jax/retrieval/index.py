"""ScaNN indices: settings chosen from corpus size, build, serialize to a folder with ids + metadata, load with checks.

Index folder::

    meta.json   format, num_docs, dim, model fingerprint, resolved build settings, scann version
    ids.txt     document ids in row order
    scann/      ScaNN's own artifacts (serialized with relative paths, so the folder can be moved); they include the
                float32 dataset that exact reordering needs

Defaults (our choices; each is an ``IndexSettings`` field, overridable from ``t1 index`` and ``retrieval.*``):
- fewer than ``brute_force_below`` (20k) documents: exact brute force (ScaNN's float32 scorer);
- otherwise a spherical k-means tree with about ``sqrt(n)`` leaves, searching ``leaves_fraction`` of them (at least 20),
  anisotropic hashing with 2 dimensions per 4-bit block (threshold 0.2, for unit-norm embeddings), then exact float32
  re-scoring of the best ``reorder_k`` candidates (default max(250, 10 k)). The recall/speed table behind these numbers
  is in docs/benchmarks.md ("Search");
- then, for tree-AH indices, the search is tuned to ``target_recall`` (0.95 recall@10 against exact search, measured
  at build time on sampled documents or given queries; ``t1_jax.retrieval.tune``): leaves searched and re-scored
  candidates grow from the size-based start until the target is met. Knobs set explicitly are left as set.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Optional, Sequence

import numpy as np

from t1_jax import fs
from t1_jax.config_sections_inference import INDEX_MODES, RetrievalConfig

log = logging.getLogger(__name__)

FORMAT = "t1-scann-index/1"
_RETRIEVAL = RetrievalConfig()  # the knobs an experiment sets (retrieval.*) take their defaults from there
_PARALLEL_BATCH = 64


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """Zero means "choose from the corpus size" (see :meth:`resolve`). The fields an experiment can set
    (``retrieval.*``, :func:`settings_from_config`) are declared once, in ``RetrievalConfig``; the rest are the
    index builder's own."""

    mode: str = _RETRIEVAL.index_mode
    brute_force_below: int = _RETRIEVAL.brute_force_below
    num_leaves: int = _RETRIEVAL.num_leaves
    num_leaves_to_search: int = _RETRIEVAL.num_leaves_to_search
    leaves_fraction: float = _RETRIEVAL.leaves_fraction
    training_sample_size: int = 0
    spherical: bool = True  # spherical k-means for the tree (unit-norm embeddings, inner product)
    dimensions_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder_k: int = _RETRIEVAL.reorder_k
    num_neighbors: int = _RETRIEVAL.top_k  # default k baked into the searcher (search() may ask for any k)
    training_threads: int = 0  # 0 = all cores
    target_recall: float = _RETRIEVAL.target_recall  # tree_ah: tune the search to this recall@10 at build (0 = none)
    tune_queries: int = 500  # sampled documents used as tuning queries (when no query embeddings are given)

    def validate(self) -> list[str]:
        errors = []
        if self.mode not in INDEX_MODES:
            errors.append(f"index mode must be one of {INDEX_MODES}, got {self.mode!r}")
        for name in ("brute_force_below", "num_leaves", "num_leaves_to_search", "training_sample_size", "reorder_k",
                     "training_threads"):
            if getattr(self, name) < 0:
                errors.append(f"index {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.leaves_fraction <= 1:
            errors.append(f"index leaves_fraction must be in (0, 1], got {self.leaves_fraction}")
        if not 0 <= self.target_recall <= 1:
            errors.append(f"index target_recall must be in [0, 1] (0 = no tuning), got {self.target_recall}")
        if self.tune_queries < 1:
            errors.append(f"index tune_queries must be >= 1, got {self.tune_queries}")
        if self.dimensions_per_block <= 0 or self.num_neighbors <= 0:
            errors.append("index dimensions_per_block and num_neighbors must be positive")
        return errors

    def resolve(self, num_docs: int) -> "IndexSettings":
        """Concrete settings for ``num_docs`` documents (mode and every 0 filled in)."""
        problems = self.validate()
        if problems:
            raise ValueError("; ".join(problems))
        mode = self.mode if self.mode != "auto" else (
            "brute_force" if num_docs < self.brute_force_below else "tree_ah")
        if mode == "brute_force":
            return dataclasses.replace(self, mode=mode)
        leaves = self.num_leaves or int(min(max(round(math.sqrt(num_docs)), 2), num_docs))
        to_search = self.num_leaves_to_search or min(leaves, max(20, math.ceil(self.leaves_fraction * leaves)))
        if to_search > leaves:
            raise ValueError(f"num_leaves_to_search ({to_search}) exceeds num_leaves ({leaves})")
        sample = self.training_sample_size or min(num_docs, 250_000)
        reorder = self.reorder_k or max(250, 10 * self.num_neighbors)
        return dataclasses.replace(self, mode=mode, num_leaves=leaves, num_leaves_to_search=to_search,
                                   training_sample_size=min(sample, num_docs), reorder_k=reorder)


def settings_from_config(cfg) -> IndexSettings:
    """IndexSettings from a ``RetrievalConfig`` (``retrieval.index_mode``, ``num_leaves``, ...)."""
    return IndexSettings(mode=cfg.index_mode, num_leaves=cfg.num_leaves, num_leaves_to_search=cfg.num_leaves_to_search,
                         reorder_k=cfg.reorder_k, num_neighbors=cfg.top_k, brute_force_below=cfg.brute_force_below,
                         leaves_fraction=cfg.leaves_fraction, target_recall=cfg.target_recall)


def _builder(emb_ed: np.ndarray, s: IndexSettings):
    from scann.scann_ops.py import scann_ops_pybind

    builder = scann_ops_pybind.builder(emb_ed, s.num_neighbors, "dot_product")
    if s.training_threads:
        builder = builder.set_n_training_threads(s.training_threads)
    if s.mode == "brute_force":
        return builder.score_brute_force()
    return (builder.tree(num_leaves=s.num_leaves, num_leaves_to_search=s.num_leaves_to_search,
                         training_sample_size=s.training_sample_size, spherical=s.spherical)
            .score_ah(s.dimensions_per_block, anisotropic_quantization_threshold=s.anisotropic_threshold)
            .reorder(s.reorder_k))


class Index:
    """A loaded (or freshly built) ScaNN searcher with its document ids."""

    def __init__(self, searcher, ids: Sequence[str], meta: dict):
        self._searcher, self.meta = searcher, meta
        self.ids = np.asarray(list(ids), dtype=object)
        self.settings = IndexSettings(**meta["settings"])

    num_docs = property(lambda self: self.meta["num_docs"])
    dim = property(lambda self: self.meta["dim"])
    fingerprint = property(lambda self: self.meta["fingerprint"])

    def search_indices(self, q_bd, k: int, leaves_to_search: Optional[int] = None,
                       reorder_k: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores_br float32, rows_br int64)``; rows past what ScaNN returns are -1 with score -inf."""
        q_bd = np.ascontiguousarray(q_bd, dtype=np.float32)
        if q_bd.ndim != 2 or q_bd.shape[1] != self.dim:
            raise ValueError(f"queries must be [batch, {self.dim}], got shape {q_bd.shape}")
        k = min(int(k), self.num_docs)
        kwargs = {"final_num_neighbors": k}
        if self.settings.mode == "tree_ah":
            kwargs["pre_reorder_num_neighbors"] = max(reorder_k or self.settings.reorder_k, k)
            kwargs["leaves_to_search"] = leaves_to_search or self.settings.num_leaves_to_search
        if q_bd.shape[0] >= 2 * _PARALLEL_BATCH:  # ScaNN splits the batch over its thread pool
            rows, scores = self._searcher.search_batched_parallel(q_bd, batch_size=_PARALLEL_BATCH, **kwargs)
        else:
            rows, scores = self._searcher.search_batched(q_bd, **kwargs)
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        if rows.shape[1] < k:  # ScaNN found fewer candidates than asked (tiny leaves); pad explicitly
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, rows

    def search(self, q_bd, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """``(scores_br, ids_br)`` with document ids (``None`` where no result)."""
        scores, rows = self.search_indices(q_bd, k, **kwargs)
        ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], None)
        return scores, ids

    def save(self, out_dir: str) -> None:
        """Serialize to ``out_dir`` (local, or gs:// through a local folder that is uploaded)."""
        from t1_jax.retrieval.queries import write_ids

        with fs.local_output_dir(out_dir) as local_dir:
            os.makedirs(os.path.join(local_dir, "scann"), exist_ok=True)
            self._searcher.serialize(os.path.join(local_dir, "scann"), relative_path=True)
            write_ids(os.path.join(local_dir, "ids.txt"), list(self.ids))
            fs.write_text(os.path.join(local_dir, "meta.json"), json.dumps(self.meta, indent=2, sort_keys=True) + "\n")


def build_index(emb_ed, ids: Sequence[str], out_dir: Optional[str] = None, fingerprint: str = "",
                settings: Optional[IndexSettings] = None, tune_queries: Optional[np.ndarray] = None) -> Index:
    """Build a ScaNN index over ``emb_ed`` [n, d] (inner product); serialize it to ``out_dir`` when given.

    ``tune_queries`` [m, d]: query embeddings to tune the search on (default: sampled documents)."""
    import scann

    emb_ed = np.ascontiguousarray(emb_ed, dtype=np.float32)
    if emb_ed.ndim != 2 or emb_ed.shape[0] == 0:
        raise ValueError(f"index: expected a non-empty [num_docs, dim] array, got shape {emb_ed.shape}")
    if len(ids) != emb_ed.shape[0]:
        raise ValueError(f"index: {len(ids)} ids for {emb_ed.shape[0]} embeddings")
    seen: dict[str, int] = {}
    for row, x in enumerate(ids):
        if x in seen:
            raise ValueError(f"index: duplicate document id {x!r} (rows {seen[x]} and {row})")
        if not x or any(ch.isspace() for ch in x):  # a TREC run (t1 search --out) could not hold it
            raise ValueError(f"index: document id {x!r} (row {row}) is empty or contains whitespace; TREC runs "
                             f"separate fields by whitespace")
        seen[x] = row
    if not np.isfinite(emb_ed).all():
        raise ValueError("index: embeddings contain NaN or infinite values")
    requested = settings or IndexSettings()
    resolved = requested.resolve(emb_ed.shape[0])
    if tune_queries is not None and (np.ndim(tune_queries) != 2 or np.shape(tune_queries)[1] != emb_ed.shape[1]):
        raise ValueError(f"index: tuning queries must be [num_queries, {emb_ed.shape[1]}], got shape "
                         f"{np.shape(tune_queries)}")
    t0 = time.time()
    searcher = _builder(emb_ed, resolved).build()
    build_s = time.time() - t0
    log.info("built %s index over %d x %d in %.1fs", resolved.mode, *emb_ed.shape, build_s)
    meta = {"format": FORMAT, "num_docs": int(emb_ed.shape[0]), "dim": int(emb_ed.shape[1]),
            "fingerprint": fingerprint, "settings": dataclasses.asdict(resolved),
            "scann_version": getattr(scann, "__version__", "unknown"), "build_seconds": round(build_s, 3)}
    index = Index(searcher, ids, meta)
    tune_leaves, tune_reorder = requested.num_leaves_to_search == 0, requested.reorder_k == 0
    tunable = resolved.mode == "tree_ah" and resolved.target_recall > 0 and emb_ed.shape[0] > 1
    if tunable and (tune_leaves or tune_reorder):
        _tune(index, emb_ed, resolved, tune_queries, tune_leaves, tune_reorder)
    if out_dir:
        index.save(out_dir)
    return index


def _tune(index: Index, emb_ed: np.ndarray, s: IndexSettings, queries, tune_leaves: bool, tune_reorder: bool) -> None:
    from t1_jax.retrieval.tune import tune_search

    t0 = time.time()
    result = tune_search(index, emb_ed, s.target_recall, k=10, queries=queries, num_queries=s.tune_queries,
                         tune_leaves=tune_leaves, tune_reorder=tune_reorder)
    tuned = dataclasses.replace(s, num_leaves_to_search=result.num_leaves_to_search, reorder_k=result.reorder_k)
    index.settings = tuned
    index.meta["settings"] = dataclasses.asdict(tuned)
    index.meta["tuning"] = dict(dataclasses.asdict(result), seconds=round(time.time() - t0, 3))
    (log.info if result.reached else log.warning)("%s%s", result.summary(s.target_recall),
                                                  "" if result.reached else " -- target NOT reached")


def load_index(index_dir: str, expected_dim: Optional[int] = None,
               expected_fingerprint: Optional[str] = None) -> Index:
    """Load a folder written by :func:`build_index` (local or gs://); a different dimension or model fingerprint is
    an error."""
    meta_path = fs.join(index_dir, "meta.json")
    if not fs.exists(meta_path):
        raise FileNotFoundError(f"{index_dir}: not an index folder (no meta.json; build one with `t1 index`)")
    with fs.local_copy(index_dir) as local_dir:  # ScaNN reads local files
        return _load_local(local_dir, index_dir, expected_dim, expected_fingerprint)


def _load_local(local_dir: str, index_dir: str, expected_dim: Optional[int], expected_fingerprint: Optional[str]):
    from scann.scann_ops.py import scann_ops_pybind

    from t1_jax.retrieval.queries import read_ids

    with open(os.path.join(local_dir, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{index_dir}: unknown index format {meta.get('format')!r} (expected {FORMAT})")
    if expected_dim is not None and meta["dim"] != expected_dim:
        raise ValueError(f"{index_dir}: index has dimension {meta['dim']} but the queries have {expected_dim}")
    if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
        raise ValueError(f"{index_dir}: index was built from model {meta['fingerprint'] or '(unknown)'!r}, not "
                         f"{expected_fingerprint!r}; re-encode the corpus and rebuild the index")
    ids = read_ids(os.path.join(local_dir, "ids.txt"))
    if len(ids) != meta["num_docs"]:
        raise ValueError(f"{index_dir}: ids.txt has {len(ids)} ids for {meta['num_docs']} documents")
    searcher = scann_ops_pybind.load_searcher(os.path.join(local_dir, "scann"))
    return Index(searcher, ids, meta)
