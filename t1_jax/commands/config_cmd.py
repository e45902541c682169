"""``t1 config``: validate an experiment and print the fully resolved config."""
from __future__ import annotations

import argparse
import json
import sys

from t1_jax.commands.common import add_config_arguments, config_from_args

NAME = "config"
HELP = "validate an experiment config (with --set overrides) and print it resolved, as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--devices", type=int, default=None,
                        help="check the mesh against this many devices (default: the devices JAX sees here)")
    parser.add_argument("--out", default=None, help="also write the resolved config to this JSON file")


def run(args: argparse.Namespace) -> int:
    from t1_jax import config as config_lib

    cfg = config_from_args(args)
    devices = args.devices
    if devices is None:
        import jax

        devices = jax.device_count()
    config_lib.validate(cfg, device_count=devices)
    data, fsdp, tensor = cfg.mesh.resolve(devices)
    print(json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True))
    print(f"config valid for {devices} devices: mesh data={data} fsdp={fsdp} tensor={tensor}", file=sys.stderr)
    if args.out:
        config_lib.save_json(cfg, args.out)
    return 0
