"""Jitted KV-cache sampler: prefill a padded prompt batch, decode with ``lax.while_loop``, embed at ``<embtoken>``.

One call of :func:`sample` encodes a batch of queries the T1 way: the model writes reasoning tokens after the prompt
until it emits ``<embtoken>`` (or an end-of-sequence token, after which ``<embtoken>`` is appended, or the
``max_new_tokens`` budget runs out, after which ``<embtoken>`` is forced). ``<embtoken>`` is then fed to the model in
the same loop and the final-normed hidden state it produces at its own position is the embedding.

Two compiled programs per (batch, prompt length): ``_prefill`` (creates the cache, runs the prompt) and ``_decode``
(the loop), which takes the cache as a donated argument so XLA updates it in place. Sampling settings, the budget and
the special ids are static, so repeated calls with the same shapes never recompile.

Decode layout (:func:`decode_layout`): on TPU/GPU the layers stay stacked and scanned. On CPU each call first splits
the stacked layer weights into one array per layer (``t1_jax.model.qwen3.split_layers``: one copy of the layer
weights per call, held for the call) and the cache is per layer, so a decode step reads every weight once where it
lies; slicing a stacked array inside the loop copies it on every step (docs/benchmarks.md, "Decode").

Log-probabilities (``Rollout.logprobs_bt``) are those of the distribution each token was drawn from: softmax of
``logits / temperature`` after top-k/top-p truncation (renormalised). Greedy decoding (temperature 0) reports the
model's own distribution (temperature 1). A forced ``<embtoken>`` (budget, or after EOS) was not drawn; it reports its
log-probability under the untruncated ``softmax(logits / temperature)``, which is always finite and equals what
``t1_jax.logprobs.token_logprobs`` recomputes. Padding after a sequence's ``<embtoken>`` is token 0, log-prob 0.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from t1_jax.config import ConfigError, SamplingConfig
from t1_jax.mesh import active_mesh, constrain, use_mesh
from t1_jax.model.cache import init_cache
from t1_jax.model.embedding import l2_normalize, positions_from_valid
from t1_jax.model.precision import target_platform
from t1_jax.model.host_memory import advise_huge_pages
from t1_jax.model.qwen3 import split_layers

PAD_ID = 0  # token written after a sequence has finished


@flax.struct.dataclass
class Rollout:
    tokens_bt: jax.Array  # int32 [B, N + 1]: generated tokens including the final <embtoken>; PAD_ID after it
    logprobs_bt: jax.Array  # float32 [B, N + 1]: log-prob of each generated token (see module doc); 0 on padding
    lengths_b: jax.Array  # int32 [B]: generated tokens including <embtoken>
    embedding_bd: jax.Array  # float32 [B, D]: final-normed hidden state at <embtoken> (L2-normalised if asked)
    forced_b: jax.Array  # bool [B]: <embtoken> was forced because the budget ran out
    stopped_eos_b: jax.Array  # bool [B]: an end-of-sequence token came first; <embtoken> was appended after it


@flax.struct.dataclass
class DecodeState:
    """The decoding loop's carry (a typed struct, as tunix's and gemma's samplers keep theirs)."""

    i: jax.Array  # int32 []: this step's slot in tokens_bt
    cache: Any  # KVCache (stacked or per layer), donated and updated in place
    logits_bv: jax.Array  # float32 [B, V]: the logits step i chooses from
    tokens_bt: jax.Array  # int32 [B, N + 1]: Rollout.tokens_bt so far
    logp_bt: jax.Array  # float32 [B, N + 1]: Rollout.logprobs_bt so far
    lengths_b: jax.Array  # int32 [B]: tokens generated so far, <embtoken> included
    done_b: jax.Array  # bool [B]: <embtoken> fed
    after_eos_b: jax.Array  # bool [B]: the previous step fed an end-of-sequence token (force <embtoken> now)
    forced_b: jax.Array  # bool [B]: Rollout.forced_b
    eos_b: jax.Array  # bool [B]: Rollout.stopped_eos_b
    emb_bd: jax.Array  # float32 [B, D]: hidden state at <embtoken> (zeros until fed)


# ---------------------------------------------------------------------------------------------------------------------
# Truncation filters on temperature-scaled logits: name -> (is it enabled for these settings, filter).
# ---------------------------------------------------------------------------------------------------------------------


def top_k_filter(scaled_bv: jax.Array, k: int) -> jax.Array:
    """Keep the ``k`` largest logits per row (ties with the k-th are kept), the rest -> -inf."""
    kth_b1 = jax.lax.top_k(scaled_bv, min(k, scaled_bv.shape[-1]))[0][:, -1:]
    return jnp.where(scaled_bv < kth_b1, -jnp.inf, scaled_bv)


def top_p_filter(scaled_bv: jax.Array, p: float) -> jax.Array:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches ``p`` (always the top one)."""
    sorted_bv = -jnp.sort(-scaled_bv, axis=-1)
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    keep_bv = mass_before_bv < p
    keep_bv = keep_bv.at[:, 0].set(True)
    threshold_b1 = jnp.min(jnp.where(keep_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled_bv < threshold_b1, -jnp.inf, scaled_bv)


FILTERS = {  # applied in this order (the order transformers uses): top-k, then top-p on what is left
    "top_k": (lambda s: s.top_k > 0, lambda x, s: top_k_filter(x, s.top_k)),
    "top_p": (lambda s: s.top_p < 1.0, lambda x, s: top_p_filter(x, s.top_p)),
}


@functools.lru_cache(maxsize=None)
def _static_settings(temperature: float, top_k: int, top_p: float) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)


def sampling_logprobs(logits_bv: jax.Array, s: SamplingConfig) -> jax.Array:
    """Log-probabilities ``[B, V]`` of the distribution tokens are drawn from (temperature, then truncation)."""
    scaled = logits_bv.astype(jnp.float32) / (s.temperature if s.temperature > 0 else 1.0)
    if s.temperature > 0:
        for enabled, apply in FILTERS.values():
            if enabled(s):
                scaled = apply(scaled, s)
    return jax.nn.log_softmax(scaled, axis=-1)


def first_argmax(x_bv: jax.Array) -> jax.Array:
    """``jnp.argmax(x_bv, axis=-1)`` (the first maximum; the first NaN where a row has one) as two plain reductions:
    the row maximum, then the least index holding it. XLA's CPU backend runs argmax's (value, index) reduction on one
    thread, 1.3 ms for the 2.4 MB of logits of a decode step at batch 4 over a 151,936-token vocabulary; with these
    two, the step's whole sampling span went from 2.3 to 1.3 ms (docs/benchmarks.md, Decode)."""
    max_b1 = jnp.max(x_bv, axis=-1, keepdims=True)
    iota_bv = jax.lax.broadcasted_iota(jnp.int32, x_bv.shape, x_bv.ndim - 1)
    hit_bv = (x_bv == max_b1) | jnp.isnan(x_bv)
    return jnp.min(jnp.where(hit_bv, iota_bv, x_bv.shape[-1]), axis=-1).astype(jnp.int32)


def token_logprob(logits_bv: jax.Array, token_b: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``log_softmax(logits / temperature)[b, token_b]`` without writing the ``[B, V]`` log-probabilities out: the
    same operations as ``jax.nn.log_softmax`` (shift by the row maximum, subtract the log of the sum of exponentials),
    so the result is the same to the bit. Calls on the same logits and temperature share their reductions (XLA CSE)."""
    scaled_bv = logits_bv.astype(jnp.float32)
    if temperature != 1.0:
        scaled_bv = scaled_bv / temperature
    shifted_bv = scaled_bv - jax.lax.stop_gradient(jnp.max(scaled_bv, axis=-1, keepdims=True))
    log_z_b = jnp.log(jnp.sum(jnp.exp(shifted_bv), axis=-1))
    return jnp.take_along_axis(shifted_bv, token_b[:, None].astype(jnp.int32), axis=-1)[:, 0] - log_z_b


def choose_tokens(logits_bv: jax.Array, key: jax.Array, s: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """(token_b, logprob_b): greedy argmax at temperature 0 (its log-prob under the model's own distribution), else
    a draw from :func:`sampling_logprobs`."""
    if s.temperature <= 0:
        token_b = first_argmax(logits_bv)
        return token_b, token_logprob(logits_bv, token_b)
    logp_bv = sampling_logprobs(logits_bv, s)
    token_b = jax.random.categorical(key, logp_bv, axis=-1).astype(jnp.int32)
    return token_b, jnp.take_along_axis(logp_bv, token_b[:, None], axis=-1)[:, 0]


# ---------------------------------------------------------------------------------------------------------------------
# The two compiled programs
# ---------------------------------------------------------------------------------------------------------------------


def decode_layout(mesh: Optional[Mesh]) -> bool:
    """True when decoding should use per-layer weights and cache (CPU); False: stacked, scanned (TPU, GPU)."""
    with use_mesh(mesh):
        return target_platform() == "cpu"


def layer_weights(graphdef, params, mesh: Optional[Mesh], huge_pages: bool = False):
    """Per-layer weights for the CPU decode layout, else None (the stacked ones are used).

    ``huge_pages``: also back them (and ``params``, whose embedding table is the LM head) with 2 MiB pages
    (``t1_jax.model.host_memory``): 1-2 s per GB once, for steps a few percent faster after (docs/benchmarks.md,
    Decode); for callers that keep the result for many calls (``t1 generate``, the engine, benchmarks), not for one
    ``sample`` call."""
    if not decode_layout(mesh):
        return None
    with use_mesh(mesh):
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):  # abstract (AOT compiles)
            return jax.eval_shape(functools.partial(split_layers, graphdef), params)
        layers = split_layers(graphdef, params)
    if huge_pages:
        jax.block_until_ready(layers)
        advise_huge_pages((layers, params))
    return layers


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "mesh"))
def _prefill(graphdef, params, layers, ids_bt, valid_bt, *, cache_len: int, mesh: Optional[Mesh]):
    with use_mesh(mesh):
        model = nnx.merge(graphdef, params)
        b, t = ids_bt.shape
        valid_bt = constrain(valid_bt.astype(bool), ("batch", "length"))
        ids_bt = constrain(ids_bt.astype(jnp.int32), ("batch", "length"))
        cache = init_cache(model.cfg, b, cache_len, per_layer=layers is not None)
        hidden_btd, cache = model(ids_bt, positions_from_valid(valid_bt), valid_bt, cache, layers=layers)
        last_b = t - 1 - jnp.argmax(valid_bt[:, ::-1], axis=-1)  # the last real token, left or right padded
        h_bd = jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]
        logits_bv = constrain(model.logits(h_bd), ("batch", "vocab"))
        prompt_len_b = jnp.sum(valid_bt.astype(jnp.int32), axis=-1)
    return cache, logits_bv, prompt_len_b


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "n_new", "normalize", "mesh"),
                   donate_argnames=("cache",))
def _decode(graphdef, params, layers, cache, logits_bv, prompt_len_b, budget_b, rng, emb_id, eos_v, *, settings: SamplingConfig,
            n_new: int, normalize: bool, mesh: Optional[Mesh]):
    with use_mesh(mesh):
        model = nnx.merge(graphdef, params)
        b = logits_bv.shape[0]
        width = n_new + 1
        forced_temp = settings.temperature if settings.temperature > 0 else 1.0
        bt = ("batch", "length")
        carry = DecodeState(
            i=jnp.zeros((), jnp.int32), cache=cache, logits_bv=logits_bv,
            tokens_bt=constrain(jnp.full((b, width), PAD_ID, jnp.int32), bt),
            logp_bt=constrain(jnp.zeros((b, width), jnp.float32), bt),
            lengths_b=jnp.zeros((b,), jnp.int32), done_b=jnp.zeros((b,), bool), after_eos_b=jnp.zeros((b,), bool),
            forced_b=jnp.zeros((b,), bool), eos_b=jnp.zeros((b,), bool),
            emb_bd=constrain(jnp.zeros((b, model.cfg.hidden_size), jnp.float32), ("batch", "embed")))

        def cond(c: DecodeState):
            return (c.i < width) & ~jnp.all(c.done_b)

        def body(c: DecodeState) -> DecodeState:
            i, logits = c.i, c.logits_bv
            sampled_b, sampled_logp_b = choose_tokens(logits, jax.random.fold_in(rng, i), settings)
            at_budget = i == budget_b
            force_b = c.after_eos_b | at_budget
            forced_logp_b = token_logprob(logits, jnp.broadcast_to(emb_id, (b,)), forced_temp)
            active_b = ~c.done_b
            token_b = jnp.where(active_b, jnp.where(force_b, emb_id, sampled_b), PAD_ID)
            logp_b = jnp.where(active_b, jnp.where(force_b, forced_logp_b, sampled_logp_b), 0.0)
            is_emb_b = active_b & (token_b == emb_id)
            is_eos_b = active_b & ~force_b & jnp.any(token_b[:, None] == eos_v[None, :], axis=-1)
            # Feed this step's token (finished rows feed padding marked invalid, which no later token attends to).
            hidden_b1d, cache = model(token_b[:, None], (prompt_len_b + i)[:, None], active_b[:, None], c.cache,
                                      layers=layers)
            h_bd = hidden_b1d[:, 0]
            return DecodeState(
                i=i + 1, cache=cache, logits_bv=constrain(model.logits(h_bd), ("batch", "vocab")),
                tokens_bt=c.tokens_bt.at[:, i].set(token_b), logp_bt=c.logp_bt.at[:, i].set(logp_b),
                lengths_b=c.lengths_b + active_b.astype(jnp.int32), done_b=c.done_b | is_emb_b,
                after_eos_b=is_eos_b, forced_b=c.forced_b | (is_emb_b & at_budget & ~c.after_eos_b),
                eos_b=c.eos_b | is_eos_b, emb_bd=jnp.where(is_emb_b[:, None], h_bd.astype(jnp.float32), c.emb_bd))

        out = jax.lax.while_loop(cond, body, carry)
        emb_bd = l2_normalize(out.emb_bd) if normalize else out.emb_bd
    rollout = Rollout(tokens_bt=out.tokens_bt, logprobs_bt=out.logp_bt, lengths_b=out.lengths_b,
                      embedding_bd=emb_bd, forced_b=out.forced_b, stopped_eos_b=out.eos_b)
    # The final cache is returned (and dropped by the caller) so the donated input buffers alias an output: XLA then
    # writes every decode step into the caller's cache memory instead of a copy.
    return rollout, out.cache


def sample(graphdef, params, prompt_ids_bt, prompt_valid_bt, rng, cfg: SamplingConfig, *, emb_token_id: int,
           eos_token_ids: Sequence[int] = (), normalize: bool = True,
           max_new_tokens: Union[None, int, Sequence[int]] = None, mesh: Optional[Mesh] = None,
           layers=None) -> Rollout:
    """Generate reasoning after each prompt, then ``<embtoken>``; return tokens, log-probs, lengths and embeddings.

    ``prompt_ids_bt``/``prompt_valid_bt``: ``[B, T]`` prompts, left- or right-padded (positions follow the valid
    mask). ``rng``: a PRNG key (unused when greedy). ``max_new_tokens`` overrides ``cfg.max_new_tokens``: reasoning
    tokens allowed before ``<embtoken>`` is forced, one for all rows or one per row (the loop runs until the longest
    row is done). ``mesh`` (default: the active ``use_mesh`` one) turns on the
    model's sharding constraints: batch over data x fsdp. ``layers``: the CPU decode layout's per-layer weights
    (:func:`layer_weights`) when the caller keeps them across calls; by default split for this call.
    Compiles once per (B, T) and settings.
    """
    problems = cfg.validate()
    if problems:
        raise ConfigError("; ".join(problems))
    if emb_token_id is None:
        raise ValueError("sample: emb_token_id is required (the id of <embtoken>)")
    if prompt_ids_bt.shape != prompt_valid_bt.shape or len(prompt_ids_bt.shape) != 2:
        raise ValueError(f"prompt ids {prompt_ids_bt.shape} and valid mask {prompt_valid_bt.shape} must both be "
                         f"[B, T]")
    budget = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
    budget_b = np.broadcast_to(np.asarray(budget, np.int32), (prompt_ids_bt.shape[0],))
    if budget_b.min(initial=0) < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {budget}")
    n_new = int(budget_b.max(initial=0))
    eos = tuple(sorted({int(e) for e in eos_token_ids}))
    if int(emb_token_id) in eos:
        raise ValueError(f"<embtoken> id {emb_token_id} is also an end-of-sequence id")
    mesh = active_mesh() if mesh is None else mesh
    settings = _static_settings(float(cfg.temperature), int(cfg.top_k), float(cfg.top_p))
    layers = layer_weights(graphdef, params, mesh) if layers is None else layers
    cache, logits_bv, prompt_len_b = _prefill(graphdef, params, layers, prompt_ids_bt, prompt_valid_bt,
                                              cache_len=prompt_ids_bt.shape[1] + n_new + 1, mesh=mesh)
    # The special ids are traced (not static): changing them never recompiles. -1 pads the EOS list (never a token).
    width = max(4, -(-len(eos) // 4) * 4)
    eos_v = jnp.asarray(eos + (-1,) * (width - len(eos)), jnp.int32)
    rollout, _ = _decode(graphdef, params, layers, cache, logits_bv, prompt_len_b, jnp.asarray(budget_b), rng, jnp.int32(emb_token_id), eos_v,
                         settings=settings, n_new=n_new, normalize=bool(normalize), mesh=mesh)
    return rollout


def compiled_count() -> int:
    """How many (prefill, decode) programs have been compiled so far (tests check a second call adds none)."""
    return _prefill._cache_size() + _decode._cache_size()
