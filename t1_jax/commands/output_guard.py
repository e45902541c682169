"""Refuse a command whose output would replace one of its inputs (``t1 embed --queries q.jsonl --out q.jsonl``,
``t1 index --store S --out S``): checked before any work, for every subcommand, from the parsed arguments.

Each subcommand's output arguments are listed in ``OUTPUTS`` (with the files an output argument also names:
``t1 embed --out X.npy`` writes ``X.ids.txt`` and ``X.reasoning.jsonl`` too); every other string argument, and the
``PATH`` of a ``NAME=PATH`` list element (``t1 eval --run``), counts as a possible input. Output folders (a workdir,
a store, an index) that exist as a file are refused too.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Iterator

from t1_jax import fs


def _embed_outputs(out: str) -> list[str]:
    if out.endswith(".npy"):
        stem = out[:-len(".npy")]
        return [out, stem + ".ids.txt", stem + ".reasoning.jsonl"]
    return [out]


OUTPUTS: dict[str, dict[str, Callable[[str], list[str]]]] = {  # command -> output argument -> paths it writes
    "embed": {"out": _embed_outputs},
    "encode": {"out": lambda p: [p]},
    "index": {"out": lambda p: [p]},
    "search": {"out": lambda p: [p], "reasoning_out": lambda p: [p]},
    "eval": {"out": lambda p: [p]},
    "config": {"out": lambda p: [p]},
    "convert": {"dst": lambda p: [p]},
}


def _key(path: str) -> str:
    return fs.absolute(path).rstrip("/")


def _inputs(args: argparse.Namespace, outputs: set[str]) -> Iterator[tuple[str, str]]:
    for name, value in vars(args).items():
        if name in outputs or name.startswith("_"):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item:
                yield name, item.split("=", 1)[1] if "=" in item and not fs.is_url(item) else item


FOLDER_OUTPUTS = {"train": "workdir", "quickstart": "workdir", "encode": "out", "index": "out", "convert": "dst"}


def check(args: argparse.Namespace) -> None:
    """Raise ValueError naming both arguments when an output path is also an input path, or when an output folder
    (a workdir, a store, an index) is an existing file."""
    folder_arg = FOLDER_OUTPUTS.get(getattr(args, "command", ""))
    folder = getattr(args, folder_arg, None) if folder_arg else None
    if folder and not fs.is_url(folder) and os.path.isfile(fs.local(folder)):
        raise ValueError(f"{_label(folder_arg)} {folder} is a file; it must be a folder (new or earlier output)")
    outputs = OUTPUTS.get(getattr(args, "command", ""), {})
    inputs = list(_inputs(args, set(outputs)))
    for out_name, paths_of in outputs.items():
        out = getattr(args, out_name, None)
        if not out:
            continue
        for written in paths_of(out):
            for in_name, path in inputs:
                if _key(written) == _key(path) and (fs.is_url(path) or os.path.exists(fs.local(path))):
                    raise ValueError(f"{_label(out_name)} {written} would overwrite the input {_label(in_name)} "
                                     f"{path}; write the output elsewhere")


def _label(name: str) -> str:
    return {"src": "SRC_DIR", "dst": "DST_DIR"}.get(name, "--" + name.replace("_", "-"))
