"""Parameter shardings from the ``logical_axes`` metadata every ``nnx.Param`` of the model carries."""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from t1_jax.mesh import LOGICAL_RULES, Rules, logical_sharding


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def logical_axes_of(var: nnx.Variable) -> tuple:
    axes = getattr(var, "logical_axes", None)
    if axes is None:
        raise ValueError(f"parameter {var!r} carries no logical_axes metadata")
    return tuple(axes)


def param_shardings(model_or_state: Any, mesh: Mesh, rules: Rules = LOGICAL_RULES) -> Any:
    """A pytree shaped like ``nnx.state(model)`` (or the given state) with a NamedSharding per parameter.

    Usable as ``jax.jit`` ``in_shardings``/``out_shardings`` for the state of ``nnx.split(model)``.
    """
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state

    def one(var):
        if not _is_var(var):
            return NamedSharding(mesh, jax.sharding.PartitionSpec())
        return var.replace(logical_sharding(mesh, logical_axes_of(var), rules))

    return jax.tree.map(one, state, is_leaf=_is_var)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = LOGICAL_RULES) -> nnx.Module:
    """Place every parameter of ``model`` on its NamedSharding (in place); returns the model."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
    return model
