"""A toy stage (linear regression on a grain pipeline) that drives the real Trainer; run as a subprocess by tests.

Usage: python -m tests.helpers.toy_train WORKDIR NUM_STEPS [--die-before-step K [--wait-for-checkpoint]]
       [--nan-at-step K] [--signal-before-step K [--signal SIGTERM|SIGINT]]
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("T1_NO_PROGRESS", "1")
# t1_jax never imports torch, but tensorboardX (the trainer's metric writer) imports it when it can: about 4 s of CPU
# per process, a third of this whole run. Hidden, as on an install without torch (t1-jax does not depend on it).
sys.modules.setdefault("torch", None)

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t1_jax import config as config_lib  # noqa: E402
from t1_jax import mesh as mesh_lib  # noqa: E402
from t1_jax.trainer import Preempted, Trainer, TrainStage  # noqa: E402

D_IN, D_OUT, N = 16, 4, 256


class _Record:
    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(N, D_IN)).astype(np.float32)
        self.w = rng.normal(size=(D_IN, D_OUT)).astype(np.float32)
        self.y = self.x @ self.w + 0.01 * rng.normal(size=(N, D_OUT)).astype(np.float32)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Saboteur(grain.DatasetIterator):
    """Wraps the grain iterator; misbehaves right before a chosen step (to simulate crashes and preemptions)."""

    def __init__(self, it, args):
        super().__init__(it)
        self.it, self.args, self.count = it, args, 0

    def __next__(self):
        self.count += 1
        step = self.args.start + self.count  # 1-based step about to run
        if step == self.args.die_before_step:
            if self.args.wait_for_checkpoint:
                path = os.path.join(self.args.workdir, "checkpoints", str(step - 1))
                deadline = time.time() + 60
                while not os.path.isdir(path) and time.time() < deadline:
                    time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.args.signal_before_step:
            os.kill(os.getpid(), getattr(signal, self.args.signal))
        batch = next(self.it)
        if step == self.args.nan_at_step:
            batch = {**batch, "x": np.full_like(batch["x"], np.nan)}
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("num_steps", type=int)
    parser.add_argument("--die-before-step", type=int, default=-1)
    parser.add_argument("--wait-for-checkpoint", action="store_true")
    parser.add_argument("--nan-at-step", type=int, default=-1)
    parser.add_argument("--signal-before-step", type=int, default=-1)
    parser.add_argument("--signal", default="SIGTERM", choices=("SIGTERM", "SIGINT"))
    parser.add_argument("--checkpoint-every", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    ckpt_dir = os.path.join(args.workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
    args.start = steps[-1] if steps else 0

    cfg = config_lib.apply_overrides(config_lib.ExperimentConfig(), [
        "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", f"trainer.num_steps={args.num_steps}",
        f"trainer.checkpoint_every={args.checkpoint_every}", "trainer.log_every=1", "trainer.keep_checkpoints=10",
        "optimizer.lr=0.05", "optimizer.warmup_steps=1", "data.global_batch_size=16"])
    mesh = mesh_lib.make_mesh(cfg.mesh)
    dataset = (grain.MapDataset.source(_Record(0)).shuffle(seed=3).repeat().batch(16, drop_remainder=True)
               .to_iter_dataset())
    batches = Saboteur(iter(dataset), args)

    def init_params(rng):
        return {"w": jax.random.normal(rng, (D_IN, D_OUT)) * 0.1, "bias": jnp.zeros((D_OUT,))}

    def loss_fn(params, batch, rng):
        pred = batch["x"] @ params["w"] + params["bias"]
        noise = 1e-3 * jax.random.normal(rng, ())  # the RNG stream is part of what resume must reproduce
        loss = jnp.mean((pred - batch["y"]) ** 2) + noise
        return loss, {"accuracy": jnp.mean(jnp.abs(pred - batch["y"]) < 0.5)}

    shardings = {"w": mesh_lib.logical_sharding(mesh, ("embed", "mlp")),
                 "bias": mesh_lib.logical_sharding(mesh, ("mlp",))}
    stage = TrainStage(name="toy", init_params=init_params, loss_fn=loss_fn, batches=batches,
                       param_shardings=shardings, tokens_in_batch=lambda b: int(b["x"].shape[0]))
    try:
        state = Trainer(cfg, args.workdir, mesh).fit(stage)
    except Preempted as e:  # what `t1 train` does
        print(e, file=sys.stderr)
        return Preempted.EXIT_CODE
    np.save(os.path.join(args.workdir, "final_w.npy"), np.asarray(jax.device_get(state.params["w"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
