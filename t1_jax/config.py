"""Experiment configuration: frozen dataclasses, loading, dotted overrides, validation, JSON round trip.

An experiment is a Python file exposing ``get_config() -> ExperimentConfig`` (see ``experiments/``), or the
``config.json`` a previous run wrote into its workdir. Command lines refine it with dotted overrides
(``optimizer.lr=1e-5 mesh.fsdp=8``); every value is converted to the field's declared type and the whole config is
validated before anything is compiled. Every default that is a modelling choice (the T1 report publishes none) is
documented in ``docs/design-choices.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import json
import os
import traceback
import types
import typing
from typing import Any, Optional

from t1_jax.config_sections import (  # the sections, re-exported: import them from here
    ConfigError,
    ModelConfig,
    MeshConfig,
    TextConfig,
    DataConfig,
    OptimizerConfig,
    ContrastiveConfig,
    SamplingConfig,
    GRPOConfig,
    TrainerConfig,
    RetrievalConfig,
    EvalConfig,
    ExperimentConfig,
)
from t1_jax.config_sections_inference import GRPO_ADVANTAGES, GRPO_AGGREGATIONS, GRPO_REWARDS  # re-exported too

__all__ = ["ConfigError", "ContrastiveConfig", "DataConfig", "EvalConfig", "ExperimentConfig", "GRPOConfig",
           "GRPO_ADVANTAGES", "GRPO_AGGREGATIONS", "GRPO_REWARDS", "MeshConfig", "ModelConfig", "OptimizerConfig",
           "RetrievalConfig", "SamplingConfig", "TextConfig", "TrainerConfig", "all_keys", "apply_overrides", "dtype",
           "from_dict", "load_config", "override", "save_json", "to_dict", "validate"]

# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------


def validate(cfg: ExperimentConfig, device_count: Optional[int] = None, training: bool = False) -> ExperimentConfig:
    """Raise ConfigError (all problems, one per line) or return ``cfg``; checks the mesh against ``device_count``.

    ``training``: the config is about to train (``t1 train``, ``t1 compile-check``), so its master weights must be
    able to hold the optimizer's updates (``t1_jax.precision_policy``)."""
    from t1_jax.precision_policy import master_weight_problems

    errors: list[str] = []
    for field in dataclasses.fields(cfg):
        section = getattr(cfg, field.name)
        if dataclasses.is_dataclass(section):
            errors.extend(section.validate())
    if training:
        errors.extend(master_weight_problems(cfg.model.param_dtype, cfg.optimizer.lr))
    from t1_jax.stages.registry import STAGES

    stage = STAGES.get(cfg.trainer.stage)
    if stage and stage.no_grad_accumulation and cfg.optimizer.grad_accum_steps > 1:  # docs/training.md, Stage 3
        errors.append(f"optimizer.grad_accum_steps={cfg.optimizer.grad_accum_steps} is not supported by "
                      f"trainer.stage={stage.name} ({stage.no_grad_accumulation}): set it to 1; for less memory lower "
                      f"data.global_batch_size, grpo.group_size or grpo.logprob_chunk_size")
    if device_count is not None and not cfg.mesh.validate():
        try:
            cfg.mesh.resolve(device_count)
        except ConfigError as e:
            errors.append(str(e))
    if cfg.data.global_batch_size > 0 and device_count is not None and not errors:
        data, fsdp, _ = cfg.mesh.resolve(device_count)
        if cfg.data.global_batch_size % (data * fsdp):
            errors.append(f"data.global_batch_size {cfg.data.global_batch_size} is not divisible by the batch "
                          f"shards data x fsdp = {data * fsdp}")
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Dotted keys, overrides and type conversion
# --------------------------------------------------------------------------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config, e.g. ``optimizer.lr``."""
    keys = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            keys.extend(all_keys(value, f"{prefix}{field.name}."))
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def _unknown_key(key: str, cfg: Any) -> ConfigError:
    candidates = all_keys(cfg)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:  # e.g. "lr" alone: match on the last component
        tails = {k.rsplit(".", 1)[-1]: k for k in candidates}
        tail_match = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.6)
        close = [tails[tail_match[0]]] if tail_match else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a string (from the command line) or a JSON value to the declared type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(("[", "(")):
                try:
                    value = json.loads(text.replace("(", "[").replace(")", "]"))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{key}: cannot parse {value!r} as a list ({e.msg})") from None
            else:
                value = [v for v in text.split(",") if v.strip()] if text else []
                if args and typing.get_origin(args[0]) is tuple:  # pairs written as name:weight
                    value = [v.split(":") for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
        return tuple(_convert(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def override(cfg: Any, key: str, value: Any, _prefix: str = "", _root: Any = None) -> Any:
    """Return a copy of ``cfg`` with dotted ``key`` set to ``value`` (converted to the field's type)."""
    root = cfg if _root is None else _root
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        raise _unknown_key(_prefix + key, root)
    current = getattr(cfg, head)
    if dataclasses.is_dataclass(current):
        if not rest:
            raise ConfigError(f"{_prefix + key} is a section; set one of its keys, e.g. "
                              f"{_prefix + key}.{dataclasses.fields(current)[0].name}")
        return dataclasses.replace(cfg, **{head: override(current, rest, value, f"{_prefix}{head}.", root)})
    if rest:
        raise _unknown_key(_prefix + key, root)
    return dataclasses.replace(cfg, **{head: _convert(value, _hints(type(cfg))[head], _prefix + key)})


def apply_overrides(cfg: ExperimentConfig, assignments: list[str]) -> ExperimentConfig:
    """Apply ``key=value`` strings in order."""
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optimizer.lr=1e-5)")
        cfg = override(cfg, key.strip(), value.strip())
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Serialisation and loading
# --------------------------------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(data: dict[str, Any], cls: type = ExperimentConfig, _prefix: str = "") -> Any:
    """Inverse of :func:`to_dict`; unknown keys are refused with the closest valid one."""
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(_prefix + key, cls())
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{_prefix + key}: expected a section (object), got {value!r}")
            kwargs[key] = from_dict(value, tp, f"{_prefix}{key}.")
        else:
            kwargs[key] = _convert(value, tp, _prefix + key)
    return cls(**kwargs)


def save_json(cfg: ExperimentConfig, path: str) -> None:
    """Write the resolved config (local or gs://), atomically."""
    from t1_jax import fs

    fs.write_text(path, json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_config(path: str, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Load an experiment (``.py`` with ``get_config()``, or a resolved ``config.json``, local or gs://) and apply
    overrides."""
    from t1_jax import fs

    if not fs.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    if path.endswith(".json"):
        with fs.open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a resolved config is a JSON object of sections, got a {type(data).__name__}")
        cfg = from_dict(data)
    elif path.endswith(".py"):
        with fs.local_copy(path) as local_path:
            spec = importlib.util.spec_from_file_location(f"t1_experiment_{abs(hash(path))}", local_path)
            module = importlib.util.module_from_spec(spec)
            with _config_code_errors(path, local_path):
                spec.loader.exec_module(module)
                if not hasattr(module, "get_config"):
                    raise ConfigError(f"{path} does not define get_config()")
                cfg = module.get_config()
        if not isinstance(cfg, ExperimentConfig):
            raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected ExperimentConfig")
        try:  # the dataclasses do not check types: a wrong-typed field would fail deep inside training
            cfg = from_dict(to_dict(cfg))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except TypeError as e:  # a value JSON cannot hold (an object where a number or string belongs)
            raise ConfigError(f"{path}: get_config() holds a value that is not a number, string or list: {e}") from None
    else:
        raise ConfigError(f"config file {path} must be an experiment .py or a resolved config .json")
    return apply_overrides(cfg, list(overrides or []))


@contextlib.contextmanager
def _config_code_errors(path: str, local_path: str):
    """An exception raised by an experiment file's own code becomes one line naming the file and line."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any error in user code
        frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) ==
                  os.path.abspath(local_path)]
        where = f"{path}:{frames[-1].lineno}" if frames else path
        raise ConfigError(f"{where}: the experiment file raised {type(e).__name__}: {e}") from None


def dtype(name: str):
    """The jax.numpy dtype for a config dtype name."""
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
