"""The stage registry: one :class:`StageSpec` per ``trainer.stage``, the one list every part derives from.

Config validation (the known stage names, what a stage refuses), ``t1 train`` (how to build the stage's
:class:`t1_jax.trainer.TrainStage`), the data collator and the trainer (the stage's batch spec: keys, shapes, dtypes,
logical axes; :mod:`t1_jax.data.batch_spec`) and ``t1 compile-check`` (the programs it compiles) all read it.

Pure Python: the heavy parts are named ``"module:function"`` and imported when used, so validating a config never
imports JAX. Adding a stage: a module under ``t1_jax/stages/`` with its builder (and, if it is checked for TPU
slices, its programs), one ``StageSpec`` below, and its config section (docs/architecture.md, Adding a stage).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Optional

from t1_jax.config_sections import ConfigError
from t1_jax.data.batch_spec import QUERY_KINDS, BatchSpec, logical_axes


def resolve(ref: str) -> Callable:
    """The function a ``"module:function"`` reference names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    name: str  # the trainer.stage value
    title: str  # in logs and the finished-model message
    query_kind: str  # the query format of its batches (t1_jax.data.batch_spec.QUERY_KINDS): carries reasoning?
    build: str  # (cfg, mesh, formatter) -> TrainStage
    programs: str  # (cfg, mesh) -> list[t1_jax.compile_check.Program]: what `t1 compile-check` compiles
    # (cfg, query_kind, rows=None, lengths=None) -> BatchSpec; lengths: per sequence kind, default the longest padded
    batch: str = "t1_jax.data.batch_spec:contrastive_batch_spec"
    no_grad_accumulation: str = ""  # why optimizer.grad_accum_steps > 1 cannot apply (empty: it can)

    @property
    def with_reasoning(self) -> bool:
        """Whether its queries carry reasoning (stage 2: teacher traces the loss trains on)."""
        return QUERY_KINDS[self.query_kind][0]

    def batch_spec(self, cfg, rows: Optional[int] = None) -> BatchSpec:
        """``{key: (shape, dtype, logical axes)}`` of its global batch (or of ``rows`` rows) at the longest lengths."""
        return resolve(self.batch)(cfg, self.query_kind, rows)

    def batch_axes(self, cfg) -> dict[str, tuple]:
        """The logical axes of each batch key (the trainer's batch shardings). Lengths play no part, so none are
        computed: data.length_buckets need only hold the data's real lengths, not the budgets' maximum."""
        return logical_axes(resolve(self.batch)(cfg, self.query_kind, 1, (1, 1)))

    def build_stage(self, cfg, mesh, formatter) -> Any:
        return resolve(self.build)(cfg, mesh, formatter)

    def compile_programs(self, cfg, mesh) -> list:
        return resolve(self.programs)(cfg, mesh)


STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("contrastive", "stage 1 (contrastive)", "query_direct", build="t1_jax.stages.contrastive:build_stage",
              programs="t1_jax.compile_check:contrastive_programs"),
    StageSpec("reasoning", "stage 2 (reasoning)", "query_with_reasoning", build="t1_jax.stages.contrastive:build_stage",
              programs="t1_jax.compile_check:contrastive_programs"),
    StageSpec("grpo", "stage 3 (grpo)", "query_prompt", build="t1_jax.stages.grpo:build_stage",
              programs="t1_jax.compile_check:grpo_programs",
              no_grad_accumulation="a step samples, scores against its whole batch's documents and updates at once"),
)}


def stage_spec(name: str) -> StageSpec:
    if name not in STAGES:
        raise ConfigError(f"trainer.stage must be one of {', '.join(STAGES)}; got {name!r}")
    return STAGES[name]
