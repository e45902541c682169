"""Continuous batching: a fixed number of decode slots; when a sequence ends, its slot takes the next prompt.

The batch sampler (:func:`t1_jax.sampler.sample`) decodes a batch until its longest row is done: with T1's long-tailed
reasoning lengths most rows sit finished while one runs on (on BRIGHT's reasoning lengths the longest of 4 is ~2.9x
the mean). Here every decode step advances all ``slots``; a slot whose sequence has fed its ``<embtoken>`` is
harvested on the host and refilled with the next prompt (prefilled into that slot), so the steps go to live rows.

Per-sequence semantics are the sampler's (module doc of ``t1_jax.sampler``): reasoning until ``<embtoken>``; after an
end-of-sequence token ``<embtoken>`` is appended; at the sequence's budget it is forced; the embedding is the
final-normed hidden state at ``<embtoken>``; log-probs of the drawn distribution. Greedy output is token-identical to
the batch sampler's (tested). Sampling draws each sequence's tokens from its own key (``seed`` per prompt), so a
sequence's output does not depend on which slot or which neighbours it had.

Device state: a KV cache with one write index per slot (``t1_jax.model.cache``; per layer on CPU), the slots' next-
token logits, step counters, budgets, keys and output buffers. Three compiled programs: ``_admit`` (prefill the
next prompts, padded to power-of-two buckets, into the free slots), ``_run`` (decode until some slot finishes) and ``_resize``
(copy the cache to another capacity). The cache capacity follows the live sequences: the smallest power of two (at
least ``min_capacity``) holding every live slot's prompt + budget + 1, so attention reads only as far as it must.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Iterator, Optional, Sequence, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from t1_jax.config import ConfigError, SamplingConfig
from t1_jax.mesh import active_mesh, batch_shard_count, constrain, use_mesh
from t1_jax.model.cache import KVCache, init_cache
from t1_jax.sampler import PAD_ID, _static_settings, choose_tokens, layer_weights, sampling_logprobs, token_logprob


@dataclasses.dataclass(frozen=True)
class Generation:
    """One prompt's result (host arrays)."""

    tokens: np.ndarray  # int32 [n]: generated tokens, the final <embtoken> included
    logprobs: np.ndarray  # float32 [n]
    embedding: np.ndarray  # float32 [D]
    forced: bool  # <embtoken> forced by the budget
    stopped_eos: bool  # an end-of-sequence token came first


@flax.struct.dataclass
class _Slots:
    cache: KVCache  # per-row write index = the next position of each slot
    logits: jax.Array  # float32 [B, V]: next-token logits of each slot
    step: jax.Array  # int32 [B]: tokens generated so far
    budget: jax.Array  # int32 [B]
    keys: jax.Array  # [B] PRNG keys (one per sequence)
    tokens: jax.Array  # int32 [B, W]
    logp: jax.Array  # float32 [B, W]
    emb: jax.Array  # float32 [B, D]
    live: jax.Array  # bool [B]: holds a sequence that has not fed <embtoken> yet
    done: jax.Array  # bool [B]: finished during the last _run (harvested by the host)
    after_eos: jax.Array  # bool [B]
    forced: jax.Array  # bool [B]
    eos: jax.Array  # bool [B]


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def _empty_slots(cfg, b: int, capacity: int, width: int, per_layer: bool) -> _Slots:
    def zeros_b():  # a buffer each: the state is donated, and one buffer cannot be donated twice
        return jnp.zeros((b,), bool)

    return _Slots(cache=init_cache(cfg, b, capacity, per_layer=per_layer, per_row_index=True),
                  logits=jnp.zeros((b, cfg.vocab_size), jnp.float32), step=jnp.zeros((b,), jnp.int32),
                  budget=jnp.zeros((b,), jnp.int32), keys=jax.random.split(jax.random.key(0), b),
                  tokens=jnp.full((b, width), PAD_ID, jnp.int32), logp=jnp.zeros((b, width), jnp.float32),
                  emb=jnp.zeros((b, cfg.hidden_size), jnp.float32), live=zeros_b(), done=zeros_b(),
                  after_eos=zeros_b(), forced=zeros_b(), eos=zeros_b())


def _resize_kv(a: jax.Array, capacity: int) -> jax.Array:  # [..., S, H] -> [..., capacity, H]
    s = a.shape[-2]
    if capacity <= s:
        return a[..., :capacity, :]
    return jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, capacity - s), (0, 0)])


@functools.partial(jax.jit, static_argnames=("capacity", "mesh"))
def _resize(slots: _Slots, *, capacity: int, mesh: Optional[Mesh]) -> _Slots:
    with use_mesh(mesh):
        c = slots.cache
        k = jax.tree.map(lambda a: _resize_kv(a, capacity), c.k)
        v = jax.tree.map(lambda a: _resize_kv(a, capacity), c.v)
        s = c.valid.shape[1]
        valid = c.valid[:, :capacity] if capacity <= s else jnp.pad(c.valid, ((0, 0), (0, capacity - s)))
        return slots.replace(cache=KVCache(k=k, v=v, valid=valid, index=c.index))


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"), donate_argnames=("slots",))
def _admit(graphdef, params, layers, slots: _Slots, slot_a, ids_at, length_a, budget_a, key_a, *,
           mesh: Optional[Mesh]):
    """Prefill ``A`` right-padded prompts ``[A, T]`` (``length_a`` real tokens) into slots ``slot_a`` (an index past
    the last slot marks a padding row: its writes are dropped)."""
    a, t = ids_at.shape
    valid_at = jnp.arange(t)[None] < length_a[:, None]
    with use_mesh(None):  # a few prompts are not split over the mesh: their forward is replicated
        model = nnx.merge(graphdef, params)
        tmp = init_cache(model.cfg, a, t, per_layer=layers is not None)
        hidden_atd, tmp = model(ids_at, jnp.broadcast_to(jnp.arange(t)[None], (a, t)), valid_at, tmp, layers=layers)
        last_ad = jnp.take_along_axis(hidden_atd, jnp.maximum(length_a - 1, 0)[:, None, None], axis=1)[:, 0]
        logits_av = model.logits(last_ad).astype(jnp.float32)
    with use_mesh(mesh):
        c = slots.cache

        def put(big, small):  # [(L,) B, K, S, H] <- [(L,) A, K, T, H] at the slots' rows, positions [0, T)
            if big.ndim == 5:
                return big.at[:, slot_a, :, :t].set(small.astype(big.dtype), mode="drop")
            return big.at[slot_a, :, :t].set(small.astype(big.dtype), mode="drop")

        def set_rows(x, value):
            return x.at[slot_a].set(value, mode="drop")

        k = jax.tree.map(put, c.k, tmp.k)
        v = jax.tree.map(put, c.v, tmp.v)
        row_valid = jnp.arange(c.max_len)[None] < length_a[:, None]
        cache = KVCache(k=k, v=v, valid=set_rows(c.valid, row_valid), index=set_rows(c.index, length_a))
        false_a = jnp.zeros((a,), bool)
        return slots.replace(
            cache=cache, logits=set_rows(slots.logits, logits_av), step=set_rows(slots.step, 0),
            budget=set_rows(slots.budget, budget_a), keys=set_rows(slots.keys, key_a),
            tokens=set_rows(slots.tokens, PAD_ID), logp=set_rows(slots.logp, 0.0), emb=set_rows(slots.emb, 0.0),
            live=set_rows(slots.live, ~false_a), done=set_rows(slots.done, false_a),
            after_eos=set_rows(slots.after_eos, false_a), forced=set_rows(slots.forced, false_a),
            eos=set_rows(slots.eos, false_a))


def _choose_per_row(logits_bv, keys_b, step_b, s: SamplingConfig):
    """(token_b, logprob_b) with each row's own key folded with its own step (greedy: argmax, keys unused)."""
    if s.temperature <= 0:
        return choose_tokens(logits_bv, keys_b[0], s)
    logp_bv = sampling_logprobs(logits_bv, s)
    row_keys = jax.vmap(jax.random.fold_in)(keys_b, step_b)
    token_b = jax.vmap(lambda k, lp: jax.random.categorical(k, lp))(row_keys, logp_bv).astype(jnp.int32)
    return token_b, jnp.take_along_axis(logp_bv, token_b[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "mesh"), donate_argnames=("slots",))
def _run(graphdef, params, layers, slots: _Slots, emb_id, eos_v, *, settings: SamplingConfig,
         mesh: Optional[Mesh]) -> _Slots:
    """Decode every live slot until at least one finishes (feeds its <embtoken>) or none is live."""
    with use_mesh(mesh):
        model = nnx.merge(graphdef, params)
        forced_temp = settings.temperature if settings.temperature > 0 else 1.0
        width = slots.tokens.shape[1]

        def body(c: _Slots) -> _Slots:
            live, step = c.live, c.step
            sampled_b, sampled_logp_b = _choose_per_row(c.logits, c.keys, step, settings)
            at_budget = step == c.budget
            force_b = c.after_eos | at_budget
            forced_logp_b = token_logprob(c.logits, jnp.broadcast_to(emb_id, live.shape), forced_temp)
            token_b = jnp.where(live, jnp.where(force_b, emb_id, sampled_b), PAD_ID)
            logp_b = jnp.where(live, jnp.where(force_b, forced_logp_b, sampled_logp_b), 0.0)
            is_emb = live & (token_b == emb_id)
            is_eos = live & ~force_b & jnp.any(token_b[:, None] == eos_v[None, :], axis=-1)
            index = c.cache.index
            hidden_b1d, cache = model(token_b[:, None], index[:, None], live[:, None], c.cache, layers=layers)
            cache = cache.replace(index=jnp.where(live, index + 1, index))  # idle slots keep their place
            h_bd = hidden_b1d[:, 0]
            at_step = live[:, None] & (jnp.arange(width)[None] == step[:, None])
            return c.replace(
                cache=cache, logits=constrain(model.logits(h_bd), ("batch", "vocab")), step=step + live,
                tokens=jnp.where(at_step, token_b[:, None], c.tokens), logp=jnp.where(at_step, logp_b[:, None],
                                                                                       c.logp),
                emb=jnp.where(is_emb[:, None], h_bd.astype(jnp.float32), c.emb), live=live & ~is_emb,
                done=c.done | is_emb, after_eos=jnp.where(live, is_eos, c.after_eos),
                forced=c.forced | (is_emb & at_budget & ~c.after_eos), eos=c.eos | is_eos)

        slots = slots.replace(done=jnp.zeros_like(slots.done))
        return jax.lax.while_loop(lambda c: jnp.any(c.live) & ~jnp.any(c.done), body, slots)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """``slots``: sequences decoded together (a multiple of the mesh's batch shards). ``min_capacity``: smallest
    cache bucket. ``prompt_bucket``: smallest prompt padding bucket (powers of two above it)."""

    slots: int = 8
    min_capacity: int = 64
    prompt_bucket: int = 16


def generate_iter(graphdef, params, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, emb_token_id: int,
                  eos_token_ids: Sequence[int] = (), max_new_tokens: Union[None, int, Sequence[int]] = None,
                  seeds: Optional[Sequence[int]] = None, rng: Optional[jax.Array] = None, normalize: bool = True,
                  settings: EngineSettings = EngineSettings(), mesh: Optional[Mesh] = None, layers=None
                  ) -> Iterator[tuple[int, Generation]]:
    """Yield ``(prompt index, Generation)`` as sequences finish (not in input order).

    ``prompts``: token ids (unpadded). ``max_new_tokens``: the reasoning budget, one for all or one per prompt
    (default ``cfg.max_new_tokens``). ``seeds``: one per prompt (default: its index); with ``rng`` (default key 0)
    they give each sequence its own key, so sampled output does not depend on the slot count or the other prompts.
    ``layers``: the CPU decode layout's per-layer weights (``t1_jax.sampler.layer_weights``) when the caller already
    made them for these parameters (several calls with unchanged weights split them once); default: made here.
    """
    problems = cfg.validate()
    if problems:
        raise ConfigError("; ".join(problems))
    n = len(prompts)
    budgets = np.broadcast_to(np.asarray(cfg.max_new_tokens if max_new_tokens is None else max_new_tokens,
                                         np.int64), (n,))
    seeds = (np.arange(n) if seeds is None else np.asarray(seeds, np.int64)) % (1 << 32)  # fold_in takes uint32
    if n == 0:
        return
    if budgets.min() < 0 or len(seeds) != n or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token, budgets must be >= 0 and there must be "
                         "one seed per prompt")
    eos = tuple(sorted({int(e) for e in eos_token_ids}))
    if int(emb_token_id) in eos:
        raise ValueError(f"<embtoken> id {emb_token_id} is also an end-of-sequence id")
    mesh = active_mesh() if mesh is None else mesh
    b = settings.slots
    shards = batch_shard_count(mesh) if mesh is not None else 1
    if b % shards:
        raise ValueError(f"engine slots ({b}) must be a multiple of the mesh's batch shards ({shards})")
    model_cfg = nnx.merge(graphdef, params).cfg
    static = _static_settings(float(cfg.temperature), int(cfg.top_k), float(cfg.top_p))
    # One split for the whole run, on huge pages (a long run amortises their 1-2 s per GB)
    layers = layer_weights(graphdef, params, mesh, huge_pages=True) if layers is None else layers
    base = jax.random.key(0) if rng is None else rng
    eos_v = jnp.asarray(eos + (-1,) * (max(4, -(-len(eos) // 4) * 4) - len(eos)), jnp.int32)
    emb_id = jnp.int32(emb_token_id)
    width = int(budgets.max()) + 1
    need = [len(p) + int(budgets[i]) + 1 for i, p in enumerate(prompts)]
    capacity = _bucket(need[0], settings.min_capacity)
    with use_mesh(mesh):
        slots = _empty_slots(model_cfg, b, capacity, width, layers is not None)
    pending = collections.deque(range(n))
    owner: list[Optional[int]] = [None] * b  # prompt index held by each slot

    def fit(extra: Sequence[int]) -> None:
        nonlocal slots, capacity
        wanted = _bucket(max([need[i] for i in owner if i is not None] + list(extra) + [1]), settings.min_capacity)
        if wanted != capacity:
            slots = _resize(slots, capacity=wanted, mesh=mesh)
            capacity = wanted

    while pending or any(o is not None for o in owner):
        free = [slot for slot in range(b) if owner[slot] is None][:len(pending)]
        if free:  # prefill the next prompts into every free slot at once (a power-of-two batch, padding dropped)
            batch = [pending.popleft() for _ in free]
            fit([need[i] for i in batch])
            a = _bucket(len(batch), 1)
            t = min(_bucket(max(len(prompts[i]) for i in batch), settings.prompt_bucket), capacity)
            ids = np.zeros((a, t), np.int32)
            lengths = np.ones(a, np.int32)
            for r, i in enumerate(batch):
                ids[r, :len(prompts[i])] = prompts[i]
                lengths[r] = len(prompts[i])
            slot_a = np.full(a, b, np.int32)  # b: past the last slot, dropped
            slot_a[:len(free)] = free
            budget_a = np.zeros(a, np.int32)
            budget_a[:len(batch)] = budgets[batch]
            keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(
                jnp.asarray(np.pad(seeds[batch], (0, a - len(batch))), jnp.uint32))
            slots = _admit(graphdef, params, layers, slots, slot_a, ids, lengths, budget_a, keys, mesh=mesh)
            for slot, i in zip(free, batch):
                owner[slot] = i
        slots = _run(graphdef, params, layers, slots, emb_id, eos_v, settings=static, mesh=mesh)
        done = np.asarray(jax.device_get(slots.done))
        if not done.any():
            continue
        host = jax.device_get((slots.tokens, slots.logp, slots.step, slots.emb, slots.forced, slots.eos))
        tokens, logp, steps, emb, forced, stopped = (np.asarray(a) for a in host)
        for slot in np.flatnonzero(done):
            i, owner[slot] = owner[slot], None
            e = emb[slot]
            if normalize:
                e = e / max(float(np.linalg.norm(e)), 1e-6)
            k = int(steps[slot])
            yield i, Generation(tokens=tokens[slot, :k].copy(), logprobs=logp[slot, :k].copy(), embedding=e,
                                forced=bool(forced[slot]), stopped_eos=bool(stopped[slot]))
        fit([])


def generate(graphdef, params, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, **kw) -> list[Generation]:
    """:func:`generate_iter`, collected in input order."""
    out: list[Optional[Generation]] = [None] * len(prompts)
    for i, g in generate_iter(graphdef, params, prompts, cfg, **kw):
        out[i] = g
    return out  # type: ignore[return-value]


def compiled_count() -> int:
    """Compiled engine programs so far (admit per prompt bucket x capacity, run and resize per capacity)."""
    return _admit._cache_size() + _run._cache_size() + _resize._cache_size()
