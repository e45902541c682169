"""Per-topology mesh/batch layouts for the pod experiments, selected by ``T1_TOPOLOGY`` (pure Python, no JAX).

An experiment file (``experiments/t1_4b_*.py``) keeps a table ``{accelerator type: PodLayout}`` and calls
:func:`apply_layout` in ``get_config``. The topology is, in order: the ``topology`` argument, ``$T1_TOPOLOGY``,
``$TPU_ACCELERATOR_TYPE`` (set on every Cloud TPU VM, so a pod run picks its own row), or the file's default.
Names are normalised through :func:`t1_jax.tpu.parse_topology` (``v5e-16`` and ``v5litepod-16`` are one row).
``--set`` overrides on the command line are applied after the layout, so any value of a row can still be changed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Mapping, Optional

from t1_jax import config as config_lib
from t1_jax.config import ConfigError, ExperimentConfig

TOPOLOGY_ENV = "T1_TOPOLOGY"
TPU_ENV = "TPU_ACCELERATOR_TYPE"


@dataclasses.dataclass(frozen=True)
class PodLayout:
    """One row of a layout table: the mesh and the batch that fit one slice (all our choices)."""

    data: int
    fsdp: int
    tensor: int
    global_batch_size: int
    grad_accum_steps: int = 1
    gradcache_chunk: int = 0
    extra: tuple[tuple[str, str], ...] = ()  # further dotted overrides, e.g. (("retrieval.encode_batch_size", "64"),)

    def overrides(self) -> list[str]:
        return [f"mesh.data={self.data}", f"mesh.fsdp={self.fsdp}", f"mesh.tensor={self.tensor}",
                f"data.global_batch_size={self.global_batch_size}",
                f"optimizer.grad_accum_steps={self.grad_accum_steps}",
                f"loss.gradcache_chunk={self.gradcache_chunk}"] + [f"{k}={v}" for k, v in self.extra]


@contextlib.contextmanager
def topology_selected(accelerator_type: str) -> Iterator[None]:
    """``$T1_TOPOLOGY`` set to ``accelerator_type`` while a config loads (its layout row), then put back."""
    previous = os.environ.get(TOPOLOGY_ENV)
    os.environ[TOPOLOGY_ENV] = accelerator_type
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TOPOLOGY_ENV, None)
        else:
            os.environ[TOPOLOGY_ENV] = previous


def canonical_topology(name: str) -> str:
    """``v5e-16`` -> ``v5litepod-16``; ``v5p:2x2x1`` -> ``v5p-8`` (gcloud's accelerator-type spelling)."""
    from t1_jax.tpu import parse_topology

    return parse_topology(name).accelerator_type


def selected_topology(default: str, topology: Optional[str] = None) -> str:
    return canonical_topology(topology or os.environ.get(TOPOLOGY_ENV) or os.environ.get(TPU_ENV) or default)


def apply_layout(cfg: ExperimentConfig, table: Mapping[str, PodLayout], default: str,
                 topology: Optional[str] = None) -> ExperimentConfig:
    """``cfg`` with the row of the selected topology applied (see the module docstring); ConfigError for a slice
    the table has no row for."""
    rows = {canonical_topology(k): v for k, v in table.items()}
    chosen = selected_topology(default, topology)
    if chosen not in rows:
        raise ConfigError(f"{cfg.name}: no mesh/batch layout for {chosen}; known: {', '.join(rows)}. Set "
                          f"{TOPOLOGY_ENV} to one of them, or give mesh.* and data.global_batch_size with --set")
    cfg = config_lib.apply_overrides(cfg, rows[chosen].overrides())
    return dataclasses.replace(cfg, name=f"{cfg.name}@{chosen}")


def sibling_experiment(this_file: str, name: str):
    """The experiment module ``name`` (``experiments/<name>.py``) next to ``this_file``: a variant experiment starts
    from its base's ``base_config()`` and keeps its own layout table."""
    import importlib.util
    import pathlib

    path = pathlib.Path(this_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"t1_experiment_base_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
