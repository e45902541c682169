"""Hugging Face Qwen3 checkpoints <-> our stacked NNX parameters.

Import streams the safetensors files tensor by tensor: each parameter is assembled, one layer at a time and already in
its final dtype, into host buffers holding exactly the shards this process's devices need, then placed on its final
``NamedSharding``. The host never holds more than the model plus one stacked parameter (and never a float32 copy of a
bf16 checkpoint). Every key is mapped, every shape checked; problems are reported all at once with key names and both
shapes. Export writes safetensors (+ ``config.json``, + tokenizer files) that ``transformers`` loads.
"""
from __future__ import annotations

import dataclasses
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
from t1_jax.model.qwen3 import LAYER_AXES, Qwen3, abstract_model
from t1_jax.model.sharding import logical_axes_of

log = logging.getLogger(__name__)

# our parameter -> (HF key, number of leading "input" dims in our layout; None = same layout).
# An HF linear weight is [out, in]; ours is [*in_dims, *out_dims] (heads kept as their own axes).
_LAYER_KEYS: dict[str, tuple[str, Optional[int]]] = {
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", None),
    "q_proj": ("model.layers.{i}.self_attn.q_proj.weight", 1),
    "k_proj": ("model.layers.{i}.self_attn.k_proj.weight", 1),
    "v_proj": ("model.layers.{i}.self_attn.v_proj.weight", 1),
    "q_norm": ("model.layers.{i}.self_attn.q_norm.weight", None),
    "k_norm": ("model.layers.{i}.self_attn.k_norm.weight", None),
    "o_proj": ("model.layers.{i}.self_attn.o_proj.weight", 2),
    "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", None),
    "gate_proj": ("model.layers.{i}.mlp.gate_proj.weight", 1),
    "up_proj": ("model.layers.{i}.mlp.up_proj.weight", 1),
    "down_proj": ("model.layers.{i}.mlp.down_proj.weight", 1),
}
_TOP_KEYS: dict[str, tuple[str, Optional[int]]] = {
    "embed_tokens": ("model.embed_tokens.weight", None),
    "final_norm": ("model.norm.weight", None),
    "lm_head": ("lm_head.weight", 1),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: where it lives in our state and how its layout differs."""

    hf_name: str
    path: tuple[str, ...]  # path in nnx.state(model)
    layer: Optional[int]  # index into the stacked layer axis, or None
    n_in: Optional[int]
    ours_shape: tuple[int, ...]  # this tensor's shape in our layout (one layer)

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.n_in is None:
            return self.ours_shape
        return (math.prod(self.ours_shape[self.n_in:]), math.prod(self.ours_shape[:self.n_in]))

    def to_ours(self, hf_array: np.ndarray) -> np.ndarray:
        return hf_array if self.n_in is None else hf_array.T.reshape(self.ours_shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.n_in is None:
            return ours
        return ours.reshape(math.prod(self.ours_shape[:self.n_in]), -1).T


def key_map(model: Qwen3) -> list[Entry]:
    """Every HF tensor of ``model``'s architecture, in (parameter, layer) order."""
    cfg = model.cfg
    entries = []
    for name, (hf_name, n_in) in _TOP_KEYS.items():
        var = getattr(model, name)
        if var is not None:
            entries.append(Entry(hf_name, (name,), None, n_in, tuple(var.shape)))
    for name, (template, n_in) in _LAYER_KEYS.items():
        shape = tuple(getattr(model.layers, name).shape[1:])
        for i in range(cfg.num_layers):
            entries.append(Entry(template.format(i=i), ("layers", name), i, n_in, shape))
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


def _slice_key(index: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _place(shape, np_dtype, sharding, entries: list[Entry], infos) -> jax.Array:
    """Assemble one (possibly stacked) parameter into per-shard host buffers, layer by layer, and place it."""
    index_map = sharding.addressable_devices_indices_map(shape)
    buffers: dict[tuple, tuple[tuple, np.ndarray]] = {}
    for index in index_map.values():
        key = _slice_key(index, shape)
        if key not in buffers:
            buffers[key] = (index, np.empty([b - a for a, b in key], np_dtype))
    stacked = entries[0].layer is not None
    for entry in entries:
        tensor = entry.to_ours(st.read_tensor(infos[entry.hf_name])).astype(np_dtype, copy=False)
        for key, (index, buf) in buffers.items():
            if not stacked:
                buf[...] = tensor[index]
            elif key[0][0] <= entry.layer < key[0][1]:
                buf[entry.layer - key[0][0]] = tensor[index[1:]]
        del tensor
    arrays = [jax.device_put(buffers[_slice_key(index, shape)][1], device) for device, index in index_map.items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


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
    np_dtype = np.dtype(to_dtype(cfg.param_dtype))
    for path, var in nnx.to_flat_state(state):
        path = tuple(str(p) for p in path)
        if path not in by_path:
            raise ValueError(f"internal: parameter {'/'.join(path)} has no HF key mapping")
        sharding = (logical_sharding(mesh, logical_axes_of(var), rules) if mesh is not None
                    else SingleDeviceSharding(jax.devices()[0]))
        var.set_value(_place(tuple(var.shape), np_dtype, sharding, by_path[path], infos))
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

    def fix(table: jax.Array, axis: int) -> jax.Array:
        moved = jnp.moveaxis(table, axis, 0)
        mean = jnp.mean(moved[:n_real_tokens].astype(jnp.float32), axis=0).astype(table.dtype)
        if vocab > moved.shape[0]:
            extra = jnp.broadcast_to(mean, (vocab - moved.shape[0], *mean.shape))
            moved = jnp.concatenate([moved, extra], axis=0)
        moved = moved.at[token_id].set(mean)
        return _resharded(jnp.moveaxis(moved, 0, axis), table)

    model.embed_tokens = nnx.Param(fix(model.embed_tokens[...], 0), logical_axes=("vocab", "embed"))
    if model.lm_head is not None:
        model.lm_head = nnx.Param(fix(model.lm_head[...], 1), logical_axes=("embed", "vocab"))
    model.cfg = dataclasses.replace(cfg, vocab_size=vocab, emb_token_id=token_id)
    return model
