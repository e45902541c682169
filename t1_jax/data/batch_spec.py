"""The layout of a training batch, written once: ``{key: (shape, dtype, logical axes)}``.

The collator checks its output against it (:func:`check_batch`, every batch), ``t1 compile-check`` builds its abstract
inputs from it (:func:`abstract_batch`) and the trainer shards batches by its logical axes; each stage names its spec
in the stage registry (:mod:`t1_jax.stages.registry`). Pure Python + numpy: no JAX until :func:`abstract_batch`.

Contrastive layout (stages 1-3; ``b`` = rows, ``H`` = ``data.num_hard_negatives``, ``n = b * (1 + H)`` documents,
``P`` = ``data.max_positives``):

=================  ===========  ==================================================================================
key                shape        meaning
=================  ===========  ==================================================================================
``q_ids``          [b, Tq]      query tokens (stage 1: direct query; stage 2: prompt + teacher reasoning; stage 3:
                                the prompt alone), right-padded
``q_valid``        [b, Tq]      1 = real token
``q_loss``         [b, Tq]      1 = reasoning target token (stage 2 cross-entropy; zeros otherwise)
``d_ids``          [n, Td]      documents, per query ``[positive, negative_1 .. negative_H]``
``d_valid``        [n, Td]
``doc_keys``       [n]          31-bit text hash per document (-1 = padding slot when a query has < H negatives)
``pos_col``        [b]          column of each query's positive among this host's n documents (= i * (1 + H))
``pos_keys``       [b, P]       keys of all of the query's positives (-1 padded), for duplicate masking
=================  ===========  ==================================================================================
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

Field = tuple[tuple[int, ...], np.dtype, tuple[Optional[str], ...]]  # (shape, dtype, logical axes)
BatchSpec = dict[str, Field]

ROUND_TO = 64  # without explicit buckets, lengths are padded up to a multiple of this (bounded recompiles)
# What each query format holds beyond text.max_query_tokens of prompt: (reasoning, a final <embtoken>).
# stage 1: instruction + query + <embtoken>; stage 2: + teacher reasoning; stage 3 (GRPO): the prompt the policy
# continues with its own reasoning.
QUERY_KINDS: dict[str, tuple[bool, bool]] = {
    "query_direct": (False, True),
    "query_with_reasoning": (True, True),
    "query_prompt": (False, False),
}
_I32 = np.dtype(np.int32)
_TOKENS = ("batch", "length")


def training_length(length: int, buckets: Sequence[int]) -> int:
    """The padded length for a training batch whose longest sequence has ``length`` tokens: the smallest bucket that
    holds it, an error past the largest (the budgets bound training lengths; every host pads to the same shapes),
    a multiple of ``ROUND_TO`` without buckets. Inference pads past the largest bucket instead
    (:func:`t1_jax.encoder.bucket_length`)."""
    for b in buckets:
        if length <= b:
            return b
    if buckets:
        raise ValueError(f"a sequence of {length} tokens exceeds the largest length bucket {buckets[-1]}; add a larger "
                         f"bucket to data.length_buckets")
    return -(-length // ROUND_TO) * ROUND_TO


def padded_lengths(cfg, query_kind: str) -> tuple[int, int]:
    """(query, document) padded lengths of the longest possible batch, as the multi-host pipeline pads them.

    Query = the prompt (``text.max_query_tokens``) [+ ``text.max_reasoning_tokens`` of reasoning] [+ ``<embtoken>``];
    document = ``text.max_doc_tokens`` (``<embtoken>`` included); both rounded up by the pipeline's bucketing.
    """
    reasoning, emb_token = QUERY_KINDS[query_kind]
    t = cfg.text
    query = t.max_query_tokens + (t.max_reasoning_tokens if reasoning else 0) + int(emb_token)
    return training_length(query, cfg.data.length_buckets), training_length(t.max_doc_tokens, cfg.data.length_buckets)


def contrastive_spec(rows: int, docs_per_query: int, max_positives: int, query_len: int, doc_len: int) -> BatchSpec:
    """The contrastive layout (module docstring) for ``rows`` queries at the given padded lengths."""
    n = rows * docs_per_query
    return {"q_ids": ((rows, query_len), _I32, _TOKENS), "q_valid": ((rows, query_len), _I32, _TOKENS),
            "q_loss": ((rows, query_len), _I32, _TOKENS), "d_ids": ((n, doc_len), _I32, _TOKENS),
            "d_valid": ((n, doc_len), _I32, _TOKENS), "doc_keys": ((n,), _I32, ("batch",)),
            "pos_col": ((rows,), _I32, ("batch",)), "pos_keys": ((rows, max_positives), _I32, ("batch", None))}


def contrastive_batch_spec(cfg, query_kind: str, rows: Optional[int] = None,
                           lengths: Optional[tuple[int, int]] = None) -> BatchSpec:
    """A stage's batch spec: the contrastive layout for ``rows`` (default the global batch) at ``lengths`` (query,
    document; default the longest padded lengths of ``query_kind``'s queries, :func:`padded_lengths`)."""
    tq, td = lengths or padded_lengths(cfg, query_kind)
    d = cfg.data
    return contrastive_spec(rows or d.global_batch_size, 1 + d.num_hard_negatives, d.max_positives, tq, td)


def logical_axes(spec: BatchSpec) -> dict[str, tuple]:
    """``TrainStage.batch_logical_axes``: how the trainer shards each key."""
    return {k: axes for k, (_, _, axes) in spec.items()}


def check_batch(batch: dict[str, Any], spec: BatchSpec) -> None:
    """ValueError naming every key whose presence, shape or dtype differs from ``spec``."""
    problems = [f"missing {k}" for k in spec if k not in batch] + [f"unexpected {k}" for k in batch if k not in spec]
    for k, (shape, dtype, _) in spec.items():
        if k in batch and (tuple(np.shape(batch[k])) != tuple(shape) or np.asarray(batch[k]).dtype != dtype):
            problems.append(f"{k} is {np.asarray(batch[k]).dtype}{list(np.shape(batch[k]))}, the spec says "
                            f"{dtype}{list(shape)}")
    if problems:
        raise ValueError(f"batch does not match its spec: {'; '.join(problems)}")


def abstract_batch(spec: BatchSpec, mesh) -> dict:
    """``jax.ShapeDtypeStruct`` per key, sharded over ``mesh`` by the spec's logical axes (compile-check's inputs)."""
    import jax

    from t1_jax.mesh import logical_sharding

    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(mesh, axes))
            for k, (shape, dtype, axes) in spec.items()}
