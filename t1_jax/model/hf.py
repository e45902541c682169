"""Hugging Face Qwen3 checkpoints <-> our stacked NNX parameters.

Import streams the safetensors files: each parameter is created as zeros directly on its final ``NamedSharding``,
then every layer (or ~64 MB row chunk of the embedding) is read from disk and written into it in place by a jitted,
donating update that also converts layout and dtype on device. The host holds the model plus one layer's tensor at a
time (never a float32 copy of a bf16 checkpoint, never a whole stacked parameter in numpy). Every key is mapped,
every shape checked; problems are reported all at once with key names and both shapes.
Export writes safetensors (+ ``config.json``, + tokenizer files) that ``transformers`` loads.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from t1_jax.config import ModelConfig, dtype as to_dtype
from t1_jax.mesh import LOGICAL_RULES, Rules, logical_sharding
from t1_jax.model import safetensors_io as st
from t1_jax.model.presets import from_hf_config, to_hf_config
from t1_jax.model.qwen3 import Qwen3, abstract_model
from t1_jax.model.sharding import logical_axes_of

log = logging.getLogger(__name__)

# our parameter -> (HF key, how many of our leading dims make up HF's first dim; None = same shape).
# An HF linear weight is [out, in]; ours is the same matrix with heads split out (e.g. q_proj [n, h, d]), so the
# conversion either way is a reshape, never a transpose.
_LAYER_KEYS: dict[str, tuple[str, Optional[int]]] = {
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", None),
    "q_proj": ("model.layers.{i}.self_attn.q_proj.weight", 2),
    "k_proj": ("model.layers.{i}.self_attn.k_proj.weight", 2),
    "v_proj": ("model.layers.{i}.self_attn.v_proj.weight", 2),
    "q_norm": ("model.layers.{i}.self_attn.q_norm.weight", None),
    "k_norm": ("model.layers.{i}.self_attn.k_norm.weight", None),
    "o_proj": ("model.layers.{i}.self_attn.o_proj.weight", 1),
    "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", None),
    "gate_proj": ("model.layers.{i}.mlp.gate_proj.weight", None),
    "up_proj": ("model.layers.{i}.mlp.up_proj.weight", None),
    "down_proj": ("model.layers.{i}.mlp.down_proj.weight", None),
}
_TOP_KEYS: dict[str, tuple[str, Optional[int]]] = {
    "embed_tokens": ("model.embed_tokens.weight", None),
    "final_norm": ("model.norm.weight", None),
    "lm_head": ("lm_head.weight", None),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: where it lives in our state and how its shape differs."""

    hf_name: str
    path: tuple[str, ...]  # path in nnx.state(model)
    layer: Optional[int]  # index into the stacked layer axis, or None
    split: Optional[int]  # our leading dims that form HF's first dim (None: same shape)
    ours_shape: tuple[int, ...]  # this tensor's shape in our layout (one layer)

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.split is None:
            return self.ours_shape
        return (math.prod(self.ours_shape[:self.split]), math.prod(self.ours_shape[self.split:]))

    def to_ours(self, hf_array: np.ndarray) -> np.ndarray:
        return hf_array.reshape(self.ours_shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        return ours.reshape(self.hf_shape)


def key_map(model: Qwen3) -> list[Entry]:
    """Every HF tensor of ``model``'s architecture, in (parameter, layer) order."""
    cfg = model.cfg
    entries = []
    for name, (hf_name, split) in _TOP_KEYS.items():
        var = getattr(model, name)
        if var is not None:
            entries.append(Entry(hf_name, (name,), None, split, tuple(var.shape)))
    for name, (template, split) in _LAYER_KEYS.items():
        shape = tuple(getattr(model.layers, name).shape[1:])
        for i in range(cfg.num_layers):
            entries.append(Entry(template.format(i=i), ("layers", name), i, split, shape))
    return entries


def check_keys(entries: list[Entry], infos: dict[str, st.TensorInfo], tied: bool, where: str) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped key (with both shapes)."""
    expected = {e.hf_name: e for e in entries}
    problems = []
    for name in sorted(set(expected) - set(infos)):
        problems.append(f"missing key {name} (expected shape {list(expected[name].hf_shape)})")
    ignorable = {"lm_head.weight"} if tied else set()
    for name in sorted(set(infos) - set(expected) - ignorable):
        problems.append(f"unexpected key {name} (shape {list(infos[name].shape)})")
    for name in sorted(set(infos) & set(expected)):
        if tuple(infos[name].shape) != expected[name].hf_shape:
            problems.append(f"key {name} has shape {list(infos[name].shape)} in the checkpoint but the model "
                            f"expects {list(expected[name].hf_shape)}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"checkpoint {where} does not match config.json:\n  " + "\n  ".join(shown))


_CHUNK_BYTES = 64 << 20  # rows of a non-stacked tensor (the embedding) read per transfer


def _bits(dtype):
    """16-bit floats are written as uint16 bit patterns inside the update: XLA:CPU otherwise upcasts a bf16
    dynamic-update-slice of the whole array to float32 (2x slower per write). The bitcasts are free and keep the
    donated input and the output the same type, so the write stays in place."""
    return jnp.uint16 if jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else None


@functools.lru_cache(maxsize=None)
def _zeros(shape, dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _updater(sharding, dtype, stacked: bool, ours_shape: tuple[int, ...]):
    """jit(arr, hf_chunk, start) -> ``arr`` (donated) with the chunk, reshaped to our layout and converted to our
    dtype on device, written in place: a whole layer at ``arr[start]`` (stacked) or rows from ``start`` (others)."""
    bits = _bits(dtype)

    def update(arr, chunk, start):
        if stacked:
            piece, starts = chunk.reshape(ours_shape)[None], (start,) + (0,) * len(ours_shape)
        else:
            piece, starts = chunk, (start,) + (0,) * (chunk.ndim - 1)
        piece = piece.astype(dtype)
        if bits is None:
            return jax.lax.dynamic_update_slice(arr, piece, starts)
        as_bits = jax.lax.dynamic_update_slice(jax.lax.bitcast_convert_type(arr, bits),
                                               jax.lax.bitcast_convert_type(piece, bits), starts)
        return jax.lax.bitcast_convert_type(as_bits, dtype)

    return jax.jit(update, donate_argnums=0, out_shardings=sharding)


def _place(shape, dtype, sharding, entries: list[Entry], infos) -> jax.Array:
    """Build one (possibly stacked) parameter on its sharding: zeros on device, then each layer (or row chunk) read
    from disk and written in place, so the host holds one layer/chunk at a time, never a whole-parameter copy.
    Each write is waited for before the next read, which bounds the host chunks in flight to one."""
    arr = _zeros(shape, dtype, sharding)()
    for entry in entries:
        info = infos[entry.hf_name]
        update = _updater(sharding, dtype, entry.layer is not None, entry.ours_shape)
        if entry.layer is not None:
            arr = update(arr, st.read_tensor(info), entry.layer).block_until_ready()
            continue
        step = max(1, _CHUNK_BYTES // max(1, info.nbytes // max(1, info.shape[0])))
        for start in range(0, info.shape[0], step):
            arr = update(arr, st.read_rows(info, start, min(start + step, info.shape[0])), start).block_until_ready()
    return arr


def import_hf(src_dir: str, mesh: Optional[Mesh] = None, cfg_overrides: Optional[dict[str, Any]] = None,
              rules: Rules = LOGICAL_RULES) -> Qwen3:
    """Load an HF Qwen3 checkpoint folder into a Qwen3 whose parameters sit on their shardings (``mesh``) or on the
    first device. ``cfg_overrides``: ModelConfig fields to change (e.g. ``param_dtype``, ``remat``)."""
    cfg = from_hf_config(src_dir, **dict(cfg_overrides or {}))
    infos = st.index_checkpoint(src_dir)
    model = abstract_model(cfg)
    entries = key_map(model)
    check_keys(entries, infos, cfg.tie_word_embeddings, src_dir)
    graphdef, state = nnx.split(model)
    by_path: dict[tuple, list[Entry]] = {}
    for entry in entries:
        by_path.setdefault(entry.path, []).append(entry)
    param_dtype = to_dtype(cfg.param_dtype)
    for path, var in nnx.to_flat_state(state):
        path = tuple(str(p) for p in path)
        if path not in by_path:
            raise ValueError(f"internal: parameter {'/'.join(path)} has no HF key mapping")
        sharding = (logical_sharding(mesh, logical_axes_of(var), rules) if mesh is not None
                    else SingleDeviceSharding(jax.devices()[0]))
        var.set_value(_place(tuple(var.shape), param_dtype, sharding, by_path[path], infos))
    log.info("imported %s: %d tensors, %s parameters", src_dir, len(entries), f"{_count(state):,}")
    return nnx.merge(graphdef, state)


def _count(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def _var_at(model: Qwen3, path: tuple[str, ...]) -> nnx.Variable:
    obj: Any = model
    for name in path:
        obj = getattr(obj, name)
    return obj


def export_hf(model: Qwen3, dst_dir: str, tokenizer_dir: Optional[str] = None, dtype: Optional[str] = None,
              max_shard_bytes: int = 4 << 30) -> list[str]:
    """Write ``model`` as an HF Qwen3ForCausalLM folder: safetensors (sharded above ``max_shard_bytes``),
    ``config.json`` and, when ``tokenizer_dir`` is given, its tokenizer files. Returns the safetensors file names."""
    cfg: ModelConfig = model.cfg
    np_dtype = np.dtype(to_dtype(dtype or cfg.param_dtype))
    entries = {e.hf_name: e for e in key_map(model)}
    specs = [(name, e.hf_shape, np_dtype) for name, e in entries.items()]
    current: dict[tuple, np.ndarray] = {}  # one stacked parameter on the host at a time

    def produce(name: str) -> np.ndarray:
        entry = entries[name]
        if entry.path not in current:
            current.clear()
            current[entry.path] = np.asarray(jax.device_get(_var_at(model, entry.path)[...]))
        ours = current[entry.path]
        ours = ours if entry.layer is None else ours[entry.layer]
        return entry.to_hf(ours).astype(np_dtype)

    os.makedirs(dst_dir, exist_ok=True)
    files = st.write_checkpoint(dst_dir, specs, produce, max_shard_bytes)
    with open(os.path.join(dst_dir, "config.json"), "w") as f:
        json.dump(to_hf_config(cfg, dtype or cfg.param_dtype), f, indent=2)
    if tokenizer_dir:
        copied = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, n))]
        if not copied:
            raise FileNotFoundError(f"{tokenizer_dir} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        for name in copied:
            shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(dst_dir, name))
    log.info("exported %d tensors to %s (%s)", len(specs), dst_dir, ", ".join(files))
    return files


def _resharded(new: jax.Array, old: jax.Array) -> jax.Array:
    if isinstance(old.sharding, NamedSharding):
        return jax.device_put(new, NamedSharding(old.sharding.mesh, old.sharding.spec))
    return new


def set_token_row(model: Qwen3, token_id: int, n_real_tokens: int, multiple: int = 128) -> Qwen3:
    """Make ``token_id`` a usable vocabulary entry: grow the embedding (and untied LM head) to a multiple of
    ``multiple`` rows when ``token_id`` is outside it, and set that token's row (and every added row) to the mean of
    rows ``[0, n_real_tokens)``. Updates ``model.cfg`` (vocab_size, emb_token_id); returns the model."""
    cfg = model.cfg
    if not 0 < n_real_tokens <= cfg.vocab_size:
        raise ValueError(f"set_token_row: n_real_tokens must be in [1, {cfg.vocab_size}], got {n_real_tokens}")
    if token_id < 0:
        raise ValueError(f"set_token_row: token_id must be >= 0, got {token_id}")
    vocab = cfg.vocab_size if token_id < cfg.vocab_size else -(-(token_id + 1) // multiple) * multiple

    def fix(table_vd: jax.Array) -> jax.Array:
        mean_d = jnp.mean(table_vd[:n_real_tokens].astype(jnp.float32), axis=0).astype(table_vd.dtype)
        grown = table_vd
        if vocab > table_vd.shape[0]:
            grown = jnp.concatenate([table_vd, jnp.broadcast_to(mean_d, (vocab - table_vd.shape[0], mean_d.size))])
        return _resharded(grown.at[token_id].set(mean_d), table_vd)

    model.embed_tokens = nnx.Param(fix(model.embed_tokens[...]), logical_axes=("vocab", "embed"))
    if model.lm_head is not None:
        model.lm_head = nnx.Param(fix(model.lm_head[...]), logical_axes=("vocab", "embed"))
    model.cfg = dataclasses.replace(cfg, vocab_size=vocab, emb_token_id=token_id)
    return model
