"""``t1 train``: run the stage a config names (contrastive, reasoning, grpo) with automatic resume."""
from __future__ import annotations

import argparse
import logging

from t1_jax.commands.common import add_config_arguments, config_from_args

NAME = "train"
HELP = "train a stage (trainer.stage: contrastive | reasoning | grpo); resumes from the workdir's last checkpoint"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="run folder: config.json, checkpoints/, tensorboard/, model/")


def run(args: argparse.Namespace) -> int:
    from t1_jax.stages import build

    cfg = config_from_args(args)
    build.train(cfg, args.workdir)
    return 0
