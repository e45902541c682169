"""Contrastive losses: InfoNCE over a (gathered) global batch, and the chunked token losses re-exported.

Every formula here is our design choice (the T1 report publishes none); docs/losses.md states each one with its config
key. Shapes use dimension letters (docs/architecture.md): ``q_bd`` B queries, ``d_ed`` E candidate documents, ``y`` a
query's positives (``pos_ids_by``).

Batch layout (per device, and therefore per shard of a global array): the E documents are
``[the labelled positive of every query, then the hard negatives]`` in any order the data pipeline likes, as long as
``pos_col_b`` points at each query's labelled positive *within the same shard*. ``doc_ids_e`` identifies documents so
that a column that holds one of a query's positives (``pos_ids_by``, -1 padded) under another query's label is masked
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


def _duplicate_mask(ids_e: jax.Array, label_b: jax.Array, pos_ids_by: jax.Array) -> jax.Array:
    """[B, E] True where column e holds one of query b's positives but is not b's labelled column."""
    e = ids_e.shape[0]
    is_pos_be = jnp.any((ids_e[None, :, None] == pos_ids_by[:, None, :]) & (pos_ids_by[:, None, :] >= 0), axis=-1)
    return is_pos_be & (jnp.arange(e)[None, :] != label_b[:, None])


def _softmax_ce_rows(logits_be: jax.Array, keep_be: jax.Array, label_b: jax.Array):
    """Per-row cross-entropy of ``label_b`` among the kept columns, and whether the label is the row's argmax."""
    masked_be = jnp.where(keep_be, logits_be, _MASKED)
    label_logit_b = jnp.take_along_axis(masked_be, label_b[:, None], axis=1)[:, 0]
    ce_b = jax.nn.logsumexp(masked_be, axis=1) - label_logit_b
    correct_b = jnp.argmax(masked_be, axis=1) == label_b
    return ce_b, correct_b


def _infonce_sums(q_bd, d_ed, ids_e, label_b, pos_ids_by, valid_b, temperature, *, symmetric, mask_duplicates,
                  q_all_wd=None, pos_ids_all_wy=None, valid_all_w=None, row_offset=0, d_pos_bd=None, pos_ids_b=None):
    """Sums (not means) over the B local rows; ``*_all_w*`` are the W queries of the whole (gathered) batch, for d->q.

    ``label_b`` indexes columns of ``d_ed`` (already offset into the gathered layout). For the document->query term each
    query's labelled positive ``d_pos_bd`` (id ``pos_ids_b``) is scored against all W queries; its label is
    ``row_offset + b``.
    """
    q_bd = q_bd.astype(jnp.float32)
    d_ed = d_ed.astype(jnp.float32)
    valid_f = valid_b.astype(jnp.float32)
    e = d_ed.shape[0]
    sim_be = jnp.einsum("bd,ed->be", q_bd, d_ed)
    keep_be = jnp.broadcast_to(ids_e[None, :] >= 0, sim_be.shape)
    if mask_duplicates:
        keep_be = keep_be & ~_duplicate_mask(ids_e, label_b, pos_ids_by)
    keep_be = keep_be | (jnp.arange(e)[None, :] == label_b[:, None])  # a row's own label is always a candidate
    ce_b, correct_b = _softmax_ce_rows(sim_be / temperature, keep_be, label_b)
    pos_sim_b = jnp.take_along_axis(sim_be, label_b[:, None], axis=1)[:, 0]
    neg_be = keep_be & (jnp.arange(e)[None, :] != label_b[:, None])
    neg_sim_b = jnp.sum(jnp.where(neg_be, sim_be, 0.0), axis=1)
    sums = {
        "loss_q2d": jnp.sum(jnp.where(valid_b, ce_b, 0.0)),
        "count": jnp.sum(valid_f),
        "correct": jnp.sum(jnp.where(valid_b, correct_b, False).astype(jnp.float32)),
        "pos_sim": jnp.sum(jnp.where(valid_b, pos_sim_b, 0.0)),
        "neg_sim": jnp.sum(jnp.where(valid_b, neg_sim_b, 0.0)),
        "neg_count": jnp.sum(jnp.where(valid_b[:, None], neg_be, False).astype(jnp.float32)),
        "loss_d2q": jnp.zeros((), jnp.float32),
        "correct_d2q": jnp.zeros((), jnp.float32),
    }
    if symmetric:
        w = q_all_wd.shape[0]
        sim_bw = jnp.einsum("bd,wd->bw", d_pos_bd.astype(jnp.float32), q_all_wd.astype(jnp.float32))
        row_b = row_offset + jnp.arange(q_bd.shape[0])
        keep_bw = jnp.broadcast_to(valid_all_w[None, :], sim_bw.shape)
        if mask_duplicates:  # another query that has this document among its positives is not a negative
            shares_bw = jnp.any((pos_ids_b[:, None, None] == pos_ids_all_wy[None, :, :])
                                & (pos_ids_all_wy[None, :, :] >= 0), axis=-1)
            keep_bw = keep_bw & ~(shares_bw & (jnp.arange(w)[None, :] != row_b[:, None]))
        keep_bw = keep_bw | (jnp.arange(w)[None, :] == row_b[:, None])
        ce_d2q_b, correct_d2q_b = _softmax_ce_rows(sim_bw / temperature, keep_bw, row_b)
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


def _check_shapes(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by):
    b, e = q_bd.shape[0], d_ed.shape[0]
    if q_bd.ndim != 2 or d_ed.ndim != 2 or q_bd.shape[1] != d_ed.shape[1]:
        raise ValueError(f"infonce: queries {q_bd.shape} and documents {d_ed.shape} must be [B, D] and [E, D]")
    if doc_ids_e.shape != (e,):
        raise ValueError(f"infonce: doc_ids_e has shape {doc_ids_e.shape}, expected ({e},)")
    if pos_col_b.shape != (b,) or pos_ids_by.ndim != 2 or pos_ids_by.shape[0] != b:
        raise ValueError(f"infonce: pos_col_b {pos_col_b.shape} / pos_ids_by {pos_ids_by.shape} must be [B] / [B, Y] "
                         f"with B = {b}")


def infonce(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by, temperature, *, symmetric=False, mask_duplicates=True,
            valid_b=None):
    """InfoNCE of B queries against E documents on one device (or on global arrays under plain jit).

    loss = mean over valid b of  -log softmax_e( q_b . d_e / temperature )[pos_col_b]   over the kept columns e, where a
    column is dropped for row b when it is padding (id -1) or (``mask_duplicates``) it holds one of b's positives but is
    not b's labelled column. ``symmetric`` averages it with the document->query term: each labelled positive scored
    against all B queries (padding queries and, with ``mask_duplicates``, other queries sharing that positive dropped).

    Returns ``(loss, metrics)``; metrics: loss, loss_q2d, accuracy (argmax == label), pos_sim / neg_sim (mean raw
    similarity of the labelled positive / of the kept negatives), num_queries, and with ``symmetric`` loss_d2q and
    accuracy_d2q.
    """
    _check_shapes(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by)
    if valid_b is None:
        valid_b = jnp.ones(q_bd.shape[0], bool)
    valid_b = valid_b.astype(bool)
    pos_col_b = pos_col_b.astype(jnp.int32)
    extra = {}
    if symmetric:
        extra = dict(q_all_wd=q_bd, pos_ids_all_wy=pos_ids_by, valid_all_w=valid_b, row_offset=0,
                     d_pos_bd=d_ed[pos_col_b], pos_ids_b=doc_ids_e[pos_col_b])
    sums = _infonce_sums(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by, valid_b, temperature, symmetric=symmetric,
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

    Returns ``fn(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by, valid_b=None) -> (loss, metrics)`` over *global*
    arrays whose leading dimension is split over ``axes`` (the tensor axis, if any, sees replicas). ``pos_col_b`` is
    shard-local: each query's positive column within its own shard's E_local documents (what a per-host pipeline
    produces). Inside, shard s gathers every shard's documents in shard order (tiled), offsets its labels by
    ``s * E_local``, and the loss and metric sums are ``psum``-ed and divided by the global count of valid queries, so
    the result (and its gradient, which flows back to every shard's documents through the gather) equals
    :func:`infonce` on the gathered batch with :func:`globalize_pos_cols` labels.
    """
    axes = tuple(axes)
    spec = PartitionSpec(axes)

    def local(q_bd, d_ed, ids_e, pos_col_b, pos_ids_by, valid_b):
        shard = jax.lax.axis_index(axes)
        e_local, b_local = d_ed.shape[0], q_bd.shape[0]
        d_all = jax.lax.all_gather(d_ed, axes, tiled=True)
        ids_all = jax.lax.all_gather(ids_e, axes, tiled=True)
        label_b = pos_col_b + shard * e_local
        extra = {}
        if symmetric:
            extra = dict(q_all_wd=jax.lax.all_gather(q_bd, axes, tiled=True),
                         pos_ids_all_wy=jax.lax.all_gather(pos_ids_by, axes, tiled=True),
                         valid_all_w=jax.lax.all_gather(valid_b, axes, tiled=True),
                         row_offset=shard * b_local, d_pos_bd=d_ed[pos_col_b], pos_ids_b=ids_e[pos_col_b])
        sums = _infonce_sums(q_bd, d_all, ids_all, label_b, pos_ids_by, valid_b, temperature, symmetric=symmetric,
                             mask_duplicates=mask_duplicates, **extra)
        sums = jax.lax.psum(sums, axes)
        return _finalize(sums, symmetric)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 6, out_specs=PartitionSpec())

    def fn(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by, valid_b=None):
        _check_shapes(q_bd, d_ed, doc_ids_e, pos_col_b, pos_ids_by)
        shards = 1
        for a in axes:
            shards *= mesh.shape[a]
        if q_bd.shape[0] % shards or d_ed.shape[0] % shards:
            raise ValueError(f"gathered_infonce: {q_bd.shape[0]} queries and {d_ed.shape[0]} documents must both be "
                             f"divisible by the {shards} batch shards ({' x '.join(axes)})")
        if valid_b is None:
            valid_b = jnp.ones(q_bd.shape[0], bool)
        return mapped(q_bd, d_ed, doc_ids_e.astype(jnp.int32), pos_col_b.astype(jnp.int32),
                      pos_ids_by.astype(jnp.int32), valid_b.astype(bool))

    return fn
