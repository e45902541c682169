"""``t1 compile-check`` for document encoding (``COMPILE_CHECK = "encode"``): the encoder's jitted embedding step
(``t1_jax.encoder._embed_batch``, what ``t1 encode`` / ``t1 embed`` run per batch) compiled for a TPU slice.

Inputs: the model's parameters as ``jax.ShapeDtypeStruct`` s with their shardings (``cfg.model.param_dtype``), and
one batch of ``retrieval.encode_batch_size`` documents (per slice) at the longest padded length the encoder can give
them: ``text.max_doc_tokens`` rounded up by the encoder's document buckets (``t1_jax.encoder.DOC_BUCKETS``, then
multiples of the largest); batch over ``data x fsdp``. FLOPs: one forward at that length (no LM head).
"""
from __future__ import annotations

from typing import Any

from t1_jax.compile_check import Program
from t1_jax.config import ExperimentConfig

KIND = "encode"  # the PROGRAMS key; an experiment selects it with ``COMPILE_CHECK = "encode"``


class _BoundEmbed:
    """``_embed_batch`` with its static arguments bound, lowered like a jitted function (``lower(params, ids,
    valid)``), so the check compiles the encoder's own jitted function."""

    def __init__(self, graphdef, normalize: bool, mesh):
        self.graphdef, self.normalize, self.mesh = graphdef, normalize, mesh

    def lower(self, params, ids_bt, valid_bt):
        from t1_jax.encoder import _embed_batch

        return _embed_batch.lower(self.graphdef, params, ids_bt, valid_bt, normalize=self.normalize, mesh=self.mesh)


def encode_length(cfg: ExperimentConfig) -> int:
    from t1_jax.encoder import DOC_BUCKETS, bucket_length

    return bucket_length(cfg.text.max_doc_tokens, DOC_BUCKETS)


def encode_programs(cfg: ExperimentConfig, mesh) -> list[Program]:
    import jax
    import numpy as np

    from t1_jax import mesh as mesh_lib
    from t1_jax.model.splash import attention_fraction
    from t1_jax.model.counts import decoder_flops
    from t1_jax.model.functions import model_functions

    graphdef, init_params, shardings = model_functions(cfg, mesh)
    params: Any = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                         jax.eval_shape(init_params, jax.ShapeDtypeStruct((2,), np.uint32)), shardings)
    b, t = cfg.retrieval.encode_batch_size, encode_length(cfg)
    batch = jax.ShapeDtypeStruct((b, t), np.int32, sharding=mesh_lib.logical_sharding(mesh, ("batch", "length")))
    flops = decoder_flops(cfg.model, b * t, t, training=False, attention_fraction=attention_fraction(cfg.model, t))
    description = (f"{b} documents x {t} tokens (text.max_doc_tokens {cfg.text.max_doc_tokens}); attention "
                   f"{cfg.model.attention_impl}; remat {cfg.model.remat}")
    return [Program("encode", _BoundEmbed(graphdef, cfg.retrieval.normalize, mesh), (params, batch, batch), flops,
                    b * t, description)]
