"""``t1 quickstart``: the whole T1 pipeline on a generated reasoning-retrieval task, on a CPU."""
from __future__ import annotations

import argparse

NAME = "quickstart"
HELP = ("train stages 1-3 on a synthetic reasoning-retrieval task, then encode, index, search and evaluate "
        "(CPU, no downloads)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/quickstart", help="where everything is written (resumable)")
    parser.add_argument("--fast", action="store_true", help="a smaller task and fewer steps (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", choices=("none", "shuffled-rewards"), default="none",
                        help="stage 3 as a control: rewards permuted across rollouts (same steps, no credit); use "
                             "its own --workdir")


def run(args: argparse.Namespace) -> int:
    from t1_jax.quickstart.pipeline import run as run_quickstart

    run_quickstart(args.workdir, "fast" if args.fast else "full", args.seed, control=args.control)
    return 0
