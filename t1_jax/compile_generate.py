"""``t1 compile-check`` for generation: the sampler's two programs (prefill, decode loop) compiled for a TPU slice,
with the decode roofline.

The programs are those :func:`t1_jax.sampler.sample` runs, called exactly as it calls them: ``sample`` is run once
on abstract inputs with its ``_prefill`` / ``_decode`` replaced by recorders (:func:`record_sample_calls`), so the
static settings, cache length and special-id arrays are the ones a real call would pass. Inputs: the model's
parameters as ``jax.ShapeDtypeStruct`` s with their shardings (``cfg.model.param_dtype``, e.g. a bfloat16 teacher),
``data.global_batch_size`` prompts of ``text.max_query_tokens`` padded to ``sampling.prompt_buckets``, batch over
``data x fsdp``. The decode loop's cache, logits and prompt lengths carry the shardings the prefill's constraints
give its outputs (:func:`prefill_output_shardings`; a test checks them against the compiled prefill).

Decoding is memory-bound: each step reads every weight a chip multiplies by and, with the dense cache attention,
the chip's whole KV-cache shard. :class:`DecodeRoofline` bounds a decoding step by ``max(bytes / HBM bandwidth,
FLOPs / peak)`` per chip and says which binds; see docs/tpu.md, "Teacher generation".
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Iterator

from t1_jax.compile_check import Program, replicated
from t1_jax.config import ExperimentConfig
from t1_jax.tpu import GiB, TopologySpec

KIND = "generate"  # the PROGRAMS key; an experiment selects it with ``COMPILE_CHECK = "generate"``


@dataclasses.dataclass(frozen=True)
class DecodeRoofline:
    """Lower bounds on one decoding step (and on one whole generation call) on ``chips`` chips."""

    batch: int  # sequences; one token each per step
    prompt_len: int
    cache_len: int  # prompt + decoding steps
    chips: int
    weight_bytes: int  # per chip, read once per step
    kv_bytes: int  # per chip: the whole cache shard, read every step (dense attention over every slot)
    step_flops: float  # one step, all chips
    prefill_flops: float  # the prefill call, all chips
    hbm_bandwidth: float  # per chip, bytes/s
    peak_flops: float  # per chip, FLOP/s

    @property
    def steps(self) -> int:
        return self.cache_len - self.prompt_len

    @property
    def bytes_per_step(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def memory_seconds(self) -> float:
        return self.bytes_per_step / self.hbm_bandwidth

    @property
    def compute_seconds(self) -> float:
        return self.step_flops / (self.chips * self.peak_flops)

    @property
    def step_seconds(self) -> float:
        return max(self.memory_seconds, self.compute_seconds)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_seconds >= self.compute_seconds else "compute"

    @property
    def tokens_per_second(self) -> float:
        return self.batch / self.step_seconds

    @property
    def prefill_seconds(self) -> float:
        """The prefill reads the weights once and writes the cache: max of that over bandwidth and its FLOPs."""
        return max(self.bytes_per_step / self.hbm_bandwidth, self.prefill_flops / (self.chips * self.peak_flops))

    @property
    def generation_seconds(self) -> float:
        return self.prefill_seconds + self.steps * self.step_seconds

    def format(self) -> str:
        return (f"decode roofline per step and chip: reads {self.bytes_per_step / GiB:.3f} GiB (weights "
                f"{self.weight_bytes / GiB:.3f} + KV cache {self.kv_bytes / GiB:.3f} at length {self.cache_len}) / "
                f"{self.hbm_bandwidth / 1e9:g} GB/s = {self.memory_seconds * 1e3:.2f} ms; compute "
                f"{self.step_flops:.4g} FLOPs / ({self.chips} x {self.peak_flops / 1e12:g} TFLOP/s) = "
                f"{self.compute_seconds * 1e3:.2f} ms -> {self.bound}-bound: step >= {self.step_seconds * 1e3:.2f} "
                f"ms, at most {self.tokens_per_second:,.0f} tokens/s at batch {self.batch}\n"
                f"one call (prefill {self.prompt_len} + {self.steps} steps): >= {self.generation_seconds:.2f} s "
                f"(prefill >= {self.prefill_seconds:.2f} s) -> at most "
                f"{self.batch * self.steps / self.generation_seconds:,.0f} generated tokens/s")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update({name: getattr(self, name) for name in (
            "steps", "bytes_per_step", "memory_seconds", "compute_seconds", "step_seconds", "bound",
            "tokens_per_second", "prefill_seconds", "generation_seconds")})
        return out


def read_bytes_per_chip(tree: Any) -> int:
    """Bytes a chip multiplies by per step: each leaf's shard with the batch axes (data, fsdp) gathered, i.e. the
    tensor-parallel shard (FSDP-sharded weights are gathered before their matmuls; the ICI transfer is not counted)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from t1_jax.mesh import BATCH_AXES

    def keep(entry):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = tuple(a for a in axes if a not in BATCH_AXES)
        return kept[0] if len(kept) == 1 else (kept or None)

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = leaf.sharding
        gathered = NamedSharding(sharding.mesh, PartitionSpec(*(keep(e) for e in sharding.spec)))
        total += int(np.prod(gathered.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
    return total


def prefill_output_shardings(mesh, num_layers: int) -> tuple:
    """The shardings ``_prefill``'s constraints give its outputs ``(cache, logits [B, V], prompt lengths [B])`` (the
    cache in the sampler's decode layout for this mesh: stacked on TPU, per layer on CPU)."""
    from t1_jax import mesh as mesh_lib
    from t1_jax.model.cache import cache_shardings
    from t1_jax.sampler import decode_layout

    cache = cache_shardings(mesh, per_layer=decode_layout(mesh), num_layers=num_layers)
    return (cache, mesh_lib.logical_sharding(mesh, ("batch", "vocab")),
            mesh_lib.logical_sharding(mesh, ("batch",)))


def _abstract(mesh, value: Any) -> Any:
    """Concrete arrays a call passes (the special ids) -> replicated ShapeDtypeStructs on ``mesh``."""
    import jax
    import numpy as np

    def one(x):
        if isinstance(x, (jax.Array, np.ndarray)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh))
        return x

    return jax.tree_util.tree_map(one, value)


@contextlib.contextmanager
def record_sample_calls(mesh) -> Iterator[dict[str, tuple]]:
    """While active, ``sampler._prefill`` / ``_decode`` record ``(args, kwargs)`` (concrete arrays made abstract) and
    return abstract outputs (the prefill's with :func:`prefill_output_shardings`) instead of running."""
    import jax

    from t1_jax import sampler

    calls: dict[str, tuple] = {}
    real = {"prefill": sampler._prefill, "decode": sampler._decode}

    def recorder(name):
        def call(*args, **kwargs):
            args = tuple(_abstract(mesh, a) for a in args)
            calls[name] = (args, kwargs)
            out = jax.eval_shape(functools.partial(real[name], **kwargs), *args)
            if name == "prefill":
                layers = len(out[0].k) if out[0].per_layer else 0
                out = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), out,
                                             prefill_output_shardings(mesh, layers))
            return out
        return call

    sampler._prefill, sampler._decode = recorder("prefill"), recorder("decode")
    try:
        yield calls
    finally:
        sampler._prefill, sampler._decode = real["prefill"], real["decode"]


class _Bound:
    """A jitted function with its keyword (static) arguments bound, lowered like ``jit(...).lower(*args)``."""

    def __init__(self, jitted, kwargs: dict):
        self.jitted, self.kwargs = jitted, kwargs

    def lower(self, *args):
        return self.jitted.lower(*args, **self.kwargs)


def prompt_length(cfg: ExperimentConfig) -> int:
    """The padded prompt length: ``text.max_query_tokens`` rounded up to ``sampling.prompt_buckets``."""
    from t1_jax.encoder import bucket_length  # what t1 generate pads prompts to (t1_jax.teacher)

    return bucket_length(cfg.text.max_query_tokens, cfg.sampling.prompt_buckets)


def generate_programs(cfg: ExperimentConfig, mesh) -> list[Program]:
    """The prefill and the decode loop of :func:`t1_jax.sampler.sample` (see the module docstring)."""
    import jax
    import numpy as np

    from t1_jax import mesh as mesh_lib, sampler
    from t1_jax.chip_memory import shard_bytes
    from t1_jax.model.cache import KVCache
    from t1_jax.model.functions import model_functions
    from t1_jax.model.counts import decoder_flops

    graphdef, init_params, shardings = model_functions(cfg, mesh)
    params = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    jax.eval_shape(init_params, jax.ShapeDtypeStruct((2,), jax.numpy.uint32)),
                                    shardings)
    b, tp = cfg.data.global_batch_size, prompt_length(cfg)
    prompts = jax.ShapeDtypeStruct((b, tp), np.int32, sharding=mesh_lib.logical_sharding(mesh, ("batch", None)))
    rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated(mesh))
    with record_sample_calls(mesh) as calls:
        sampler.sample(graphdef, params, prompts, prompts, rng, cfg.sampling, emb_token_id=cfg.model.emb_token_id,
                       eos_token_ids=cfg.model.eos_token_ids, normalize=cfg.retrieval.normalize, mesh=mesh)
    (prefill_args, prefill_kwargs), (decode_args, decode_kwargs) = calls["prefill"], calls["decode"]
    cache = next(a for a in decode_args if isinstance(a, KVCache))  # the prefill's output, donated to the loop
    cache_len = cache.max_len
    m = cfg.model
    prefill_flops = decoder_flops(m, b * tp, cache_len, training=False, lm_head_tokens=b)
    step_flops = decoder_flops(m, b, cache_len, training=False, lm_head_tokens=b)
    weights, kv = shard_bytes(params), shard_bytes(cache)

    def breakdown(kv_name):
        return lambda temps: {"weights": weights, kv_name: kv, "activations and the rest": temps or 0}

    def roofline(spec: TopologySpec) -> DecodeRoofline:
        return DecodeRoofline(b, tp, cache_len, spec.chips, read_bytes_per_chip(_decode_read_weights(params, m)),
                              kv, step_flops.total, prefill_flops.total,
                              spec.chip.hbm_bandwidth, spec.chip.peak_bf16_flops)

    steps = cache_len - tp
    return [
        Program("prefill", _Bound(sampler._prefill, prefill_kwargs), prefill_args, prefill_flops, b * tp,
                f"{b} prompts x {tp} tokens into a KV cache of {cache_len} ({m.param_dtype} weights); tokens = prompt "
                f"positions", breakdown("KV cache (output)")),
        Program("decode", _Bound(sampler._decode, decode_kwargs), decode_args, step_flops, b,
                f"decoding loop: up to {steps} steps of {b} sequences over the {cache_len}-slot cache; FLOPs and "
                f"roofline below are per step (one token per sequence)", breakdown("KV cache (donated)"),
                detail=roofline),
    ]


def _decode_read_weights(params: Any, model_cfg) -> Any:
    """The parameters a decoding step reads in full: all but an untied model's embedding table (it gathers B rows)."""
    if model_cfg.tie_word_embeddings:
        return params
    return {k: v for k, v in params.items() if k != "embed_tokens"}
