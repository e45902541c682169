"""T1 at inference time: documents embedded in one forward pass, queries through the continuous-batching engine.

``Encoder.from_checkpoint(dir)`` loads a saved model (``t1 train`` leaves it in ``WORKDIR/model``, with the tokenizer
in ``model/tokenizer`` and the run's ``config.json`` beside it, whose ``text``/``sampling``/``retrieval`` sections set
the formats, the decoding settings and normalisation). Batches are built with length bucketing: texts are sorted by
token count, each batch is padded to the smallest bucket length that holds its longest text, and results are put back
in input order; so compute is not wasted on padding and each (batch, bucket) shape compiles once. With a mesh,
parameters are sharded by their logical axes and every batch is split over data x fsdp (rows padded to a multiple).
Queries with reasoning go through ``t1_jax.engine`` (``batch_size`` decode slots; a finished query's slot takes the
next query), not fixed batches: reasoning lengths are long-tailed, and a fixed batch decodes until its longest row.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t1_jax import fs
from t1_jax.config import ExperimentConfig, SamplingConfig, TextConfig
from t1_jax.mesh import BATCH_AXES, batch_shard_count, use_mesh
from t1_jax.observe import progress
from t1_jax.engine import EngineSettings, generate_iter
from t1_jax.sampler import layer_weights
from t1_jax.text import TOKENIZER_SUBDIR, Encoded, T1Formatter, batch_encode, load_tokenizer

log = logging.getLogger(__name__)

DOC_BUCKETS: tuple[int, ...] = (32, 64, 128, 256, 512)  # padded lengths for one-pass encoding (docs, direct queries)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The padded length of an inference batch: the smallest bucket >= n; beyond the largest, the next multiple of the
    largest (any text can be encoded; training refuses instead: :func:`t1_jax.data.batch_spec.training_length`)."""
    for b in buckets:
        if n <= b:
            return int(b)
    last = int(buckets[-1])
    return -(-n // last) * last


def length_batches(lengths: Sequence[int], batch_size: int, bucketing: bool = True) -> list[np.ndarray]:
    """Row indices of each batch: sorted by length (longest first, so memory problems show at once) when bucketing,
    input order otherwise."""
    order = np.argsort(-np.asarray(lengths), kind="stable") if bucketing else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@functools.partial(jax.jit, static_argnames=("graphdef", "normalize", "mesh"))
def _embed_batch(graphdef, params, ids_bt, valid_bt, *, normalize: bool, mesh: Optional[Mesh]):
    from t1_jax.model.embedding import embed_last

    with use_mesh(mesh):
        return embed_last(nnx.merge(graphdef, params), ids_bt, valid_bt, normalize)[0]


def fingerprint_of(directory: str) -> str:
    """A short content hash of a saved model: its config and the checkpoint's small metadata files."""
    h = hashlib.sha256()
    for rel, size in fs.files(directory):
        if rel.startswith("tokenizer/") or "/tokenizer/" in rel or size > 1 << 20:
            continue
        h.update(rel.encode() + b"\0")
        with fs.open(fs.join(directory, *rel.split("/")), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def host_batch_size(slice_batch: int) -> int:
    """``retrieval.encode_batch_size`` is per slice (the eval layouts size it to the chips); each host encodes its
    own share of the corpus on its own devices, with ``slice_batch / hosts`` rows per batch (the Encoder then rounds
    it up to a multiple of the mesh's batch shards)."""
    return max(1, slice_batch // jax.process_count())


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class Encoder:
    """Embeds documents and queries with a T1 model (see module doc)."""

    def __init__(self, model, formatter: T1Formatter, *, mesh: Optional[Mesh] = None,
                 sampling: SamplingConfig = SamplingConfig(), normalize: bool = True, batch_size: int = 32,
                 doc_buckets: Sequence[int] = DOC_BUCKETS, fingerprint: str = "", show_progress: bool = True):
        cfg = model.cfg
        emb_id = formatter.emb_token_id
        if cfg.emb_token_id is not None and cfg.emb_token_id != emb_id:
            raise ValueError(f"the model was trained with <embtoken> id {cfg.emb_token_id} but the tokenizer gives "
                             f"{emb_id}; load the tokenizer saved with the model")
        if emb_id >= cfg.vocab_size:
            raise ValueError(f"<embtoken> id {emb_id} is outside the model's {cfg.vocab_size}-row vocabulary")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.formatter, self.mesh, self.sampling, self.normalize = formatter, mesh, sampling, normalize
        self.doc_buckets, self.fingerprint, self.show_progress = tuple(doc_buckets), fingerprint, show_progress
        shards = batch_shard_count(mesh) if mesh is not None else 1
        self.batch_size = -(-batch_size // shards) * shards  # every batch splits evenly over data x fsdp
        self.graphdef, self.params = nnx.split(model)
        self.dim = cfg.hidden_size
        self._held = {}  # decode weights kept by keep_decode_weights(); shared with batch-size copies

    @contextlib.contextmanager
    def keep_decode_weights(self):
        """Inside the block, every :meth:`encode_queries` call with reasoning reuses one preparation of the decode
        weights (on CPU: split per layer and backed by huge pages, 1-2 s per GB of model: docs/benchmarks.md,
        Decode), made at the first such call and released at the end of the block. Outside, each call prepares its
        own and frees it when it returns, so document encoding never holds a second copy of the weights."""
        self._held["depth"] = self._held.get("depth", 0) + 1
        try:
            yield self
        finally:
            self._held["depth"] -= 1
            if not self._held["depth"]:
                self._held.pop("layers", None)

    def _decode_weights(self):
        """The decode weights for one generate call: the held ones inside :meth:`keep_decode_weights`, else None
        (the engine prepares its own for the call)."""
        if not self._held.get("depth"):
            return None
        if "layers" not in self._held:
            self._held["layers"] = layer_weights(self.graphdef, self.params, self.mesh, huge_pages=True)
        return self._held["layers"]

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, directory: str, mesh: Optional[Mesh] = None, *, tokenizer: Optional[str] = None,
                        config: Optional[ExperimentConfig] = None, cfg_overrides: Optional[dict] = None,
                        config_source: str = "the given config", **kwargs) -> "Encoder":
        """Load ``directory`` (a saved model, or a ``t1 train`` workdir holding ``model/``).

        ``config``: the experiment whose text/sampling/retrieval sections apply (default: the run's ``config.json``
        beside the model when present, else defaults, with the inference decoding of ``model/inference.json``
        instead of the run's training ``sampling``: see :mod:`t1_jax.inference_defaults`). ``tokenizer``: a tokenizer folder (default:
        ``<model>/tokenizer``, else ``config.text.tokenizer``). ``cfg_overrides``: ModelConfig fields such as
        ``compute_dtype``. Other keyword arguments go to :class:`Encoder` (batch_size, sampling, normalize, ...).
        """
        from t1_jax import inference_defaults
        from t1_jax.model.params_io import load_model
        from t1_jax.model.params_io import model_dir

        model_path = model_dir(directory)
        source = config_source  # where the decoding settings come from, for the log line
        if config is None:
            config, source = inference_defaults.run_config(model_path)
        own = fs.join(model_path, TOKENIZER_SUBDIR)
        tok_path = tokenizer or (own if fs.isdir(own) else config.text.tokenizer)
        if not tok_path:
            raise ValueError(f"{model_path} has no {TOKENIZER_SUBDIR}/ folder (converted from an HF folder without "
                             "tokenizer files?) and no tokenizer was given: pass --tokenizer DIR (or text.tokenizer)")
        text_cfg: TextConfig = dataclasses.replace(config.text, tokenizer=tok_path)
        formatter = T1Formatter(load_tokenizer(tok_path, text_cfg.emb_token), text_cfg)
        # Inference updates nothing: parameters are held in the compute dtype (a trained model's float32 masters are
        # cast on restore), unless cfg_overrides says otherwise.
        from t1_jax.model.params_io import load_model_config

        overrides = dict(cfg_overrides or {})
        overrides.setdefault("param_dtype", overrides.get("compute_dtype", load_model_config(model_path).compute_dtype))
        model = load_model(model_path, mesh=mesh, cfg_overrides=overrides)
        kwargs.setdefault("sampling", config.sampling)
        log.info("query decoding: %s (from %s)", inference_defaults.describe(kwargs["sampling"]),
                 source if kwargs["sampling"] is config.sampling else "the caller")
        kwargs.setdefault("normalize", config.retrieval.normalize)
        kwargs.setdefault("batch_size", host_batch_size(config.retrieval.encode_batch_size))
        return cls(model, formatter, mesh=mesh, fingerprint=fingerprint_of(model_path), **kwargs)

    # ------------------------------------------------------------------------------------------------ batching
    def _bar(self, total: int, desc: str, unit: str):
        return progress(None, total=total, desc=desc, unit=unit) if self.show_progress else _NoBar()

    def _with_batch_size(self, batch_size: Optional[int]) -> "Encoder":
        if batch_size is None:
            return self
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        other = copy.copy(self)
        shards = batch_shard_count(self.mesh) if self.mesh is not None else 1
        other.batch_size = -(-batch_size // shards) * shards
        return other

    def _device_batch(self, rows: Sequence[Encoded], length: int, left: bool = False):
        """``[batch_size, length]`` ids/valid (numpy rows padded with one-token dummies), placed on the mesh."""
        ids = np.full((self.batch_size, length), self.formatter.pad_token_id, np.int32)
        valid = np.zeros((self.batch_size, length), bool)
        valid[len(rows):, 0] = True  # dummy rows: one real token, so no row attends to nothing
        for b, e in enumerate(rows):
            sl = slice(length - len(e.ids), length) if left else slice(0, len(e.ids))
            ids[b, sl], valid[b, sl] = e.ids, True
        if self.mesh is None:
            return jnp.asarray(ids), jnp.asarray(valid)
        sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, None))
        return jax.device_put(ids, sharding), jax.device_put(valid, sharding)

    def embed_encoded(self, encoded: Sequence[Encoded], bucketing: bool = True, desc: str = "embed") -> np.ndarray:
        """One forward pass per batch over complete sequences (each ending with ``<embtoken>``) -> ``[B, D]``."""
        out = np.zeros((len(encoded), self.dim), np.float32)
        lengths = [len(e) for e in encoded]
        fixed = None if bucketing else bucket_length(max(lengths, default=1), self.doc_buckets)
        bar = self._bar(len(encoded), desc, "text")
        for rows in length_batches(lengths, self.batch_size, bucketing):
            length = fixed or bucket_length(max(lengths[i] for i in rows), self.doc_buckets)
            ids, valid = self._device_batch([encoded[i] for i in rows], length)
            emb = _embed_batch(self.graphdef, self.params, ids, valid, normalize=self.normalize, mesh=self.mesh)
            out[rows] = np.asarray(jax.device_get(emb))[:len(rows)]
            bar.update(len(rows))
        bar.close()
        return out

    # ------------------------------------------------------------------------------------------------ public API
    def encode_documents(self, texts: Sequence[str], domains: Optional[Sequence[Optional[str]]] = None,
                         batch_size: Optional[int] = None, bucketing: bool = True) -> np.ndarray:
        """``[E, D]`` float32 embeddings of ``instruction + text + <embtoken>``, in input order."""
        encoder = self._with_batch_size(batch_size)
        encoded, _ = batch_encode(self.formatter, "document", list(texts), domains, name="documents")
        return encoder.embed_encoded(encoded, bucketing, desc="documents")

    def encode_queries(self, queries: Sequence[str], domains: Optional[Sequence[Optional[str]]] = None,
                       reasoning: bool = True, sampling: Optional[SamplingConfig] = None, seed: int = 0,
                       batch_size: Optional[int] = None, seeds: Optional[Sequence[int]] = None
                       ) -> tuple[np.ndarray, list[str], dict]:
        """``(embeddings [B, D], reasoning texts, stats)``. With ``reasoning`` the model writes a reasoning trace
        (sampler, ``sampling`` settings) before ``<embtoken>``; without, ``prompt + <embtoken>`` in one pass.
        ``seeds``: each query's own draw (default: its index), so a query set encoded in parts with its global
        indices samples what it would have sampled in one call."""
        encoder = self._with_batch_size(batch_size)
        queries = list(queries)
        t0 = time.time()
        if not reasoning:
            encoded, trunc = batch_encode(self.formatter, "query_direct", queries, domains, name="queries")
            emb = encoder.embed_encoded(encoded, desc="queries")
            return emb, [""] * len(queries), {"queries": len(queries), "truncated": trunc.truncated,
                                              "seconds": time.time() - t0}
        return encoder._generate(queries, domains, sampling or self.sampling, seed, t0, seeds)

    def _generate(self, queries, domains, sampling: SamplingConfig, seed: int, t0: float, seeds=None):
        """Reasoning + embedding for every query with the continuous-batching engine (``t1_jax.engine``):
        ``batch_size`` slots, a finished query's slot takes the next one. Each query draws from its own key
        (``seed`` folded with its index), so its output does not depend on the batch size."""
        encoded, trunc = batch_encode(self.formatter, "query_prompt", queries, domains, name="queries")
        out = np.zeros((len(queries), self.dim), np.float32)
        texts = [""] * len(queries)
        lengths_b = np.zeros(len(queries), np.int64)
        forced_b = np.zeros(len(queries), bool)
        eos_b = np.zeros(len(queries), bool)
        bar = self._bar(len(queries), "queries", "query")
        results = generate_iter(self.graphdef, self.params, [e.ids for e in encoded], sampling,
                                emb_token_id=self.formatter.emb_token_id, eos_token_ids=self.formatter.eos_token_ids,
                                seeds=seeds, rng=jax.random.key(seed), normalize=self.normalize,
                                settings=EngineSettings(slots=self.batch_size), mesh=self.mesh,
                                layers=self._decode_weights())
        for i, gen in results:
            out[i], lengths_b[i], forced_b[i], eos_b[i] = gen.embedding, len(gen.tokens), gen.forced, gen.stopped_eos
            # the reasoning: generated tokens before <embtoken>, specials dropped
            texts[i] = self.formatter.tokenizer.decode(gen.tokens[:-1].tolist(), skip_special_tokens=True)
            bar.update(1)
        bar.close()
        seconds = time.time() - t0
        stats = {"queries": len(queries), "truncated": trunc.truncated, "seconds": seconds,
                 "mean_generated_tokens": float(lengths_b.mean()) if len(queries) else 0.0,
                 "forced_fraction": float(forced_b.mean()) if len(queries) else 0.0,
                 "eos_fraction": float(eos_b.mean()) if len(queries) else 0.0,
                 "generated_tokens_per_s": float(lengths_b.sum() / max(seconds, 1e-9))}
        return out, texts, stats
