"""Device mesh and logical-axis rules (joining a multi-host run: ``t1_jax.distributed``).

Tensors are annotated with *logical* axis names (``batch``, ``embed``, ``heads`` ...). One table, ``LOGICAL_RULES``,
maps each logical name to mesh axes of the mesh ``(data, fsdp, tensor)``; the model, the trainers and the retrieval
code all resolve shardings through it, so re-sharding a run means editing one table (or passing another).

Resolution drops a mesh axis that an earlier dimension of the same tensor already uses, so activations such as
``(batch, length, embed)`` come out as ``P(('data', 'fsdp'), None, None)`` while the parameter ``(vocab, embed)`` is
``P('tensor', 'fsdp')``.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Iterator, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t1_jax.config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the axes a batch is split over (and that contrastive negatives are gathered over)

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = tuple[tuple[str, MeshAxes], ...]

# logical name -> mesh axes. Parameters shard their "embed" dimension over fsdp (ZeRO-3 style) and their
# heads/mlp/vocab dimensions over tensor (Megatron style); activations shard batch over data x fsdp.
LOGICAL_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("pool", None),
)


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Build the ``(data, fsdp, tensor)`` mesh; -1 takes the remaining devices. Raises ConfigError when it does not fit."""
    devices = list(jax.devices() if devices is None else devices)
    problems = cfg.validate()
    if problems:
        raise ConfigError("; ".join(problems))
    shape = cfg.resolve(len(devices))
    try:
        from jax.experimental import mesh_utils

        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):  # e.g. topologies mesh_utils cannot tile
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical_axes: Sequence[Optional[str]], rules: Rules = LOGICAL_RULES) -> PartitionSpec:
    """PartitionSpec for a tensor whose dimensions carry ``logical_axes`` (None = replicated dimension)."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        mesh_axes = tuple(a for a in _as_tuple(table[name]) if a not in used)
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[Optional[str]], rules: Rules = LOGICAL_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


# The mesh and rules that ``constrain`` uses inside traced code. Set with ``use_mesh``; unset means "no constraint",
# which is the single-device path (tests compare it with the sharded path).
_ACTIVE: contextvars.ContextVar[Optional[tuple[Mesh, Rules]]] = contextvars.ContextVar("t1_active_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Optional[Mesh], rules: Rules = LOGICAL_RULES) -> Iterator[Optional[Mesh]]:
    """Activate ``mesh`` + ``rules`` for :func:`constrain` while tracing (``None`` disables constraints)."""
    token = _ACTIVE.set(None if mesh is None else (mesh, rules))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> Optional[Mesh]:
    active = _ACTIVE.get()
    return None if active is None else active[0]


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """``with_sharding_constraint`` through the logical rules of the active mesh; identity when none is active."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    if x.ndim != len(logical_axes):
        raise ValueError(f"constrain: array of rank {x.ndim} given {len(logical_axes)} logical axes {logical_axes}")
    return jax.lax.with_sharding_constraint(x, logical_sharding(mesh, logical_axes, rules))


def batch_shard_count(mesh: Mesh) -> int:
    """How many ways a batch is split (data x fsdp)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def process_batch_rows(mesh: Mesh, global_batch: int) -> list[int]:
    """Rows of a global batch (sharded over the batch axes) held by this process's devices, in increasing order: what
    this host must feed ``jax.make_array_from_process_local_data`` so the global array is the global batch."""
    sharding = logical_sharding(mesh, ("batch",))
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(*index[0].indices(global_batch)))
    return sorted(rows)
