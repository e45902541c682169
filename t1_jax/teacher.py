"""Teacher generation: every trace ``t1 generate`` writes comes from :func:`generate_traces`, the one seam.

``generate_traces(graphdef, params, prompts, sampling, stop_id=, eos_ids=, seeds=, max_new_tokens=, mesh=,
batch_size=)`` takes token-id prompts (already in the teacher's chat format) and returns, per prompt and in input
order, the generated token ids before the stop token and whether the budget ran out first.

Two engines behind it, chosen by ``engine`` (default: continuous batching unless the mesh spans several processes):

* **continuous batching** (:func:`t1_jax.engine.generate`, single-process meshes): ``batch_size`` decode slots; when a
  trace ends, its slot takes the next prompt. Each prompt draws from its own key (``seeds``), so a trace does not
  depend on the other prompts of the call, their order or the slot count: a resumed run repeats an uninterrupted one
  whatever the chunks.
* **fixed batches** (:func:`t1_jax.sampler.sample`, the multi-process path: the engine's host loop reads its slots
  on one process): the prompts are sorted by length (longest first, stable), cut into batches of ``batch_size`` rows
  (rounded up to a multiple of the mesh's ``data x fsdp``), each batch left-padded to the smallest
  ``sampling.prompt_buckets`` length that holds it. A short last batch is filled with copies of its first prompt
  (their results are dropped): a copy stops when its original does, where a one-token dummy could keep the decode
  loop running to the budget. ``sample`` draws a whole batch from one key, derived from the ``seeds`` of its rows (in
  batch order): the same prompts with the same seeds in the same call form the same batches and draw the same traces,
  so callers that resume (``t1 generate``) call this with the same groups of prompts (fixed by input order).

Both run T1's ``<embtoken>`` decoding as a plain chat decoder: the chat end token (``<|im_end|>``) is passed as the
"``<embtoken>``", so a row stops when it draws it, and at the budget it is forced (the trace hit the budget); an
``<|endoftext|>`` is passed as end-of-sequence, after which the stop token is appended. The stop token, and an
end-of-sequence token before it, are not part of the returned trace.

Greedy decoding (temperature 0) gives the same traces on both paths, up to float round-off (an argmax between two
near-equal logits could flip); sampled decoding draws differently on the two (per-sequence keys vs a batch key), so
a multi-process run's sampled traces are not a single-process run's.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t1_jax.config import SamplingConfig
from t1_jax.encoder import bucket_length, length_batches
from t1_jax.engine import EngineSettings, generate
from t1_jax.mesh import BATCH_AXES, batch_shard_count
from t1_jax.sampler import sample


class Trace(NamedTuple):
    token_ids: tuple[int, ...]  # generated tokens before the stop token (an end-of-sequence token before it dropped)
    hit_budget: bool  # the budget ran out before the teacher stopped: the trace is cut


def batch_seed(seeds: Sequence[int]) -> int:
    """A 31-bit PRNG seed for a batch from its rows' seeds (in batch order)."""
    digest = hashlib.blake2b(np.asarray(seeds, np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _place(prompts: Sequence[Sequence[int]], rows: int, length: int, pad_id: int, mesh: Optional[Mesh]):
    """``[rows, length]`` left-padded ids and valid mask; rows beyond the prompts repeat the first one."""
    ids_bt = np.full((rows, length), pad_id, np.int32)
    valid_bt = np.zeros((rows, length), bool)
    for b in range(rows):
        p = prompts[b] if b < len(prompts) else prompts[0]
        ids_bt[b, length - len(p):], valid_bt[b, length - len(p):] = p, True
    if mesh is None:
        return ids_bt, valid_bt
    # Every process builds the same whole batch; each places the rows its devices hold (a mesh may span hosts).
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))
    return tuple(jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: x[index])
                 for x in (ids_bt, valid_bt))


def _to_host(tree):
    """The whole of each array on every process (gathered across hosts when the mesh spans several)."""
    if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def generate_traces(graphdef, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, *, stop_id: int,
                    eos_ids: Sequence[int], seeds: Sequence[int], max_new_tokens: Optional[int] = None,
                    mesh: Optional[Mesh] = None, batch_size: int, pad_id: int = 0,
                    engine: Optional[bool] = None, layers=None) -> list[Trace]:
    """One :class:`Trace` per prompt, in input order (see the module doc for batching and randomness).

    ``prompts``: token ids ending where the teacher starts writing (the chat template's generation prompt).
    ``sampling``: temperature / top-k / top-p and ``prompt_buckets``; ``max_new_tokens`` (default
    ``sampling.max_new_tokens``): tokens allowed before the stop token is forced. ``stop_id``: the chat end token;
    ``eos_ids``: other end tokens (after one the trace ends too). ``seeds``: one per prompt. ``mesh``: the batch is
    split over its ``data x fsdp`` (parameters already placed on it). ``batch_size``: decode slots (engine) or rows
    per sampler call. ``engine``: continuous batching (default: when the run is a single process) or fixed batches.
    ``layers``: per-layer weights for the engine, made once by a caller that calls this repeatedly
    (``t1_jax.sampler.layer_weights``).
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("an empty prompt: every prompt needs at least one token")
    shards = batch_shard_count(mesh) if mesh is not None else 1
    rows = -(-max(1, batch_size) // shards) * shards
    eos = tuple(int(e) for e in eos_ids if int(e) != int(stop_id))
    if engine is None:
        engine = jax.process_count() == 1
    if engine:
        gens = generate(graphdef, params, [list(p) for p in prompts], sampling, emb_token_id=stop_id,
                        eos_token_ids=eos, max_new_tokens=max_new_tokens, seeds=seeds, normalize=False,
                        settings=EngineSettings(slots=rows), mesh=mesh, layers=layers)
        # The stop token (and an EOS before it) dropped.
        return [Trace(tuple(int(t) for t in g.tokens[:len(g.tokens) - 1 - int(g.stopped_eos)]), bool(g.forced))
                for g in gens]
    out: list[Optional[Trace]] = [None] * len(prompts)
    for batch in length_batches([len(p) for p in prompts], rows):
        batch_prompts = [prompts[i] for i in batch]
        length = bucket_length(max(len(p) for p in batch_prompts), sampling.prompt_buckets)
        ids_bt, valid_bt = _place(batch_prompts, rows, length, pad_id, mesh)
        rng = jax.random.key(batch_seed([seeds[i] for i in batch]))
        rollout = sample(graphdef, params, ids_bt, valid_bt, rng, sampling, emb_token_id=stop_id, eos_token_ids=eos,
                         normalize=False, max_new_tokens=max_new_tokens, mesh=mesh)
        rollout = _to_host((rollout.tokens_bt, rollout.lengths_b, rollout.forced_b, rollout.stopped_eos_b))
        tokens_bt, lengths_b, forced_b, eos_b = (np.asarray(x) for x in rollout)
        for j, i in enumerate(batch):
            n = int(lengths_b[j]) - 1 - int(eos_b[j])  # the stop token (and an EOS before it) dropped
            out[i] = Trace(tuple(int(t) for t in tokens_bt[j, :n]), bool(forced_b[j]))
    return out
