"""Argument helpers shared by subcommands."""
from __future__ import annotations

import argparse

from t1_jax.config import ExperimentConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, metavar="EXP",
                        help="experiment file (experiments/*.py with get_config()) or a run's config.json")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", action="extend",
                        help="dotted overrides, e.g. --set optimizer.lr=1e-5 mesh.fsdp=8")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, args.overrides)
