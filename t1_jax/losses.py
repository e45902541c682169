"""Contrastive losses: InfoNCE over a (gathered) global batch, and the chunked token losses re-exported.

Every formula here is our design choice (the T1 report publishes none); docs/losses.md states each one with its config
key. Shapes use dimension letters: ``q_bd`` B queries, ``d_nd`` N candidate documents, ``p`` positives per query.

Batch layout (per device, and therefore per shard of a global array): the N documents are
``[the labelled positive of every query, then the hard negatives]`` in any order the data pipeline likes, as long as
``pos_col_b`` points at each query's labelled positive *within the same shard*. ``doc_ids_n`` identifies documents so
that a column that holds one of a query's positives (``pos_ids_bp``, -1 padded) under another query's label is masked
rather than counted as a negative. A document id of -1 marks a padding column that is never a candidate.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from t1_jax.logprobs import chunked_token_ce, token_logprobs  # noqa: F401  (part of this module's interface)
from t1_jax.mesh import BATCH_AXES

# A finite "minus infinity": masked logits stay finite so padded rows give finite (then zero-weighted) values and
# gradients never meet inf - inf.
_MASKED = -1e30

_SUM_KEYS = ("loss_q2d", "loss_d2q", "count", "correct", "correct_d2q", "pos_sim", "neg_sim", "neg_count")


def _duplicate_mask(ids_n: jax.Array, label_b: jax.Array, pos_ids_bp: jax.Array) -> jax.Array:
    """[B, N] True where column n holds one of query b's positives but is not b's labelled column."""
    n = ids_n.shape[0]
    is_pos_bn = jnp.any((ids_n[None, :, None] == pos_ids_bp[:, None, :]) & (pos_ids_bp[:, None, :] >= 0), axis=-1)
    return is_pos_bn & (jnp.arange(n)[None, :] != label_b[:, None])


def _softmax_ce_rows(logits_bn: jax.Array, keep_bn: jax.Array, label_b: jax.Array):
    """Per-row cross-entropy of ``label_b`` among the kept columns, and whether the label is the row's argmax."""
    masked_bn = jnp.where(keep_bn, logits_bn, _MASKED)
    label_logit_b = jnp.take_along_axis(masked_bn, label_b[:, None], axis=1)[:, 0]
    ce_b = jax.nn.logsumexp(masked_bn, axis=1) - label_logit_b
    correct_b = jnp.argmax(masked_bn, axis=1) == label_b
    return ce_b, correct_b


def _infonce_sums(q_bd, d_nd, ids_n, label_b, pos_ids_bp, valid_b, temperature, *, symmetric, mask_duplicates,
                  q_all_md=None, pos_ids_all_mp=None, valid_all_m=None, row_offset=0, d_pos_bd=None, pos_ids_b=None):
    """Sums (not means) over the B local rows; ``*_all`` are the queries of the whole (gathered) batch for d->q.

    ``label_b`` indexes columns of ``d_nd`` (already offset into the gathered layout). For the document->query term each
    query's labelled positive ``d_pos_bd`` (id ``pos_ids_b``) is scored against all M queries; its label is
    ``row_offset + b``.
    """
    q_bd = q_bd.astype(jnp.float32)
    d_nd = d_nd.astype(jnp.float32)
    valid_f = valid_b.astype(jnp.float32)
    n = d_nd.shape[0]
    sim_bn = jnp.einsum("bd,nd->bn", q_bd, d_nd)
    keep_bn = jnp.broadcast_to(ids_n[None, :] >= 0, sim_bn.shape)
    if mask_duplicates:
        keep_bn = keep_bn & ~_duplicate_mask(ids_n, label_b, pos_ids_bp)
    keep_bn = keep_bn | (jnp.arange(n)[None, :] == label_b[:, None])  # a row's own label is always a candidate
    ce_b, correct_b = _softmax_ce_rows(sim_bn / temperature, keep_bn, label_b)
    pos_sim_b = jnp.take_along_axis(sim_bn, label_b[:, None], axis=1)[:, 0]
    neg_bn = keep_bn & (jnp.arange(n)[None, :] != label_b[:, None])
    neg_sim_b = jnp.sum(jnp.where(neg_bn, sim_bn, 0.0), axis=1)
    sums = {
        "loss_q2d": jnp.sum(jnp.where(valid_b, ce_b, 0.0)),
        "count": jnp.sum(valid_f),
        "correct": jnp.sum(jnp.where(valid_b, correct_b, False).astype(jnp.float32)),
        "pos_sim": jnp.sum(jnp.where(valid_b, pos_sim_b, 0.0)),
        "neg_sim": jnp.sum(jnp.where(valid_b, neg_sim_b, 0.0)),
        "neg_count": jnp.sum(jnp.where(valid_b[:, None], neg_bn, False).astype(jnp.float32)),
        "loss_d2q": jnp.zeros((), jnp.float32),
        "correct_d2q": jnp.zeros((), jnp.float32),
    }
    if symmetric:
        m = q_all_md.shape[0]
        sim_bm = jnp.einsum("bd,md->bm", d_pos_bd.astype(jnp.float32), q_all_md.astype(jnp.float32))
        row_b = row_offset + jnp.arange(q_bd.shape[0])
        keep_bm = jnp.broadcast_to(valid_all_m[None, :], sim_bm.shape)
        if mask_duplicates:  # another query that has this document among its positives is not a negative
            shares_bm = jnp.any((pos_ids_b[:, None, None] == pos_ids_all_mp[None, :, :])
                                & (pos_ids_all_mp[None, :, :] >= 0), axis=-1)
            keep_bm = keep_bm & ~(shares_bm & (jnp.arange(m)[None, :] != row_b[:, None]))
        keep_bm = keep_bm | (jnp.arange(m)[None, :] == row_b[:, None])
        ce_d2q_b, correct_d2q_b = _softmax_ce_rows(sim_bm / temperature, keep_bm, row_b)
        sums["loss_d2q"] = jnp.sum(jnp.where(valid_b, ce_d2q_b, 0.0))
        sums["correct_d2q"] = jnp.sum(jnp.where(valid_b, correct_d2q_b, False).astype(jnp.float32))
    return sums


def _finalize(sums: dict, symmetric: bool):
    count = jnp.maximum(sums["count"], 1.0)
    loss_q2d = sums["loss_q2d"] / count
    metrics = {
        "loss_q2d": loss_q2d,
        "accuracy": sums["correct"] / count,
        "pos_sim": sums["pos_sim"] / count,
        "neg_sim": sums["neg_sim"] / jnp.maximum(sums["neg_count"], 1.0),
        "num_queries": sums["count"],
    }
    loss = loss_q2d
    if symmetric:
        loss_d2q = sums["loss_d2q"] / count
        metrics["loss_d2q"] = loss_d2q
        metrics["accuracy_d2q"] = sums["correct_d2q"] / count
        loss = 0.5 * (loss_q2d + loss_d2q)
    metrics["loss"] = loss
    return loss, metrics


def _check_shapes(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp):
    b, n = q_bd.shape[0], d_nd.shape[0]
    if q_bd.ndim != 2 or d_nd.ndim != 2 or q_bd.shape[1] != d_nd.shape[1]:
        raise ValueError(f"infonce: queries {q_bd.shape} and documents {d_nd.shape} must be [B, D] and [N, D]")
    if doc_ids_n.shape != (n,):
        raise ValueError(f"infonce: doc_ids_n has shape {doc_ids_n.shape}, expected ({n},)")
    if pos_col_b.shape != (b,) or pos_ids_bp.ndim != 2 or pos_ids_bp.shape[0] != b:
        raise ValueError(f"infonce: pos_col_b {pos_col_b.shape} / pos_ids_bp {pos_ids_bp.shape} must be [B] / [B, P] "
                         f"with B = {b}")


def infonce(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp, temperature, *, symmetric=False, mask_duplicates=True,
            valid_b=None):
    """InfoNCE of B queries against N documents on one device (or on global arrays under plain jit).

    loss = mean over valid b of  -log softmax_n( q_b . d_n / temperature )[pos_col_b]   over the kept columns n, where a
    column is dropped for row b when it is padding (id -1) or (``mask_duplicates``) it holds one of b's positives but is
    not b's labelled column. ``symmetric`` averages it with the document->query term: each labelled positive scored
    against all B queries (padding queries and, with ``mask_duplicates``, other queries sharing that positive dropped).

    Returns ``(loss, metrics)``; metrics: loss, loss_q2d, accuracy (argmax == label), pos_sim / neg_sim (mean raw
    similarity of the labelled positive / of the kept negatives), num_queries, and with ``symmetric`` loss_d2q and
    accuracy_d2q.
    """
    _check_shapes(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp)
    if valid_b is None:
        valid_b = jnp.ones(q_bd.shape[0], bool)
    valid_b = valid_b.astype(bool)
    pos_col_b = pos_col_b.astype(jnp.int32)
    extra = {}
    if symmetric:
        extra = dict(q_all_md=q_bd, pos_ids_all_mp=pos_ids_bp, valid_all_m=valid_b, row_offset=0,
                     d_pos_bd=d_nd[pos_col_b], pos_ids_b=doc_ids_n[pos_col_b])
    sums = _infonce_sums(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp, valid_b, temperature, symmetric=symmetric,
                         mask_duplicates=mask_duplicates, **extra)
    return _finalize(sums, symmetric)


def globalize_pos_cols(pos_col_b: jax.Array, num_shards: int, docs_per_shard: int) -> jax.Array:
    """Shard-local positive columns (as :func:`gathered_infonce` takes them) -> columns of the gathered layout.

    The global batch is B = num_shards x B_local queries; query b lives on shard b // B_local, whose documents occupy
    gathered columns ``[shard * docs_per_shard, (shard + 1) * docs_per_shard)``.
    """
    b = pos_col_b.shape[0]
    if b % num_shards:
        raise ValueError(f"globalize_pos_cols: batch {b} is not divisible by {num_shards} shards")
    shard_b = jnp.arange(b) // (b // num_shards)
    return pos_col_b + shard_b * docs_per_shard


def gathered_infonce(mesh: Mesh, axes: Sequence[str] = BATCH_AXES, *, temperature: float, symmetric: bool = False,
                     mask_duplicates: bool = True) -> Callable:
    """InfoNCE over the global batch with documents all-gathered across the batch mesh ``axes`` inside ``shard_map``.

    Returns ``fn(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp, valid_b=None) -> (loss, metrics)`` over *global*
    arrays whose leading dimension is split over ``axes`` (the tensor axis, if any, sees replicas). ``pos_col_b`` is
    shard-local: each query's positive column within its own shard's N_local documents (what a per-host pipeline
    produces). Inside, shard s gathers every shard's documents in shard order (tiled), offsets its labels by
    ``s * N_local``, and the loss and metric sums are ``psum``-ed and divided by the global count of valid queries, so
    the result (and its gradient, which flows back to every shard's documents through the gather) equals
    :func:`infonce` on the gathered batch with :func:`globalize_pos_cols` labels.
    """
    axes = tuple(axes)
    spec = PartitionSpec(axes)

    def local(q_bd, d_nd, ids_n, pos_col_b, pos_ids_bp, valid_b):
        shard = jax.lax.axis_index(axes)
        n_local, b_local = d_nd.shape[0], q_bd.shape[0]
        d_all = jax.lax.all_gather(d_nd, axes, tiled=True)
        ids_all = jax.lax.all_gather(ids_n, axes, tiled=True)
        label_b = pos_col_b + shard * n_local
        extra = {}
        if symmetric:
            extra = dict(q_all_md=jax.lax.all_gather(q_bd, axes, tiled=True),
                         pos_ids_all_mp=jax.lax.all_gather(pos_ids_bp, axes, tiled=True),
                         valid_all_m=jax.lax.all_gather(valid_b, axes, tiled=True),
                         row_offset=shard * b_local, d_pos_bd=d_nd[pos_col_b], pos_ids_b=ids_n[pos_col_b])
        sums = _infonce_sums(q_bd, d_all, ids_all, label_b, pos_ids_bp, valid_b, temperature, symmetric=symmetric,
                             mask_duplicates=mask_duplicates, **extra)
        sums = jax.lax.psum(sums, axes)
        return _finalize(sums, symmetric)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 6, out_specs=PartitionSpec())

    def fn(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp, valid_b=None):
        _check_shapes(q_bd, d_nd, doc_ids_n, pos_col_b, pos_ids_bp)
        shards = 1
        for a in axes:
            shards *= mesh.shape[a]
        if q_bd.shape[0] % shards or d_nd.shape[0] % shards:
            raise ValueError(f"gathered_infonce: {q_bd.shape[0]} queries and {d_nd.shape[0]} documents must both be "
                             f"divisible by the {shards} batch shards ({' x '.join(axes)})")
        if valid_b is None:
            valid_b = jnp.ones(q_bd.shape[0], bool)
        return mapped(q_bd, d_nd, doc_ids_n.astype(jnp.int32), pos_col_b.astype(jnp.int32),
                      pos_ids_bp.astype(jnp.int32), valid_b.astype(bool))

    return fn
