"""Refuse a command whose output cannot be written or would replace one of its inputs, before any work: checked for
every subcommand, from the parsed arguments (``t1_jax.cli.main`` calls :func:`check` before the command runs).

Each subcommand's output arguments are listed in ``OUTPUTS`` (with the files an output argument also names:
``t1 embed --out X.npy`` writes ``X.ids.txt`` and ``X.reasoning.jsonl`` too) and its output folders (a workdir, a
store, an index) in ``FOLDER_OUTPUTS``; every other string argument, and the ``PATH`` of a ``NAME=PATH`` list element
(``t1 eval --run``), counts as a possible input. Refused, in one line naming the flag:

* an output that is also an input (``t1 embed --queries q.jsonl --out q.jsonl``, ``t1 index --store S --out S``);
* an output folder that exists as a file;
* a local output the command could not write: the folder it writes into, or the nearest folder that exists above
  it (the command creates the rest), is not writable, or is a file. ``gs://`` and other URLs are not checked here
  (the storage's permissions are known only when writing).
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Iterator, Optional

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
    "generate": {"out": lambda p: [p]},
    "compile-check": {"json": lambda p: [p]},
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


FOLDER_OUTPUTS = {"train": "workdir", "quickstart": "workdir", "encode": "out", "index": "out", "convert": "dst",
                  "eval": "workdir"}


def unwritable(path: str, folder: bool) -> Optional[str]:
    """Why the command could not write ``path`` (a file, or a folder when ``folder``), or None. The folder written
    into is ``path`` itself for an existing folder output, else the nearest existing folder above the path (the
    command creates the missing ones); it must be a folder with write and search permission. URLs: None."""
    if fs.is_url(path):
        return None
    target = os.path.abspath(fs.local(path))
    if not folder and os.path.isdir(target):
        return f"{target} is a folder; it must be a file"
    if not folder and os.path.isfile(target) and not os.access(target, os.W_OK):
        return f"file {target} is not writable"
    if not (folder and os.path.isdir(target)):
        target = os.path.dirname(target)
        while not os.path.exists(target) and os.path.dirname(target) != target:
            target = os.path.dirname(target)
    if not os.path.isdir(target):
        return f"{target} is a file, not a folder"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"folder {target} is not writable"
    return None


def _check_writable(command: str, args: argparse.Namespace) -> None:
    folder_arg = FOLDER_OUTPUTS.get(command)
    for name in dict.fromkeys([*OUTPUTS.get(command, {}), *([folder_arg] if folder_arg else [])]):
        value = getattr(args, name, None)
        why = unwritable(value, folder=name == folder_arg) if isinstance(value, str) and value else None
        if why:
            raise ValueError(f"{_label(name)} {value}: {why}")


def check(args: argparse.Namespace) -> None:
    """Raise ValueError naming the argument(s) when an output path is also an input path, when an output folder (a
    workdir, a store, an index) is an existing file, or when a local output cannot be written."""
    command = getattr(args, "command", "")
    folder_arg = FOLDER_OUTPUTS.get(command)
    folder = getattr(args, folder_arg, None) if folder_arg else None
    if folder and not fs.is_url(folder) and os.path.isfile(fs.local(folder)):
        raise ValueError(f"{_label(folder_arg)} {folder} is a file; it must be a folder (new or earlier output)")
    _check_writable(command, args)
    outputs = OUTPUTS.get(command, {})
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
