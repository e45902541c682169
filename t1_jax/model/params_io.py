"""Save/load a Qwen3 as an orbax checkpoint of its parameters plus the ModelConfig as ``model_config.json``.

``directory`` may be local or gs:// (``t1_jax.fs``; orbax writes the arrays itself).

Layout of ``directory``: ``model_config.json`` and ``params/`` (an orbax StandardCheckpointer tree whose keys are
the paths of ``nnx.state(model)``, e.g. ``layers/q_proj``). Loading restores each array directly onto its sharding.
"""
from __future__ import annotations

import json
from typing import Optional

import jax
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from t1_jax import fs
from t1_jax.config import ConfigError, ModelConfig, from_dict, to_dict
from t1_jax.mesh import LOGICAL_RULES, Rules
from t1_jax.model.qwen3 import Qwen3, abstract_model
from t1_jax.model.sharding import param_shardings

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
MODEL_SUBDIR = "model"  # where a finished stage leaves its parameters (the next stage's trainer.init_from)


def model_dir(path: str) -> str:
    """``init_from`` may name a saved model folder or a previous stage's workdir (its ``model/``)."""
    candidate = fs.join(path, MODEL_SUBDIR)
    return candidate if fs.isdir(candidate) else path


def save_model(directory: str, model: Qwen3, force: bool = True) -> None:
    """Write ``model``'s parameters (orbax) and config; blocks until written."""
    import orbax.checkpoint as ocp

    directory = fs.absolute(directory)
    fs.makedirs(directory)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(fs.join(directory, PARAMS_DIR), state, force=force)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        fs.write_text(fs.join(directory, CONFIG_FILE), json.dumps(to_dict(model.cfg), indent=2, sort_keys=True))


def load_model_config(directory: str) -> ModelConfig:
    """The ModelConfig of a saved model folder (its ``model_config.json``)."""
    path = fs.join(directory, CONFIG_FILE)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{directory} is not a saved model: {CONFIG_FILE} is missing")
    try:
        data = json.loads(fs.read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return from_dict(data, ModelConfig)


def load_model(directory: str, mesh: Optional[Mesh] = None, rules: Rules = LOGICAL_RULES,
               cfg_overrides: Optional[dict] = None) -> Qwen3:
    """Restore a model saved by :func:`save_model` (or ``t1 convert hf-to-t1``), each parameter placed on its
    logical sharding over ``mesh`` (first device when None). ``cfg_overrides`` may change non-shape fields
    (``remat``, ``compute_dtype``, ``scan_layers``; ``param_dtype`` casts on restore)."""
    import dataclasses

    import orbax.checkpoint as ocp

    cfg = load_model_config(directory)
    if cfg_overrides:
        cfg = dataclasses.replace(cfg, **cfg_overrides)
    graphdef, state = nnx.split(abstract_model(cfg))
    if mesh is not None:
        shardings = param_shardings(state, mesh, rules)
    else:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), state)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    restored = ocp.StandardCheckpointer().restore(fs.join(fs.absolute(directory), PARAMS_DIR),
                                                  nnx.to_pure_dict(target))
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)
