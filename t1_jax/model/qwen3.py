"""Qwen3 decoder in Flax NNX: the function of ``transformers``' ``Qwen3ForCausalLM``, with stacked (scanned) layers.

Layout choices (see docs/model.md):
- Every layer parameter is stored once, stacked over layers (leading ``layers`` logical axis). The forward runs a
  ``jax.lax.scan`` over the stacked arrays (``scan_layers=True``, compile time independent of depth) or a Python loop
  over the same arrays (``scan_layers=False``). Plain arrays in plain ``nnx.Param`` s, so ``nnx.split``/``nnx.merge``
  inside ``jax.jit`` need no NNX transform.
- Weights keep the Hugging Face ``[out, in]`` order with heads split out as their own dimensions
  (``q_proj [n, h, d]``, ``o_proj [d, n, h]``, ``gate_proj [f, d]``): import/export are reshapes (no transposes),
  tensor parallelism shards heads, and GQA is an einsum over a group axis instead of repeating K/V.
- Each ``nnx.Param`` carries ``logical_axes`` metadata resolved through ``t1_jax.mesh.LOGICAL_RULES``.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t1_jax.config import ConfigError, ModelConfig, dtype as to_dtype
from t1_jax.mesh import constrain
from t1_jax.model.cache import KVCache, constrain_cache, write_slots
from t1_jax.model.counts import layer_shapes
from t1_jax.model.precision import few_rows_on_cpu, weight_einsum
from t1_jax.model.splash import splash_attention

# Per-layer parameters: name -> (logical axes without the leading "layers" axis). Shapes come from layer_shapes().
LAYER_AXES: dict[str, tuple[str, ...]] = {
    "attn_norm": ("norm",),
    "q_proj": ("heads", "head_dim", "embed"),
    "k_proj": ("kv_heads", "head_dim", "embed"),
    "v_proj": ("kv_heads", "head_dim", "embed"),
    "q_norm": ("norm",),
    "k_norm": ("norm",),
    "o_proj": ("embed", "heads", "head_dim"),
    "mlp_norm": ("norm",),
    "gate_proj": ("mlp", "embed"),
    "up_proj": ("mlp", "embed"),
    "down_proj": ("embed", "mlp"),
}
NORM_PARAMS = ("attn_norm", "q_norm", "k_norm", "mlp_norm")

# Activation logical axes.
BTD = ("batch", "length", "embed")
BTNH = ("batch", "length", "heads", "head_dim")
BTKH = ("batch", "length", "kv_heads", "head_dim")
BTF = ("batch", "length", "mlp")

# remat policy name -> jax.checkpoint policy (None entry = no rematerialisation).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_MASKED = float(np.finfo(np.float32).min)


def _init(key, shape, param_dtype, is_norm: bool, std: float = 0.02):
    if is_norm:
        return jnp.ones(shape, param_dtype)
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(param_dtype)


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, each stacked over a leading layer axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pdt = to_dtype(cfg.param_dtype)
        for name, shape in layer_shapes(cfg).items():
            value = _init(rngs.params(), (cfg.num_layers, *shape), pdt, name in NORM_PARAMS)
            setattr(self, name, nnx.Param(value, logical_axes=("layers", *LAYER_AXES[name])))

    def arrays(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in LAYER_AXES}


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, statistics in float32; the result is rounded to the input dtype.

    As HF does, the normalised input is rounded to the input dtype before the scale is applied. The product with the
    scale is taken in the wider of the two dtypes and rounded once, which is HF's bfloat16 product when the scale is
    bfloat16 and, with a float32 master scale, keeps the scale's gradient (a sum over every token) in float32.
    """
    x32 = x.astype(jnp.float32)
    normed = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)
    wide = jnp.promote_types(weight.dtype, x.dtype)
    return (weight.astype(wide) * normed.astype(wide)).astype(x.dtype)


def rope_tables(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``[b, t, h]`` for the rotate-half convention (frequencies repeated over both halves), float32."""
    inv_freq = (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))).astype(np.float32)
    angles = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    cos = cos_bth[:, :, None, :].astype(x_btnh.dtype)
    sin = sin_bth[:, :, None, :].astype(x_btnh.dtype)
    return x_btnh * cos + rotated * sin


def attention(q_btnh, k_bksh, v_bksh, allowed_bts, compute_dtype):
    """Grouped-query attention: query heads grouped per KV head, K/V never repeated. Softmax in float32.

    Keys/values come ``[b, k, s, h]`` (the cache layout). The group axis is folded into the query-length axis
    (``m = g * t``) so both contractions are plain batched matmuls over ``(b, k)``; on CPU this is ~1.7x faster than
    contracting a 5-D ``btkgh`` layout directly. Decode steps on CPU (``m`` of 2-16 rows, as few-row products) take
    both contractions as float32 multiply-and-sum, which XLA fuses into one reduction each: 23-28% less time than
    its batched dots (``benchmarks/bench_decode_attention.py``, docs/benchmarks.md).
    """
    b, t, n, h = q_btnh.shape
    kv, s = k_bksh.shape[1], k_bksh.shape[2]
    g = n // kv
    q_bkmh = q_btnh.reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, h)
    k_bksh = k_bksh.astype(compute_dtype)
    v_bksh = v_bksh.astype(compute_dtype)
    few_rows = few_rows_on_cpu(g * t)
    if few_rows:  # the cache first, as the few-row products take their weight
        scores = jnp.sum(k_bksh[:, :, None, :, :].astype(jnp.float32) * q_bkmh[:, :, :, None, :].astype(jnp.float32),
                         axis=-1)
    else:
        scores = jnp.einsum("bkmh,bksh->bkms", q_bkmh, k_bksh, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, g, t, s) * (h ** -0.5)
    scores = jnp.where(allowed_bts[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(compute_dtype).reshape(b, kv, g * t, s)
    if few_rows:
        out_bkmh = jnp.sum(probs[..., None].astype(jnp.float32) * v_bksh[:, :, None, :, :].astype(jnp.float32),
                           axis=-2).astype(compute_dtype)
    else:
        out_bkmh = jnp.einsum("bkms,bksh->bkmh", probs, v_bksh)
    return out_bkmh.reshape(b, kv, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def decoder_layer(cfg: ModelConfig, x_btd, p, cos, sin, allowed_bts, kv=None, splash_mask_bt=None):
    """One pre-norm decoder layer. ``p``: this layer's arrays in the master dtype (each matmul casts its weight to the
    compute dtype, ``t1_jax.model.precision``). ``kv``: (cache k ``[B, K, S, H]``, cache v, write index) or None.
    ``splash_mask_bt``: given, attention is the splash kernel over this call's own tokens (``t1_jax.model.splash``).

    Returns the new residual stream and the (possibly updated) layer cache keys/values.
    """
    h_btd = rms_norm(x_btd, p["attn_norm"], cfg.rms_norm_eps)
    if "qkv_proj" in p:  # fused layout (split_layers): q, k and v in one product
        b, t, _ = h_btd.shape
        n, kh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv_btc = weight_einsum("btd,cd->btc", h_btd, p["qkv_proj"])
        q = constrain(qkv_btc[..., :n * hd].reshape(b, t, n, hd), BTNH)
        k = constrain(qkv_btc[..., n * hd:(n + kh) * hd].reshape(b, t, kh, hd), BTKH)
        v = constrain(qkv_btc[..., (n + kh) * hd:].reshape(b, t, kh, hd), BTKH)
    else:
        q = constrain(weight_einsum("btd,nhd->btnh", h_btd, p["q_proj"]), BTNH)
        k = constrain(weight_einsum("btd,khd->btkh", h_btd, p["k_proj"]), BTKH)
        v = constrain(weight_einsum("btd,khd->btkh", h_btd, p["v_proj"]), BTKH)
    q = apply_rope(rms_norm(q, p["q_norm"], cfg.rms_norm_eps), cos, sin)
    k_bkth = apply_rope(rms_norm(k, p["k_norm"], cfg.rms_norm_eps), cos, sin).transpose(0, 2, 1, 3)
    v_bkth = v.transpose(0, 2, 1, 3)
    if kv is not None:
        cache_k, cache_v, index = kv
        cache_k = write_slots(cache_k, k_bkth, index, axis=2)
        cache_v = write_slots(cache_v, v_bkth, index, axis=2)
        k_bksh, v_bksh, new_kv = cache_k, cache_v, (cache_k, cache_v)
    else:
        k_bksh, v_bksh, new_kv = k_bkth, v_bkth, None
    if splash_mask_bt is not None:
        out = splash_attention(q, k_bkth, v_bkth, splash_mask_bt, to_dtype(cfg.compute_dtype),
                               block_q=cfg.splash_block_q, block_kv=cfg.splash_block_kv)
    else:
        out = attention(q, k_bksh, v_bksh, allowed_bts, to_dtype(cfg.compute_dtype))
    out = constrain(out, BTNH)
    x_btd = constrain(x_btd + weight_einsum("btnh,dnh->btd", out, p["o_proj"]), BTD)
    h_btd = rms_norm(x_btd, p["mlp_norm"], cfg.rms_norm_eps)
    if "gate_up_proj" in p:  # fused layout: gate and up in one product
        gate_up_btf = weight_einsum("btd,fd->btf", h_btd, p["gate_up_proj"])
        f = cfg.intermediate_size
        gate, up = constrain(gate_up_btf[..., :f], BTF), constrain(gate_up_btf[..., f:], BTF)
    else:
        gate = constrain(weight_einsum("btd,fd->btf", h_btd, p["gate_proj"]), BTF)
        up = constrain(weight_einsum("btd,fd->btf", h_btd, p["up_proj"]), BTF)
    x_btd = constrain(x_btd + weight_einsum("btf,df->btd", jax.nn.silu(gate) * up, p["down_proj"]), BTD)
    return x_btd, new_kv


class Qwen3(nnx.Module):
    """Qwen3 decoder. ``__call__`` returns final-normed hidden states; ``logits`` is applied only where asked."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        problems = cfg.validate()
        if problems:
            raise ConfigError("; ".join(problems))
        self.cfg = cfg
        pdt = to_dtype(cfg.param_dtype)
        v, d = cfg.vocab_size, cfg.hidden_size
        self.embed_tokens = nnx.Param(_init(rngs.params(), (v, d), pdt, False), logical_axes=("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((d,), pdt), logical_axes=("norm",))
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Param(_init(rngs.params(), (v, d), pdt, False), logical_axes=("vocab", "embed"))

    def embed(self, tokens_bt: jax.Array) -> jax.Array:
        table = self.embed_tokens[...]
        return jnp.take(table, tokens_bt, axis=0).astype(to_dtype(self.cfg.compute_dtype))

    def logits(self, hidden_xd: jax.Array) -> jax.Array:
        """LM head on ``hidden [..., d]`` -> float32 ``[..., vocab]`` (tied: the embedding matrix)."""
        cdt = to_dtype(self.cfg.compute_dtype)
        table_vd = (self.embed_tokens if self.lm_head is None else self.lm_head)[...]
        return weight_einsum("...d,vd->...v", hidden_xd.astype(cdt), table_vd, out_dtype=jnp.float32)

    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array, mask_bt: jax.Array,
                 cache: Optional[KVCache] = None, layers: Optional[Sequence[dict]] = None
                 ) -> tuple[jax.Array, Optional[KVCache]]:
        """Final-normed hidden states ``[B, T, D]`` (and the updated cache when one is given).

        ``layers``: optional per-layer parameter dicts (:func:`split_layers`) used instead of slicing the stacked
        ones; the layer loop is then unrolled (the CPU decode path, see ``t1_jax.model.cache``).
        """
        cfg = self.cfg
        b, t = tokens_bt.shape
        mask_bt = mask_bt.astype(bool)
        x_btd = constrain(self.embed(tokens_bt), BTD)
        cos, sin = rope_tables(positions_bt, cfg.head_dim, cfg.rope_theta)
        if cache is None:
            key_valid_bs, q_slot_bt, k_slot = mask_bt, jnp.arange(t)[None], jnp.arange(t)
        else:
            cache = constrain_cache(cache)
            key_valid_bs = write_slots(cache.valid, mask_bt, cache.index, axis=1)
            index = cache.index[:, None] if cache.index.ndim else cache.index
            q_slot_bt, k_slot = index + jnp.arange(t)[None], jnp.arange(cache.max_len)
        # splash: every full-sequence pass; with a cache, a multi-token call is a prefill into an empty cache (the
        # sampler's and the engine's only kind), which attends its own tokens. Decode steps stay on the XLA path.
        splash_mask_bt = mask_bt if cfg.attention_impl == "splash" and (cache is None or t > 1) else None
        allowed_bts = None if splash_mask_bt is not None else (
            key_valid_bs[:, None, :] & (k_slot[None, None, :] <= q_slot_bt[:, :, None]))
        params = self.layers.arrays() if layers is None else None

        def body(x, p, kv):
            return decoder_layer(cfg, x, p, cos, sin, allowed_bts, kv, splash_mask_bt)

        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=policy, prevent_cse=not cfg.scan_layers)

        def layer_params(i):
            return layers[i] if layers is not None else jax.tree.map(lambda a: a[i], params)

        if cache is None:
            x_btd = self._run_layers_no_cache(body, x_btd, params, layer_params)
        elif cache.per_layer:
            x_btd, cache = self._run_layers_per_layer_cache(body, x_btd, layer_params, cache, key_valid_bs, t)
        else:
            if layers is not None:
                raise ValueError("per-layer parameters need the per-layer cache layout (init_cache(per_layer=True))")
            x_btd, cache = self._run_layers_stacked_cache(body, x_btd, params, cache, key_valid_bs, t)
        hidden = rms_norm(x_btd, self.final_norm[...], cfg.rms_norm_eps)
        return constrain(hidden, BTD), cache

    def _run_layers_no_cache(self, body, x_btd, params, layer_params):
        if self.cfg.scan_layers and params is not None:
            x_btd, _ = jax.lax.scan(lambda x, p: (body(x, p, None)[0], None), x_btd, params)
            return x_btd
        for layer in range(self.cfg.num_layers):
            x_btd = body(x_btd, layer_params(layer), None)[0]
        return x_btd

    def _run_layers_per_layer_cache(self, body, x_btd, layer_params, cache: KVCache, key_valid_bs, t: int):
        ks, vs = [], []
        for layer in range(self.cfg.num_layers):
            x_btd, (k_l, v_l) = body(x_btd, layer_params(layer), (cache.k[layer], cache.v[layer], cache.index))
            ks.append(k_l)
            vs.append(v_l)
        new_cache = KVCache(k=tuple(ks), v=tuple(vs), valid=key_valid_bs, index=(cache.index + t).astype(jnp.int32))
        return x_btd, constrain_cache(new_cache)

    def _run_layers_stacked_cache(self, body, x_btd, params, cache: KVCache, key_valid_bs, t: int):
        index = cache.index

        def step(carry, xs):
            x, k_all, v_all = carry
            p, layer = xs
            k_l = jax.lax.dynamic_index_in_dim(k_all, layer, axis=0, keepdims=False)
            v_l = jax.lax.dynamic_index_in_dim(v_all, layer, axis=0, keepdims=False)
            x, (k_l, v_l) = body(x, p, (k_l, v_l, index))
            if index.ndim == 0:  # write back only this step's t new slots (an in-place update inside decode loops)
                k_l = jax.lax.dynamic_slice_in_dim(k_l, index, t, axis=2)
                v_l = jax.lax.dynamic_slice_in_dim(v_l, index, t, axis=2)
                start = (layer, 0, 0, index, 0)
            else:
                start = (layer, 0, 0, 0, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k_l[None], start)
            v_all = jax.lax.dynamic_update_slice(v_all, v_l[None], start)
            return (x, k_all, v_all), None

        carry = (x_btd, cache.k, cache.v)
        layers = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
        if self.cfg.scan_layers:
            carry, _ = jax.lax.scan(step, carry, (params, layers))
        else:
            for layer in range(self.cfg.num_layers):
                carry, _ = step(carry, (jax.tree.map(lambda a: a[layer], params), layers[layer]))
        x_btd, k_all, v_all = carry
        new_cache = KVCache(k=k_all, v=v_all, valid=key_valid_bs, index=(index + t).astype(jnp.int32))
        return x_btd, constrain_cache(new_cache)


@functools.partial(jax.jit, static_argnums=0)
def split_layers(graphdef, params) -> tuple[dict, ...]:
    """The stacked layer parameters as one dict of arrays per layer (one copy, made once per decode call), so an
    unrolled decode step reads each layer's weights where they lie instead of slicing (copying) them every step.

    The copy is also fused: ``qkv_proj [(n + 2k) h, d]`` (q, k and v rows) and ``gate_up_proj [2f, d]`` replace their
    parts, so a decode step reads them in one product each (on CPU a few-row product runs closer to the memory
    bandwidth the more rows its weight has: see docs/benchmarks.md)."""
    arrays = nnx.merge(graphdef, params).layers.arrays()
    n = next(iter(arrays.values())).shape[0]
    d = arrays["q_proj"].shape[-1]
    fused = {
        "qkv_proj": jnp.concatenate([arrays[name].reshape(n, -1, d) for name in ("q_proj", "k_proj", "v_proj")], 1),
        "gate_up_proj": jnp.concatenate([arrays["gate_proj"], arrays["up_proj"]], axis=1),
    }
    kept = {name: a for name, a in arrays.items() if name not in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")}
    return tuple({name: a[i] for name, a in {**kept, **fused}.items()} for i in range(n))


def abstract_model(cfg: ModelConfig) -> Qwen3:
    """A Qwen3 whose parameters are ``jax.ShapeDtypeStruct`` s (no memory, no random init)."""
    return nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
