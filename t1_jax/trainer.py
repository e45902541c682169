"""One training loop for every stage: jitted step with donated state, orbax checkpoints, resume, preemption, metrics.

A stage (contrastive, reasoning, GRPO) is described by a :class:`TrainStage`: how to initialise parameters, the loss
(or a whole custom step for GRPO), and a checkpointable batch iterator. The trainer owns everything else:

* the optimizer state and the jitted step (state donated, shardings from the stage's parameter shardings);
* orbax ``CheckpointManager`` saves every ``trainer.checkpoint_every`` steps (async, keep-last-K) of the train state,
  the data-iterator state (grain) and the RNG; on start it resumes from the latest *complete* checkpoint (orbax
  finalises a step atomically, so a run killed mid-write falls back to the previous one);
* SIGTERM (the TPU preemption notice) makes it save at the next step boundary and exit cleanly;
* a non-finite loss stops the run with a clear message, without saving, so the last good checkpoint stays intact;
* console progress and TensorBoard metrics (loss, accuracy, grad norm, lr, tokens/s, MFU), on process 0 only.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import Mesh, NamedSharding

from t1_jax import config as config_lib
from t1_jax import distributed, fs, resume_check
from t1_jax import mesh as mesh_lib
from t1_jax.observe import MetricWriter, progress
from t1_jax.optimizer import accumulate_gradients, make_optimizer, update_metrics
from t1_jax.precision_policy import note_master_dtype_change

log = logging.getLogger(__name__)

Params = Any
Batch = dict
LossFn = Callable[[Params, Batch, jax.Array], tuple[jax.Array, dict]]


@struct.dataclass
class TrainState:
    step: jax.Array  # optimizer updates applied
    params: Params
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so it checkpoints as a plain array
    extra: Any = None  # stage-specific state that must survive a restart (e.g. GRPO's pool-embedding snapshot)


class NonFiniteLossError(RuntimeError):
    pass


class Preempted(RuntimeError):
    """The run saved a checkpoint because of a preemption notice (SIGTERM) or Ctrl-C, and stopped before the end."""

    EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; tpu/supervise.sh recreates the slice if needed and resumes

    def __init__(self, step: int, workdir: str):
        super().__init__(f"preempted: saved step {step} to {workdir}; run the same command again to resume")
        self.step = step


# A logged step at a non-zero learning rate that changes fewer than this share of the parameters is reported: with
# float32 masters AdamW changes nearly all of them (only embedding rows of tokens absent from the batch stay).
STALL_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class TrainStage:
    """What a training stage provides to the trainer."""

    name: str
    init_params: Callable[[jax.Array], Params]  # rng -> params (traced under jit; also gives the state's shardings)
    batches: Any  # checkpointable iterator (grain DatasetIterator: get_state/set_state) of host-local numpy dicts
    loss_fn: Optional[LossFn] = None  # (params, global batch, rng) -> (loss, metrics)
    # Custom step (GRPO): (state, batch, tx, schedule, frozen) -> (state, metrics); build it with ``apply_gradients``.
    step_fn: Optional[Callable[..., tuple[TrainState, dict]]] = None
    updates_per_step: int = 1  # optimizer updates one step applies (GRPO's inner iterations): sizes the schedule
    init_extra: Optional[Callable[[Params], Any]] = None  # params -> TrainState.extra at initialisation
    # Inputs every step reads but never updates and that need no checkpoint (GRPO's frozen reference policy): loaded
    # once at start, already placed on their shardings, passed to ``step_fn`` as ``frozen``.
    frozen: Optional[Callable[[], Any]] = None
    param_shardings: Any = None  # pytree of NamedSharding like params; None = replicated
    batch_logical_axes: Optional[dict[str, tuple]] = None  # per key; default: leading dim over the batch axes
    tokens_in_batch: Optional[Callable[[Batch], int]] = None  # host-side count for tokens/s
    flops_per_token: float = 0.0  # training FLOPs per token, for the MFU estimate
    eval_fn: Optional[Callable[[Params, int], dict]] = None
    # Starting parameters (e.g. an imported checkpoint or the previous stage), loaded only when there is nothing to
    # resume; already placed on their shardings. None = ``init_params``.
    pretrained: Optional[Callable[[], Params]] = None
    # batch -> the counts ``loss_fn`` divides its sums by (stage 2: cross-entropy target tokens), so that gradient
    # accumulation divides the whole step's sums by the whole step's counts (``t1_jax.optimizer.accumulate_gradients``)
    loss_normalizers: Optional[Callable[[Batch], dict]] = None
    data_report: Optional[dict[str, float]] = None  # what the token budgets cut (t1_jax.data.budget), for the workdir


def apply_gradients(state: TrainState, grads: Params, tx: optax.GradientTransformation) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def standard_step(loss_fn: LossFn, grad_accum_steps: int, normalizers: Optional[Callable] = None) -> Callable:
    """The step of the gradient-based stages: (accumulated) value-and-grad, AdamW update, metrics."""

    def step(state: TrainState, batch: Batch, tx: optax.GradientTransformation, schedule, frozen=None
             ) -> tuple[TrainState, dict]:
        del frozen
        rng, step_rng = jax.random.split(state.rng)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grads = accumulate_gradients(grad_fn, state.params, batch, step_rng, grad_accum_steps,
                                                      normalizers)
        new_state = apply_gradients(state, grads, tx).replace(rng=rng)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                   **update_metrics(state.params, new_state.params)}
        return new_state, metrics

    return step


def init_opt_state(tx: optax.GradientTransformation, params: Params, param_shardings: Any = None) -> Any:
    """``tx.init(params)`` with every parameter-shaped part (AdamW's moments) pinned to the parameters' shardings.

    Without the constraint the moments are zeros that depend on no input, and XLA replicates them on every device
    (found by ``t1 compile-check``: for a 4B model that is 16 GiB of bf16 moments per chip instead of 16 GiB / fsdp).
    """
    opt_state = tx.init(params)
    if param_shardings is None:
        return opt_state
    return optax.tree_map_params(tx, jax.lax.with_sharding_constraint, opt_state, param_shardings)


def new_state(stage: TrainStage, tx: optax.GradientTransformation, params: Params, rng: jax.Array) -> TrainState:
    extra = stage.init_extra(params) if stage.init_extra is not None else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=init_opt_state(tx, params, stage.param_shardings), rng=rng, extra=extra)


def init_state_fn(stage: TrainStage, tx: optax.GradientTransformation) -> Callable[[jax.Array], TrainState]:
    """rng -> fresh TrainState (parameters and optimizer moments constrained to the stage's shardings); jit it under
    the stage's mesh."""

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        params = stage.init_params(params_rng)
        if stage.param_shardings is not None:
            params = jax.lax.with_sharding_constraint(params, stage.param_shardings)
        return new_state(stage, tx, params, state_rng)

    return init


def stage_optimizer(cfg: config_lib.ExperimentConfig, stage: TrainStage):
    """(tx, schedule) for ``stage``: the schedule spans every optimizer update of the run (``trainer.num_steps`` x
    ``stage.updates_per_step``). Built once per run, by the trainer and, the same way, by ``t1 compile-check``."""
    return make_optimizer(cfg.optimizer, cfg.trainer.num_steps * stage.updates_per_step)


def jit_train_step(stage: TrainStage, grad_accum_steps: int, tx: optax.GradientTransformation, schedule,
                   state_shardings: Any) -> Callable:
    """The jitted step the trainer runs: (state, global batch, frozen) -> (state, metrics), state donated and kept on
    ``state_shardings``. Needs no data: ``t1 compile-check`` lowers it with abstract inputs."""
    if stage.step_fn is None and stage.loss_fn is None:
        raise ValueError(f"stage {stage.name!r} provides neither loss_fn nor step_fn")
    body = stage.step_fn or standard_step(stage.loss_fn, grad_accum_steps, stage.loss_normalizers)
    return jax.jit(lambda s, b, f: body(s, b, tx, schedule, f), donate_argnums=(0,),
                   out_shardings=(state_shardings, None))


def batch_shardings(mesh: Mesh, shapes: dict[str, tuple], logical_axes: Optional[dict[str, tuple]] = None
                    ) -> dict[str, NamedSharding]:
    """NamedSharding per batch key: ``logical_axes[key]`` or the leading dimension over the batch axes."""
    return {k: mesh_lib.logical_sharding(mesh, (logical_axes or {}).get(k) or ("batch",) + (None,) * (len(s) - 1))
            for k, s in shapes.items()}


def _latest_saved_step(checkpoint_dir: str) -> Optional[int]:
    """The highest step folder under ``checkpoint_dir`` (None when there is none), read without orbax."""
    if not fs.isdir(checkpoint_dir):
        return None
    steps = [int(name) for name in fs.listdir(checkpoint_dir) if name.isdigit()]
    return max(steps, default=None)


class Trainer:
    def __init__(self, cfg: config_lib.ExperimentConfig, workdir: str, mesh: Mesh):
        self.cfg = cfg
        self.workdir = fs.absolute(workdir)  # orbax wants absolute paths; gs:// stays as it is
        self.mesh = mesh
        self._stop_signal: Optional[int] = None
        self.preempted_at: Optional[int] = None  # the step saved because of a stop signal
        self._batch_axes: Optional[dict] = None
        self._stall_warned = False
        # Every process checks a resume's config (so all refuse together); process 0 writes it (resume_check).
        latest = _latest_saved_step(fs.join(self.workdir, "checkpoints"))
        if jax.process_index() == 0:
            fs.makedirs(self.workdir)
            note_master_dtype_change(fs.join(self.workdir, "config.json"), cfg.model.param_dtype)
        resume_check.check_and_record(self.workdir, cfg, latest, write=jax.process_index() == 0)

    # ---- state -----------------------------------------------------------------------------------------------------

    def _batch_sharding(self, key: str, ndim: int) -> NamedSharding:
        return batch_shardings(self.mesh, {key: (0,) * ndim}, self._batch_axes)[key]

    def global_batch(self, local: Batch) -> Batch:
        """Host-local numpy arrays -> global jax Arrays sharded over the batch axes."""
        return {k: jax.make_array_from_process_local_data(self._batch_sharding(k, np.ndim(v)), np.asarray(v))
                for k, v in local.items()}

    # ---- loop ------------------------------------------------------------------------------------------------------

    def fit(self, stage: TrainStage) -> TrainState:
        tcfg = self.cfg.trainer
        self._batch_axes = stage.batch_logical_axes
        self.tx, self.schedule = stage_optimizer(self.cfg, stage)

        with mesh_lib.use_mesh(self.mesh):
            init = jax.jit(init_state_fn(stage, self.tx))
            rng0 = jax.random.PRNGKey(tcfg.seed)
            from_params = jax.jit(lambda p, rng: new_state(stage, self.tx, p, jax.random.split(rng)[1]))
            state_shardings = self._state_shardings(stage, init, from_params, rng0)
            step_fn = jit_train_step(stage, self.cfg.optimizer.grad_accum_steps, self.tx, self.schedule,
                                     state_shardings)

            manager = self._checkpoint_manager()
            state, start = self._restore_or_init(manager, init, from_params, rng0, state_shardings, stage)
            frozen = stage.frozen() if stage.frozen is not None else None
            writer = MetricWriter(fs.join(self.workdir, "tensorboard"), jsonl=fs.join(self.workdir, "metrics.jsonl"),
                                  resume_step=start)
            handlers = self._install_stop_handlers()
            try:
                state = self._loop(stage, state, start, lambda s, b: step_fn(s, b, frozen), manager, writer)
            finally:
                for signum, previous in handlers.items():
                    signal.signal(signum, previous)
                manager.wait_until_finished()
                manager.close()
                writer.close()
        if self.preempted_at is not None:
            raise Preempted(self.preempted_at, self.workdir)
        return state

    def _install_stop_handlers(self) -> dict:
        """SIGINT (Ctrl-C) always, and SIGTERM when no distributed system listens for it, make the trainer save at
        the end of the current step and stop. With ``jax.distributed`` up, SIGTERM stays with XLA's preemption
        notifier (a Python handler would replace it), and the hosts agree on the step through the sync point."""
        from t1_jax.distributed import preemption_service_active

        signals = [signal.SIGINT] + ([] if preemption_service_active() else [signal.SIGTERM])
        return {signum: signal.signal(signum, self._on_stop_signal) for signum in signals}

    def _loop(self, stage, state, start, step_fn, manager, writer) -> TrainState:
        tcfg = self.cfg.trainer
        batches: Iterator = iter(stage.batches)
        pending: Optional[tuple[int, dict]] = None  # metrics of the previous step, checked one step late
        window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
        bar = progress(range(start, tcfg.num_steps), total=tcfg.num_steps, initial=start, desc=stage.name,
                       unit="step")
        for step in bar:  # ``step`` = number of updates already applied
            local = next(batches)
            state, metrics = step_fn(state, self.global_batch(local))
            done = step + 1
            window_tokens += stage.tokens_in_batch(local) if stage.tokens_in_batch else 0
            window_steps += 1
            if pending is not None:
                self._check_finite(*pending, manager)
            pending = (done, metrics)
            if done % tcfg.log_every == 0 or done == tcfg.num_steps:
                host = jax.device_get(metrics)
                self._check_finite(done, host, manager)
                elapsed = time.perf_counter() - window_start
                host = {k: float(np.asarray(v)) for k, v in host.items()}
                host["steps_per_s"] = window_steps / max(elapsed, 1e-9)
                if "generated_tokens" in host:
                    host["generated_tokens_per_s"] = host["generated_tokens"] * host["steps_per_s"]
                window_tokens = distributed.sum_over_hosts(window_tokens)  # each host counted its own rows
                if window_tokens:
                    host["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                    mfu = self._mfu(stage, host["tokens_per_s"])
                    if mfu is not None:
                        host["mfu"] = mfu
                writer.write(done, host, prefix="train/")
                self._warn_if_stalled(done, host)
                if hasattr(bar, "set_postfix"):
                    moved = host.get("param_changed_fraction")
                    bar.set_postfix(loss=f"{host['loss']:.4f}", **({} if moved is None else {"moved": f"{moved:.3f}"}))
                window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
            if stage.eval_fn is not None and tcfg.eval_every and done % tcfg.eval_every == 0:
                writer.write(done, stage.eval_fn(state.params, done), prefix="eval/")
            preempted = self._preempted(done) and done < tcfg.num_steps
            if (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0) or done == tcfg.num_steps or preempted:
                self._check_finite(done, jax.device_get(metrics), manager)
                self._save(manager, done, state, batches, force=preempted)
            if preempted:
                manager.wait_until_finished()
                log.warning("stop signal received: saved step %d to %s; exiting (status %d) so the run can resume",
                            done, self.workdir, Preempted.EXIT_CODE)
                self.preempted_at = done
                break
        return state

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    def _checkpoint_manager(self) -> ocp.CheckpointManager:
        tcfg = self.cfg.trainer
        # cleanup_tmp_directories: a run killed while writing a checkpoint leaves it uncommitted (a tmp folder locally,
        # a folder without commit_success.txt on GCS); it is deleted at start so the step can be written again.
        options = ocp.CheckpointManagerOptions(max_to_keep=tcfg.keep_checkpoints, create=True,
                                               enable_async_checkpointing=tcfg.async_checkpointing,
                                               cleanup_tmp_directories=True)
        return ocp.CheckpointManager(fs.join(self.workdir, "checkpoints"), options=options,
                                     item_names=("state", "data"))

    def _save(self, manager, step: int, state: TrainState, batches, force: bool = False) -> None:
        import grain

        items = {"state": ocp.args.StandardSave(state)}
        if hasattr(batches, "get_state"):
            items["data"] = grain.checkpoint.CheckpointSave(batches)
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        log.debug("checkpoint %d queued (forced=%s)", step, force)

    def _state_shardings(self, stage, init, from_params, rng0):
        """Where each part of the train state lives, as XLA propagates it. A stage that starts from pretrained
        parameters takes them from lowering ``from_params`` on abstract parameters placed on the stage's shardings
        (a fraction of a second), not from compiling the random initialiser it never runs (seconds on CPU: the
        initialiser's RNG is most of that compile)."""
        if stage.pretrained is None or stage.param_shardings is None:
            return init.lower(rng0).compile().output_shardings
        params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              jax.eval_shape(stage.init_params, rng0), stage.param_shardings)
        return from_params.lower(params, rng0).compile().output_shardings

    def _restore_or_init(self, manager, init, from_params, rng0, state_shardings, stage) -> tuple[TrainState, int]:
        import grain

        latest = distributed.agreed_latest_step(manager.latest_step())
        if latest is None and stage.pretrained is not None:
            log.info("%s: no checkpoint in %s; starting from pretrained parameters", stage.name, self.workdir)
            params = stage.pretrained()
            if stage.param_shardings is not None:  # where _state_shardings lowered from_params: no recompile
                params = jax.device_put(params, stage.param_shardings)
            return jax.device_put(from_params(params, rng0), state_shardings), 0
        if latest is None:
            log.info("%s: no checkpoint in %s; initialising", stage.name, self.workdir)
            return init(rng0), 0
        abstract = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), jax.eval_shape(init, rng0),
            state_shardings)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if hasattr(stage.batches, "set_state"):
            items["data"] = grain.checkpoint.CheckpointRestore(stage.batches)
        restored = manager.restore(latest, args=ocp.args.Composite(**items))
        log.info("%s: resumed from step %d (%s)", stage.name, latest, self.workdir)
        return restored["state"], int(latest)

    # ---- guards --------------------------------------------------------------------------------------------------

    def _check_finite(self, step: int, metrics: dict, manager) -> None:
        loss = float(np.asarray(jax.device_get(metrics["loss"])))
        if math.isfinite(loss):
            return
        manager.wait_until_finished()
        last = manager.latest_step()
        where = f"step {last} in {fs.join(self.workdir, 'checkpoints')}" if last is not None else "none saved"
        raise NonFiniteLossError(f"loss is {loss} at step {step}; stopping without saving. Last good checkpoint: "
                                 f"{where}. Lower optimizer.lr or check the data, then rerun to resume.")

    def _warn_if_stalled(self, step: int, host: dict) -> None:
        """Say so (once) when a logged step at a non-zero learning rate left most parameters where they were."""
        moved = host.get("param_changed_fraction")
        if moved is None or self._stall_warned or not host.get("lr", 0.0) > 0 or moved >= STALL_FRACTION:
            return
        self._stall_warned = True
        log.warning("step %d changed only %.1f%% of the parameters at lr %.3g (update/weight ratio %.2e): updates are "
                    "rounding away or the gradients are zero; check model.param_dtype (float32 masters) and the "
                    "learning rate (docs/training.md, Precision)", step, 100 * moved, host["lr"],
                    host.get("update_ratio", float("nan")))

    def _on_stop_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        log.warning("%s received: will save a checkpoint at the end of this step and exit (Ctrl-C again to abort)",
                    signal.Signals(signum).name)

    def _preempted(self, step: int) -> bool:
        """Whether to save and stop after ``step``: a local signal, or (with jax.distributed up) JAX's preemption
        sync point, at which every host sees the same answer for the same step."""
        from t1_jax.distributed import preemption_service_active

        if self._stop_signal is not None and jax.process_count() == 1:
            return True
        if preemption_service_active():
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._stop_signal is not None

    def _mfu(self, stage: TrainStage, tokens_per_s: float) -> Optional[float]:
        if not stage.flops_per_token:
            return None
        try:
            from t1_jax.tpu import peak_flops_for_device
        except ImportError:
            return None
        peak = peak_flops_for_device(jax.devices()[0])
        if not peak:
            return None
        return stage.flops_per_token * tokens_per_s / (peak * jax.device_count())
