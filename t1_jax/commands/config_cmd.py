"""``t1 config``: validate an experiment and print the fully resolved config."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from t1_jax.commands.common import add_config_arguments, config_from_args

NAME = "config"
HELP = "validate an experiment config (with --set overrides) and print it resolved, as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--topology", default=None, metavar="SLICE",
                        help="check the config for this TPU slice (v5p-8, v4-32, ...): selects the experiment's "
                             "layout row and checks the mesh against the slice's chips, on any machine (default: "
                             "$T1_TOPOLOGY when set)")
    parser.add_argument("--devices", type=int, default=None,
                        help="check the mesh against this many devices (default: the slice's chips with --topology, "
                             "else the devices JAX sees here)")
    parser.add_argument("--out", default=None, help="also write the resolved config to this JSON file")


def run(args: argparse.Namespace) -> int:
    from t1_jax import config as config_lib

    from t1_jax.layouts import TOPOLOGY_ENV, topology_selected
    from t1_jax.tpu import parse_topology

    topology = args.topology or os.environ.get(TOPOLOGY_ENV)
    spec = parse_topology(topology) if topology else None  # ValueError -> one line from the CLI
    with topology_selected(spec.accelerator_type) if spec else contextlib.nullcontext():  # that slice's layout row
        cfg = config_from_args(args)
    devices, where = args.devices, f"{args.devices} devices"
    if devices is None and spec:
        devices, where = spec.chips, f"{spec.accelerator_type} ({spec.chips} chips)"
    if devices is None:
        import jax

        devices, where = jax.device_count(), f"the {jax.device_count()} {jax.default_backend()} device(s) here"
    try:
        config_lib.validate(cfg, device_count=devices)
    except config_lib.ConfigError as e:
        if args.devices is None and not spec:  # checked against this machine: say how to check for the target
            raise config_lib.ConfigError(
                f"{e}\n(checked against {where}; for a pod config pass --topology SLICE, e.g. --topology v5p-8; to "
                f"emulate N CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count=N)") from None
        raise
    data, fsdp, tensor = cfg.mesh.resolve(devices)
    print(json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True))
    print(f"config valid for {where}: mesh data={data} fsdp={fsdp} tensor={tensor}", file=sys.stderr)
    if args.out:
        config_lib.save_json(cfg, args.out)
    return 0
