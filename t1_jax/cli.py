"""The ``t1`` command: argument parsing and a registry of subcommands. No logic lives here.

Each subcommand is a module under ``t1_jax.commands`` exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Modules import their heavy dependencies inside ``run`` so ``t1 --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from t1_jax.config import ConfigError

# Order is the order of ``t1 --help``: roughly the order of the pipeline.
COMMAND_MODULES: tuple[str, ...] = (
    "t1_jax.commands.config_cmd",
    "t1_jax.commands.convert",
    "t1_jax.commands.generate",
    "t1_jax.commands.train",
    "t1_jax.commands.embed",
    "t1_jax.commands.encode",
    "t1_jax.commands.index",
    "t1_jax.commands.search",
    "t1_jax.commands.eval",
    "t1_jax.commands.compile_check",
    "t1_jax.commands.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t1", description="T1 generative retrieval in JAX (train, encode, index, "
                                     "search, evaluate).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        sp = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from t1_jax.host_platform import quiet_cpu_start

    cpu_selected = quiet_cpu_start()  # before anything imports JAX: no libtpu probing on hosts without a TPU
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    if not args.verbose:  # orbax/absl narrate every checkpoint at INFO; fsspec/gcsfs every gs:// read
        for name in ("absl", "fsspec", "gcsfs"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if cpu_selected:
        logging.getLogger(__name__).debug("no TPU or GPU on this host and JAX_PLATFORMS unset: JAX_PLATFORMS=cpu")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        from t1_jax.commands import output_guard

        output_guard.check(args)
        return int(args._run(args) or 0)
    except ConfigError as e:
        print(f"t1 {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a command may say what it kept (t1 encode: the chunks written)
        print(f"t1 {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as e:  # a known failure (bad data, non-finite loss ...) gets one line, not a traceback
        from t1_jax.trainer import NonFiniteLossError, Preempted

        if isinstance(e, Preempted):
            print(f"t1 {args.command}: {e}", file=sys.stderr)
            return Preempted.EXIT_CODE

        if not isinstance(e, (FileNotFoundError, ValueError, NonFiniteLossError)) or args.verbose:
            raise
        print(f"t1 {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
