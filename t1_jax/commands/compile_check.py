"""``t1 compile-check``: compile a stage's real jitted step (or, for a generation experiment, the sampler's prefill
and decode loop) for a TPU slice on this (CPU) host and report whether it fits: per-chip memory vs HBM, FLOPs per
step, roofline step time and tokens/s (decoding: the HBM-bandwidth bound too). Needs libtpu (the ``tpu`` extra)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from t1_jax.commands.common import add_config_arguments

NAME = "compile-check"
HELP = ("compile the configured stage's train step (or a generation experiment's prefill and decode loop) for a TPU "
        "topology (no TPU needed, libtpu required) and print per-chip memory, FLOPs and roofline step time; exit 1 "
        "when it does not fit")

EXIT_DOES_NOT_FIT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--topology", required=True, metavar="SLICE",
                        help="TPU slice: v5p-8, v4-8, v4-32, v5e-16 (v5litepod-16), v5p-64, or gen:AxBxC. Also "
                             "selects the experiment's layout row (sets T1_TOPOLOGY while the config loads)")
    parser.add_argument("--program", action="append", default=[], metavar="NAME",
                        help="compile only this program (e.g. 'train step'); repeatable; default all of the stage's")
    parser.add_argument("--kind", metavar="KIND",
                        help="which programs: contrastive, reasoning, grpo (a stage's), generate (the sampler's "
                             "prefill + decode loop) or encode (document embedding at retrieval.encode_batch_size x "
                             "text.max_doc_tokens); default: the experiment file's COMPILE_CHECK, else trainer.stage")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def experiment_kind(path: str) -> Optional[str]:
    """An experiment file's ``COMPILE_CHECK`` (``"generate"`` for a generation experiment); None when it has none."""
    if not path.endswith(".py"):
        return None
    import importlib.util

    from t1_jax import fs

    with fs.local_copy(path) as local_path:
        spec = importlib.util.spec_from_file_location("t1_experiment_kind", local_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return getattr(module, "COMPILE_CHECK", None)


def run(args: argparse.Namespace) -> int:
    from t1_jax import compile_check
    from t1_jax.config import load_config
    from t1_jax.layouts import topology_selected
    from t1_jax.tpu import libtpu_available, parse_topology

    spec = parse_topology(args.topology)  # ValueError -> one line from the CLI
    if not libtpu_available():
        print("t1 compile-check: libtpu is not installed; install the tpu extra: pip install -e '.[tpu]'",
              file=sys.stderr)
        return 2
    with topology_selected(spec.accelerator_type):
        cfg = load_config(args.config, args.overrides)
    result = compile_check.check(cfg, args.topology, args.program, args.kind or experiment_kind(args.config))
    print(result.format())
    if args.json:
        from t1_jax import fs

        fs.write_text(args.json, json.dumps(result.to_dict(), indent=2))
    if not result.fits:
        print(f"t1 compile-check: {cfg.name} does not fit {spec.accelerator_type}: over by "
              f"{result.overflow_gib:.3f} GiB per chip", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0
