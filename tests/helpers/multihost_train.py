"""One process of a (multi-process) tiny stage-1 run through the real ``t1_jax.stages.build.train``; run by tests.

Usage: python -m tests.helpers.multihost_train WORKDIR TOKENIZER TRAIN_JSONL STEPS PROCESS_ID NUM_PROCESSES PORT
       [--stop-after K]

Each process gets 8 / NUM_PROCESSES fake CPU devices; with NUM_PROCESSES > 1 the processes join through
``jax.distributed.initialize`` on localhost:PORT (mesh.coordinator_address/num_processes/process_id) and talk over
gloo CPU collectives. ``--stop-after K`` makes every process take the trainer's preemption path after step K (save a
checkpoint at the step boundary and exit), so the next invocation resumes from it. Process 0 writes ``params.npz``
(the final parameters, gathered) when training finishes.
"""
import os
import sys

PROCESSES = int(sys.argv[6])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // PROCESSES} --xla_backend_optimization_level=0"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("T1_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import logging  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("workdir", "tokenizer", "train_jsonl"):
        parser.add_argument(name)
    for name in ("steps", "process_id", "num_processes", "port"):
        parser.add_argument(name, type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[p{args.process_id}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")

    from t1_jax import config as config_lib
    from t1_jax.stages import build
    from t1_jax.trainer import Preempted

    overrides = [f"text.tokenizer={args.tokenizer}", f"data.train_path={args.train_jsonl}",
                 "text.max_query_tokens=100", "text.max_doc_tokens=64", "data.length_buckets=128",
                 "mesh.data=-1", "mesh.fsdp=2", "mesh.tensor=2", "data.global_batch_size=8",
                 f"trainer.num_steps={args.steps}", "trainer.checkpoint_every=2", "trainer.log_every=1",
                 "trainer.async_checkpointing=false", "optimizer.lr=1e-3", "optimizer.warmup_steps=1"]
    if args.num_processes > 1:
        overrides += [f"mesh.coordinator_address=localhost:{args.port}", f"mesh.num_processes={args.num_processes}",
                      f"mesh.process_id={args.process_id}"]
    cfg = config_lib.load_config("experiments/tiny_stage1.py", overrides)
    try:
        state = build.train(cfg, args.workdir)
    except Preempted as e:  # SIGTERM reached XLA's preemption notifier; every process saved the same step
        print(f"[p{args.process_id}] {e}", flush=True)
        return Preempted.EXIT_CODE
    assert jax.process_count() == args.num_processes and jax.device_count() == 8
    if int(state.step) == args.steps:
        from jax.experimental import multihost_utils

        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        full = {jax.tree_util.keystr(p): np.asarray(multihost_utils.process_allgather(x, tiled=True))
                for p, x in leaves}
        if jax.process_index() == 0:
            np.savez(os.path.join(args.workdir, "params.npz"), **full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
