"""Prove that a stage fits a TPU slice without a TPU: compile its real jitted step for the slice on a CPU host.

``check(cfg, topology)`` builds the ``(data, fsdp, tensor)`` mesh of ``cfg.mesh`` over compile-only devices of the
slice (libtpu, :func:`t1_jax.tpu.topology_mesh`), builds the stage's programs exactly as the trainer does
(:func:`t1_jax.trainer.init_state_fn` -> state shardings from the compiled init, :func:`t1_jax.trainer.jit_train_step`
with the stage's loss) and lowers + compiles them with abstract inputs: ``jax.ShapeDtypeStruct`` leaves carrying the
real NamedShardings (parameters from the logical rules, batch keys over the batch axes) at the configured padded
lengths. No tokenizer or data is read: the vocabulary and ``<embtoken>`` id come from the model config (a placeholder
id when unset; it does not change any shape).

Per program it reports XLA's per-chip memory against the chip's HBM (:func:`t1_jax.tpu.compile_report`), the analytic
FLOPs of one step (:func:`t1_jax.model.counts.decoder_flops`, attention and remat recompute included) and the
roofline lower bound on step time with the tokens/s it implies. A stage's programs are named by its entry in the stage
registry (:mod:`t1_jax.stages.registry`, ``StageSpec.programs``; generation's are in ``PROGRAMS``): stages 1 and 2
compile the train step; stage 3 the whole GRPO step (rollout included) and the rollout sampler alone, built by
``t1_jax.stages.grpo.grpo_step_fn`` / ``grpo_sample_fn``. Each stage's abstract batch is its batch spec
(:mod:`t1_jax.data.batch_spec`).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from typing import Any, Callable, Optional, Sequence

from t1_jax.config import ConfigError, ExperimentConfig
from t1_jax.model.counts import FlopCount
from t1_jax.tpu import MemoryReport, TopologySpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Program:
    """One program to compile: ``fn`` is jitted; ``args`` are abstract (ShapeDtypeStruct pytrees with shardings)."""

    name: str
    fn: Any
    args: tuple
    flops: FlopCount  # analytic, whole step over all chips
    tokens: int  # tokens processed per step (for tokens/s)
    description: str = ""  # batch and lengths, one line
    # temp bytes -> per-chip bytes by role (t1_jax.chip_memory); None = no breakdown
    breakdown: Optional[Callable[[Optional[int]], dict[str, int]]] = None
    detail: Optional[Callable[[TopologySpec], Any]] = None  # -> more bounds with format()/to_dict() (decode roofline)


@dataclasses.dataclass(frozen=True)
class ProgramResult:
    name: str
    memory: MemoryReport
    flops: FlopCount
    tokens: int
    roofline_seconds: float
    description: str
    breakdown: Optional[dict[str, int]] = None
    detail: Any = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.roofline_seconds if self.roofline_seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "memory": self.memory.to_dict(),
                "flops": {**dataclasses.asdict(self.flops), "total": self.flops.total}, "tokens": self.tokens,
                "roofline_seconds": self.roofline_seconds, "tokens_per_second": self.tokens_per_second,
                "breakdown_bytes": self.breakdown, "detail": self.detail.to_dict() if self.detail else None}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    config: str
    stage: str
    topology: TopologySpec
    mesh_shape: dict[str, int]
    programs: tuple[ProgramResult, ...]
    wall_seconds: float  # the whole check: building, lowering and compiling every program

    @property
    def fits(self) -> bool:
        return all(p.memory.fits is not False for p in self.programs)

    @property
    def overflow_gib(self) -> float:
        return max((p.memory.overflow_gib for p in self.programs), default=0.0)

    def format(self) -> str:
        from t1_jax.chip_memory import format_breakdown
        from t1_jax.tpu import format_step_estimate

        mesh = "x".join(str(self.mesh_shape[a]) for a in ("data", "fsdp", "tensor"))
        lines = [f"compile check: {self.config} (stage {self.stage}) on {self.topology.accelerator_type} "
                 f"({self.topology.chips} x {self.topology.chip.name} chips, {self.topology.topology}), mesh "
                 f"data x fsdp x tensor = {mesh}"]
        for p in self.programs:
            lines += ["", f"[{p.name}] {p.description}", p.memory.format()]
            if p.breakdown:
                lines.append(format_breakdown(p.breakdown))
            lines += [format_step_estimate(p.flops, self.topology, p.tokens)] + ([p.detail.format()] if p.detail else [])
            lines.append(f"compile time {p.memory.compile_seconds:.1f} s")
        verdict = "fits" if self.fits else f"DOES NOT FIT (over by {self.overflow_gib:.3f} GiB per chip)"
        lines += ["", f"result: {verdict}; wall time {self.wall_seconds:.1f} s"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "stage": self.stage, "topology": self.topology.accelerator_type,
                "chips": self.topology.chips, "chip": self.topology.chip.name, "mesh": self.mesh_shape,
                "fits": self.fits, "overflow_gib": self.overflow_gib, "wall_seconds": self.wall_seconds,
                "programs": [p.to_dict() for p in self.programs]}


# --------------------------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------------------------


def with_placeholder_tokens(cfg: ExperimentConfig) -> ExperimentConfig:
    """Give the model an ``<embtoken>`` id when the config has none (no tokenizer is read; shapes do not change)."""
    if cfg.model.emb_token_id is not None:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, emb_token_id=cfg.model.vocab_size - 1))


def _sum_flops(*counts: FlopCount) -> FlopCount:
    return FlopCount(*(sum(getattr(c, f.name) for c in counts) for f in dataclasses.fields(FlopCount)))


def contrastive_flops(cfg: ExperimentConfig, query_kind: str) -> FlopCount:
    """Analytic FLOPs of one stage-1/2 step over the whole global batch (our accounting; see docs/tpu.md).

    Queries and documents are counted at their own padded lengths. Stage 2's cross-entropy computes logits at every
    query position (in ``loss.ce_chunk_size`` chunks, rematerialised: one extra forward of the LM head). GradCache
    (``loss.gradcache_chunk``) re-runs each chunk's whole forward during the backward pass: one extra forward.
    """
    from t1_jax.data.batch_spec import QUERY_KINDS, padded_lengths
    from t1_jax.model.counts import decoder_flops
    from t1_jax.model.splash import attention_fraction

    with_reasoning = QUERY_KINDS[query_kind][0]
    m = cfg.model
    b = cfg.data.global_batch_size
    n = b * (1 + cfg.data.num_hard_negatives)
    tq, td = padded_lengths(cfg, query_kind)
    lm_rows = 0
    if with_reasoning:
        chunk = min(cfg.loss.ce_chunk_size, tq - 1)
        lm_rows = b * (-(-(tq - 1) // chunk) * chunk)
    fq, fd = attention_fraction(m, tq), attention_fraction(m, td)
    parts = [decoder_flops(m, tokens=b * tq, seq_len=tq, lm_head_tokens=lm_rows, attention_fraction=fq),
             decoder_flops(m, tokens=n * td, seq_len=td, attention_fraction=fd)]
    extra = 0.0
    if with_reasoning:
        extra += 2.0 * m.hidden_size * m.vocab_size * lm_rows  # the CE scan body's rematerialised logits
    if cfg.loss.gradcache_chunk:
        forward = _sum_flops(decoder_flops(m, b * tq, tq, training=False, lm_head_tokens=lm_rows,
                                           attention_fraction=fq),
                             decoder_flops(m, n * td, td, training=False, attention_fraction=fd))
        extra += forward.total
    total = _sum_flops(*parts)
    return dataclasses.replace(total, recompute=total.recompute + extra)


# --------------------------------------------------------------------------------------------------------------------
# Programs per stage
# --------------------------------------------------------------------------------------------------------------------


def replicated(mesh):
    import jax

    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def state_shardings_of(stage, tx, mesh, rng) -> Any:
    """The TrainState shardings the trainer gets from compiling its initialiser (``Trainer.fit``), without compiling
    the random initialisation of billions of parameters: the initialiser pins the parameters to
    ``stage.param_shardings`` and the optimizer state is built by ``init_opt_state`` from them, so the check compiles
    just that on parameters carrying those shardings; step and rng are replicated scalars.
    (``tests/test_compile_check.py`` checks this equals the full initialiser's output shardings.)"""
    import jax

    from t1_jax.trainer import TrainState, init_opt_state, init_state_fn

    start = time.perf_counter()
    shapes = jax.eval_shape(init_state_fn(stage, tx), rng)
    params = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes.params,
                                    stage.param_shardings)
    def opt_and_extra(p):
        return init_opt_state(tx, p, stage.param_shardings), (stage.init_extra(p) if stage.init_extra else None)

    opt_shardings, extra_shardings = jax.jit(opt_and_extra).lower(params).compile().output_shardings
    # Leaves that depend on no input (AdamW's step count) come back on one device; in the trainer they are replicated.
    opt_shardings = jax.tree_util.tree_map(lambda sh: sh if len(sh.device_set) == mesh.size else replicated(mesh),
                                           opt_shardings)
    log.info("state shardings from tx.init in %.1f s", time.perf_counter() - start)
    return TrainState(step=replicated(mesh), params=stage.param_shardings, opt_state=opt_shardings,
                      rng=replicated(mesh), extra=extra_shardings)


def train_step_program(cfg: ExperimentConfig, mesh, stage, batch_spec, flops: FlopCount, tokens: int,
                       description: str, frozen: Any = None) -> Program:
    """The trainer's jitted step for ``stage`` (a TrainStage without data) with abstract state and the abstract batch
    of ``batch_spec`` (the stage's, :mod:`t1_jax.data.batch_spec`)."""
    import jax

    from t1_jax import mesh as mesh_lib
    from t1_jax.data.batch_spec import abstract_batch
    from t1_jax.trainer import init_state_fn, jit_train_step, stage_optimizer

    tx, schedule = stage_optimizer(cfg, stage)
    with mesh_lib.use_mesh(mesh):
        rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated(mesh))
        state_shardings = state_shardings_of(stage, tx, mesh, rng)
        abstract_state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                                jax.eval_shape(init_state_fn(stage, tx), rng), state_shardings)
        step = jit_train_step(stage, cfg.optimizer.grad_accum_steps, tx, schedule, state_shardings)
    batch = abstract_batch(batch_spec, mesh)
    from t1_jax.chip_memory import train_step_breakdown

    return Program("train step", step, (abstract_state, batch, frozen), flops, tokens, description,
                   lambda temps: train_step_breakdown(abstract_state, batch, frozen, cfg.model, temps))


def contrastive_programs(cfg: ExperimentConfig, mesh) -> list[Program]:
    """Stages 1 and 2: the trainer's jitted train step around the stage's loss."""
    from t1_jax.data.batch_spec import logical_axes
    from t1_jax.model.functions import model_functions
    from t1_jax.stages.contrastive import loss_normalizers, make_loss_fn
    from t1_jax.stages.registry import stage_spec
    from t1_jax.trainer import TrainStage

    spec = stage_spec(cfg.trainer.stage)
    with_reasoning = spec.with_reasoning
    batch_spec = spec.batch_spec(cfg)
    graphdef, init_params, shardings = model_functions(cfg, mesh)
    stage = TrainStage(name=cfg.trainer.stage, init_params=init_params, batches=None, param_shardings=shardings,
                       loss_fn=make_loss_fn(cfg, graphdef, mesh), loss_normalizers=loss_normalizers(cfg),
                       batch_logical_axes=logical_axes(batch_spec))
    b, tq = batch_spec["q_ids"][0]
    n, td = batch_spec["d_ids"][0]
    description = (f"global batch {b} queries x {tq} tokens + {n} documents x {td} tokens"
                   f"{' (prompt + reasoning)' if with_reasoning else ''}; remat {cfg.model.remat}; grad accumulation "
                   f"{cfg.optimizer.grad_accum_steps}; GradCache chunk {cfg.loss.gradcache_chunk or 'off'}")
    return [train_step_program(cfg, mesh, stage, batch_spec, contrastive_flops(cfg, spec.query_kind),
                               b * tq + n * td, description)]


def grpo_flops(cfg: ExperimentConfig) -> tuple[FlopCount, FlopCount]:
    """(rollout, whole step) analytic FLOPs of stage 3 over the global batch (our accounting; see docs/tpu.md).

    R = queries x group_size rollouts with prompts padded to Tp and Tg = max_new_tokens + 1 generated slots; the
    KV cache holds Tp + Tg positions and every decoding step attends over all of them (dense cache). Rollout =
    prefill (R·Tp tokens) + decode (R·Tg tokens, logits at each). Step = rollout + the document pool (inference) +
    the reference policy's teacher-forced pass when grpo.beta > 0 (inference) + grpo.inner_steps training passes over
    the R prompt+generation sequences (logits at the Tg generated positions, rematerialised once by the chunked
    log-prob scan). With ``model.attention_impl=splash`` the full-sequence passes (pool, reference, updates) count
    the score tiles the kernel computes (``splash.attention_fraction``); prefill and decode are counted dense.
    """
    from t1_jax.data.batch_spec import padded_lengths
    from t1_jax.model.counts import decoder_flops
    from t1_jax.model.splash import attention_fraction

    m, g = cfg.model, cfg.grpo
    rollouts = cfg.data.global_batch_size * g.group_size
    n = cfg.data.global_batch_size * (1 + cfg.data.num_hard_negatives)
    tp, td = padded_lengths(cfg, "query_prompt")  # the prompt the policy continues: no <embtoken>
    tg = cfg.sampling.max_new_tokens + 1
    cache = tp + tg
    rollout = _sum_flops(decoder_flops(m, rollouts * tp, cache, training=False, lm_head_tokens=rollouts),
                         decoder_flops(m, rollouts * tg, cache, training=False, lm_head_tokens=rollouts * tg))
    # Full-sequence passes (the pool, the reference, the updates) run splash when configured: its computed tiles.
    fd, fc = attention_fraction(m, td), attention_fraction(m, cache)
    parts = [rollout, decoder_flops(m, n * td, td, training=False, attention_fraction=fd)]
    if g.beta > 0:
        parts.append(decoder_flops(m, rollouts * cache, cache, training=False, lm_head_tokens=rollouts * tg,
                                   attention_fraction=fc))
    train = decoder_flops(m, rollouts * cache, cache, lm_head_tokens=rollouts * tg, attention_fraction=fc)
    relogits = 2.0 * m.hidden_size * m.vocab_size * rollouts * tg
    for _ in range(g.inner_steps):
        parts.append(dataclasses.replace(train, recompute=train.recompute + relogits))
    return rollout, _sum_flops(*parts)


def grpo_programs(cfg: ExperimentConfig, mesh) -> list[Program]:
    """Stage 3: the trainer's jitted GRPO step (rollout, pool, rewards, inner updates; built by
    ``t1_jax.stages.grpo.grpo_step_fn``) and, separately, the rollout sampler alone."""
    import jax
    import numpy as np

    from t1_jax.data.batch_spec import logical_axes
    from t1_jax.model.functions import model_functions
    from t1_jax.stages.grpo import grpo_sample_fn, grpo_step_fn, init_extra_fn
    from t1_jax.stages.registry import STAGES
    from t1_jax.trainer import TrainStage

    g = cfg.grpo
    batch_spec = STAGES["grpo"].batch_spec(cfg)
    graphdef, init_params, shardings = model_functions(cfg, mesh)
    stage = TrainStage(name="grpo", init_params=init_params, batches=None, step_fn=grpo_step_fn(cfg, graphdef),
                       param_shardings=shardings, updates_per_step=g.inner_steps, init_extra=init_extra_fn(cfg),
                       batch_logical_axes=logical_axes(batch_spec))
    b, tp = batch_spec["q_ids"][0]
    n, td = batch_spec["d_ids"][0]
    i32 = np.int32
    abstract_params = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(init_params, jax.ShapeDtypeStruct((2,), jax.numpy.uint32)), shardings)
    compute = jax.numpy.dtype(cfg.model.compute_dtype)  # the trainer keeps the reference in the compute dtype
    frozen = {"ref": jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, compute, sharding=a.sharding),
                                            abstract_params)} if g.beta > 0 else None
    rollouts, tg = b * g.group_size, cfg.sampling.max_new_tokens + 1
    rollout_flops, step_flops = grpo_flops(cfg)
    description = (f"{b} queries x {g.group_size} rollouts, prompt {tp} + up to {tg} generated tokens; pool {n} "
                   f"documents x {td}; {g.inner_steps} update(s); reference policy {'on' if g.beta > 0 else 'off'}; "
                   f"remat {cfg.model.remat}")
    step = train_step_program(cfg, mesh, stage, batch_spec, step_flops, rollouts * (tp + tg), description, frozen)

    from t1_jax import mesh as mesh_lib
    from t1_jax.chip_memory import rollout_breakdown

    sample_fn = grpo_sample_fn(cfg, graphdef)
    prompt_sharding = mesh_lib.logical_sharding(mesh, ("batch", None))
    prompts = jax.ShapeDtypeStruct((rollouts, tp), i32, sharding=prompt_sharding)
    rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated(mesh))
    rollout = Program("rollout", jax.jit(sample_fn), (abstract_params, prompts, prompts, rng), rollout_flops,
                      rollouts * tg, f"{rollouts} sequences: prefill {tp} + {tg} decoding steps (KV cache "
                                     f"{tp + tg}); tokens = generated slots",
                      lambda temps: rollout_breakdown(abstract_params, cfg.model, temps))
    return [step, rollout]


# Programs of what is not a training stage (generation: t1_jax.compile_generate). A training stage's programs are
# named by its entry in the stage registry (StageSpec.programs); programs_for looks in both.
PROGRAMS: dict[str, Callable[[ExperimentConfig, Any], list[Program]]] = {
    "generate": lambda cfg, mesh: importlib.import_module("t1_jax.compile_generate").generate_programs(cfg, mesh),
    "encode": lambda cfg, mesh: importlib.import_module("t1_jax.compile_encode").encode_programs(cfg, mesh),
}


def programs_for(kind: str) -> Callable[[ExperimentConfig, Any], list[Program]]:
    from t1_jax.stages.registry import STAGES

    if kind in STAGES:
        return STAGES[kind].compile_programs
    if kind in PROGRAMS:
        return PROGRAMS[kind]
    raise ConfigError(f"compile check: no programs for {kind!r}; known: {', '.join([*STAGES, *PROGRAMS])}")


# --------------------------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------------------------


def check(cfg: ExperimentConfig, topology: str, programs: Optional[Sequence[str]] = None,
          kind: Optional[str] = None) -> CheckResult:
    """Compile the configured stage's programs for ``topology``; see the module docstring. ``programs`` picks some
    by name (default all); ``kind`` a training stage or a ``PROGRAMS`` entry (:func:`programs_for`; default
    ``trainer.stage``; ``generate`` = the sampler's prefill and decode loop, t1_jax.compile_generate). Raises
    ConfigError (bad mesh/batch), RuntimeError (no libtpu)."""
    from t1_jax import config as config_lib
    from t1_jax.stages.registry import STAGES
    from t1_jax.tpu import compile_report, parse_topology, roofline_seconds, topology_mesh

    start = time.perf_counter()
    spec = parse_topology(topology)
    kind = kind or cfg.trainer.stage
    if kind in STAGES:  # a training stage's programs, compiled as that stage (--kind may name another one)
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, stage=kind))
    config_lib.validate(cfg, device_count=spec.chips, training=kind in STAGES)
    build_programs = programs_for(kind)
    cfg = with_placeholder_tokens(cfg)
    mesh = topology_mesh(topology, cfg.mesh)
    built = build_programs(cfg, mesh)
    if programs:
        unknown = set(programs) - {p.name for p in built}
        if unknown:
            raise ConfigError(f"compile check: unknown program(s) {sorted(unknown)}; this stage has "
                              f"{[p.name for p in built]}")
        built = [p for p in built if p.name in programs]
    results = []
    from t1_jax import mesh as mesh_lib

    for program in built:
        log.info("lowering and compiling the %s for %s ...", program.name, spec.accelerator_type)
        with mesh_lib.use_mesh(mesh):
            memory, _ = compile_report(program.fn, program.args, chip=spec.chip)
        log.info("compiled the %s in %.1f s", program.name, memory.compile_seconds)
        seconds = roofline_seconds(program.flops.total, spec.chips, spec.chip.peak_bf16_flops)
        parts = program.breakdown(memory.temp_bytes or None) if program.breakdown else None
        results.append(ProgramResult(program.name, memory, program.flops, program.tokens, seconds,
                                     program.description, parts, program.detail(spec) if program.detail else None))
    return CheckResult(cfg.name, kind, spec, dict(mesh.shape), tuple(results),
                       time.perf_counter() - start)
