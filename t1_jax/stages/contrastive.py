"""Stages 1 and 2: InfoNCE over the gathered global batch (+ stage 2's teacher-reasoning cross-entropy).

Stage 1 (``trainer.stage=contrastive``): query = ``instruction + query + <embtoken>``; loss = InfoNCE.
Stage 2 (``trainer.stage=reasoning``): query = ``prompt + teacher reasoning + <embtoken>``;
loss = ``loss.sft_weight * CE(reasoning tokens and <embtoken>) + InfoNCE(embedding after the reasoning)``.

The embedding is the final-normed hidden state at ``<embtoken>`` (the last real token of each sequence),
L2-normalised when ``retrieval.normalize``. Negatives are every document of the global batch: documents are
all-gathered over the batch mesh axes inside ``shard_map`` (``t1_jax.losses.gathered_infonce``).

With ``loss.gradcache_chunk = c > 0`` the step is GradCache-style: embeddings of the whole batch are computed in
chunks of c examples under ``jax.checkpoint`` (only each chunk's inputs are kept), the loss and its gradient with
respect to the embeddings are computed once over the whole batch, and a surrogate ``sum(emb * stop_grad(dL/demb))``
carries that gradient back, each chunk re-embedded during the backward pass. Loss value and gradient equal the direct
step's; peak activation memory is that of one chunk; cost is two forward passes and one backward pass.

With ``optimizer.grad_accum_steps = k`` the trainer splits the batch into k micro-batches: the reasoning CE stays the
token mean of the whole step (``loss_normalizers``: each micro-batch divides its CE sum by the step's target tokens /
k), while InfoNCE is computed per micro-batch, each micro-batch's documents being its only negatives (docs/training.md,
Optimizer).
"""
from __future__ import annotations

import logging
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from t1_jax import losses
from t1_jax.config import ConfigError, ExperimentConfig
from t1_jax.logprobs import chunked_token_ce
from t1_jax.mesh import batch_shard_count
from t1_jax.model import Qwen3
from t1_jax.model.embedding import embed_last
from t1_jax.model.functions import model_functions
from t1_jax.optimizer import NORMALIZERS
from t1_jax.stages.registry import stage_spec
from t1_jax.trainer import TrainStage

log = logging.getLogger(__name__)

def _reasoning_ce(model: Qwen3, hidden_btd, ids_bt, loss_bt, chunk: int):
    """Sum and count of next-token CE on the reasoning targets (position t predicts token t + 1)."""
    return chunked_token_ce(hidden_btd[:, :-1], ids_bt[:, 1:], loss_bt[:, 1:], model.logits, chunk)


def _ce_targets(batch) -> dict:
    """The count the reasoning CE divides by: target tokens (the ones ``_reasoning_ce`` sums over)."""
    return {"ce_tokens": jnp.sum(batch["q_loss"][:, 1:].astype(jnp.float32))}


def loss_normalizers(cfg: ExperimentConfig):
    """The stage's ``TrainStage.loss_normalizers``: stage 2's CE is a token mean over the whole step, so under
    gradient accumulation every micro-batch divides its CE sum by the step's target tokens / grad_accum_steps."""
    return _ce_targets if stage_spec(cfg.trainer.stage).with_reasoning else None


def _split_chunks(x, chunks: int):
    """[B, ...] -> [chunks, B / chunks, ...] taking every ``chunks``-th row, so a batch-sharded array splits locally."""
    b = x.shape[0]
    if b % chunks:
        raise ValueError(f"batch {b} is not divisible into {chunks} GradCache chunks")
    return jnp.swapaxes(x.reshape(b // chunks, chunks, *x.shape[1:]), 0, 1)


def _merge_chunks(x):
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def make_loss_fn(cfg: ExperimentConfig, graphdef, mesh: Mesh) -> Callable:
    with_reasoning = stage_spec(cfg.trainer.stage).with_reasoning
    lcfg = cfg.loss
    normalize = cfg.retrieval.normalize
    contrast = losses.gathered_infonce(mesh, temperature=lcfg.temperature, symmetric=lcfg.symmetric,
                                       mask_duplicates=lcfg.mask_duplicates)
    shards = batch_shard_count(mesh)

    def infonce_on(q_bd, d_ed, batch):
        # The pipeline numbers positives within a host's documents; each query's documents stay on its own shard,
        # so the column within the shard (what gathered_infonce takes) is that number modulo the shard's count.
        pos_col = batch["pos_col"] % (d_ed.shape[0] // shards)
        return contrast(q_bd, d_ed, batch["doc_keys"], pos_col, batch["pos_keys"])

    def ce_divisor(batch, ce_count):
        """The micro-batch's own target count, or under accumulation the step's count / grad_accum_steps."""
        return batch[NORMALIZERS]["ce_tokens"] if NORMALIZERS in batch else ce_count

    def finish(nce, nce_metrics, ce_sum, ce_count):
        metrics = {"infonce": nce, "accuracy": nce_metrics["accuracy"], "pos_sim": nce_metrics["pos_sim"],
                   "neg_sim": nce_metrics["neg_sim"]}
        loss = nce
        if with_reasoning:
            ce = ce_sum / jnp.maximum(ce_count, 1.0)
            loss = loss + lcfg.sft_weight * ce
            metrics["reasoning_ce"] = ce
        return loss, metrics

    def direct(params, batch, rng):
        del rng
        model = nnx.merge(graphdef, params)
        q_bd, q_hidden = embed_last(model, batch["q_ids"], batch["q_valid"], normalize)
        d_ed, _ = embed_last(model, batch["d_ids"], batch["d_valid"], normalize)
        nce, nce_metrics = infonce_on(q_bd, d_ed, batch)
        ce_sum, ce_count = (_reasoning_ce(model, q_hidden, batch["q_ids"], batch["q_loss"], lcfg.ce_chunk_size)
                            if with_reasoning else (0.0, 0.0))
        return finish(nce, nce_metrics, ce_sum, ce_divisor(batch, ce_count))

    if not lcfg.gradcache_chunk:
        return direct

    def gradcache(params, batch, rng):
        del rng
        b = batch["q_ids"].shape[0]
        if lcfg.gradcache_chunk % shards or b % lcfg.gradcache_chunk:
            raise ConfigError(f"loss.gradcache_chunk={lcfg.gradcache_chunk} must divide the batch ({b}) and be a "
                              f"multiple of the {shards} batch shards (data x fsdp), so every chunk splits evenly")
        chunks = b // lcfg.gradcache_chunk
        per_doc = batch["d_ids"].shape[0] // b

        @jax.checkpoint
        def embed_chunk(p, q_ids, q_valid, q_loss, d_ids, d_valid):
            model = nnx.merge(graphdef, p)
            q_bd, q_hidden = embed_last(model, q_ids, q_valid, normalize)
            d_ed, _ = embed_last(model, d_ids, d_valid, normalize)
            ce = (_reasoning_ce(model, q_hidden, q_ids, q_loss, lcfg.ce_chunk_size) if with_reasoning
                  else (jnp.zeros(()), jnp.zeros(())))
            return q_bd, d_ed, ce

        d_groups = batch["d_ids"].reshape(b, per_doc, -1), batch["d_valid"].reshape(b, per_doc, -1)
        xs = tuple(_split_chunks(x, chunks) for x in (batch["q_ids"], batch["q_valid"], batch["q_loss"]) + d_groups)

        def embed_all(p):
            def one(args):
                q_ids, q_valid, q_loss, d_ids, d_valid = args
                return embed_chunk(p, q_ids, q_valid, q_loss, d_ids.reshape(-1, d_ids.shape[-1]),
                                   d_valid.reshape(-1, d_valid.shape[-1]))

            q_cbd, d_ced, (ce_sum_c, ce_cnt_c) = jax.lax.map(one, xs)
            d_ed = _merge_chunks(d_ced.reshape(chunks, -1, per_doc, d_ced.shape[-1])).reshape(-1, d_ced.shape[-1])
            return _merge_chunks(q_cbd), d_ed, jnp.sum(ce_sum_c), jnp.sum(ce_cnt_c)

        # Embeddings of every chunk; under jax.checkpoint each chunk keeps only its inputs for the backward pass.
        q_re, d_re, ce_sum_re, ce_count = embed_all(params)
        ce_count = ce_divisor(batch, ce_count)
        q_bd, d_ed, ce_sum = jax.lax.stop_gradient((q_re, d_re, ce_sum_re))
        # The loss and its gradient with respect to the (constant) embeddings, over the whole gathered batch.
        (nce, nce_metrics), (g_q, g_d) = jax.value_and_grad(
            lambda q, d: infonce_on(q, d, batch), argnums=(0, 1), has_aux=True)(q_bd, d_ed)
        # A surrogate whose gradient w.r.t. params is the true gradient; back-propagated chunk by chunk.
        surrogate = jnp.sum(q_re * g_q) + jnp.sum(d_re * g_d)
        if with_reasoning:
            surrogate = surrogate + lcfg.sft_weight * ce_sum_re / jnp.maximum(jax.lax.stop_gradient(ce_count), 1.0)
        loss, metrics = finish(nce, nce_metrics, ce_sum, ce_count)
        return loss + surrogate - jax.lax.stop_gradient(surrogate), metrics

    return gradcache


def build_stage(cfg: ExperimentConfig, mesh, formatter) -> TrainStage:
    """Stage 1 or 2 for the trainer (the registry's builder for ``contrastive`` and ``reasoning``)."""
    from t1_jax.model.counts import param_count
    from t1_jax.stages.build import pretrained_loader, training_batches

    spec = stage_spec(cfg.trainer.stage)
    batches, data_report = training_batches(cfg, mesh, formatter, spec.query_kind)
    graphdef, init_params, shardings = model_functions(cfg, mesh)
    return TrainStage(
        name=spec.title, init_params=init_params, batches=batches, loss_fn=make_loss_fn(cfg, graphdef, mesh),
        loss_normalizers=loss_normalizers(cfg), param_shardings=shardings,
        batch_logical_axes=spec.batch_axes(cfg),
        pretrained=pretrained_loader(cfg, mesh, formatter),
        tokens_in_batch=lambda b: int(b["q_valid"].sum() + b["d_valid"].sum()),
        flops_per_token=6.0 * param_count(cfg.model), data_report=data_report)
