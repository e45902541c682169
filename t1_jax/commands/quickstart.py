"""``t1 quickstart``: the whole T1 pipeline on a generated reasoning-retrieval task, on a CPU."""
from __future__ import annotations

import argparse

from t1_jax.quickstart.pipeline import CONTROLS

NAME = "quickstart"
HELP = ("train stages 1-3 on a synthetic reasoning-retrieval task, then encode, index, search and evaluate "
        "(CPU, no downloads)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/quickstart", help="where everything is written (resumable)")
    parser.add_argument("--fast", action="store_true", help="a smaller task and fewer steps (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", choices=tuple(CONTROLS), default="none",
                        help="stage 3 as a control, from the same stage 2 and with the same steps, written beside the "
                             "real one (stage3-NAME/, results-NAME.json): shuffled-rewards permutes the rewards "
                             "across rollouts (updates of the same size, no credit assignment)")


def run(args: argparse.Namespace) -> int:
    from t1_jax.quickstart.pipeline import run as run_quickstart

    run_quickstart(args.workdir, "fast" if args.fast else "full", args.seed, control=args.control)
    return 0
