"""A model as the trainer and compile-check take it: graph definition, parameter initialiser, parameter shardings."""
from __future__ import annotations

from typing import Any, Callable

from flax import nnx
from jax.sharding import Mesh

from t1_jax.config import ExperimentConfig
from t1_jax.model.qwen3 import Qwen3, abstract_model
from t1_jax.model.sharding import param_shardings


def model_functions(cfg: ExperimentConfig, mesh: Mesh) -> tuple[Any, Callable, Any]:
    """(graphdef, init_params(rng) -> params, param shardings) for ``cfg.model``."""
    abstract = abstract_model(cfg.model)
    graphdef, abstract_params = nnx.split(abstract)

    def init_params(rng):
        return nnx.split(Qwen3(cfg.model, rngs=nnx.Rngs(params=rng)))[1]

    return graphdef, init_params, param_shardings(abstract_params, mesh)
