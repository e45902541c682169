"""One file-system layer for every path a user may give as ``gs://`` (or another fsspec URL).

Workdirs, model folders, tokenizers, ``config.json``, metrics, embedding-store side files, corpora, runs: every read
and write of ours goes through here. Local paths use ``os``/``open`` (unchanged behaviour: absolute paths, atomic
renames); URLs (``scheme://...``) use fsspec, which for ``gs://`` is gcsfs (installed by the ``tpu`` extra). Orbax
checkpoints and tensorstore arrays reach GCS themselves (tensorstore's gcs driver; orbax's directories through
etils.epath, which uses gcsfs too).

Folders that a library can only write or read locally (a Hugging Face tokenizer, a ScaNN index) go through
:func:`upload_dir` / :func:`local_copy`.
"""
from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import tempfile
from typing import IO, Iterator

_SCHEME = "://"


def is_url(path: str) -> bool:
    """``gs://bucket/x`` (or ``memory://``, ``s3://``...) rather than a local path."""
    return _SCHEME in str(path) and not str(path).startswith("file://")


def _fs(path: str):
    try:
        import fsspec
    except ImportError as e:  # pragma: no cover - fsspec comes with orbax/grain
        raise RuntimeError(f"{path}: reading URLs needs fsspec ({e})") from None
    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as e:
        scheme = str(path).split(_SCHEME, 1)[0]
        extra = "gcsfs (pip install -e '.[tpu]')" if scheme in ("gs", "gcs") else f"an fsspec backend for {scheme}://"
        raise RuntimeError(f"{path}: this path needs {extra}: {e}") from None


def local(path: str) -> str:
    """``file://x`` -> ``x``; anything else unchanged."""
    return path[len("file://"):] if str(path).startswith("file://") else path


def absolute(path: str) -> str:
    """Absolute local path, or the URL itself (orbax wants absolute paths)."""
    return path if is_url(path) else os.path.abspath(local(path))


def join(path: str, *parts: str) -> str:
    if is_url(path):
        return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(local(path), *parts)


def dirname(path: str) -> str:
    if is_url(path):
        head, _, _ = path.rstrip("/").rpartition("/")
        return head
    return os.path.dirname(os.path.abspath(local(path)))


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(local(path))


def isdir(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.isdir(p)
    return os.path.isdir(local(path))


def isfile(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.isfile(p)
    return os.path.isfile(local(path))


def makedirs(path: str) -> None:
    """Create a folder and its parents (object stores have no folders: nothing to do there)."""
    if not is_url(path):
        os.makedirs(local(path), exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names (not paths) of the entries of a folder."""
    if is_url(path):
        fs, p = _fs(path)
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(p, detail=False))
    return sorted(os.listdir(local(path)))


def open(path: str, mode: str = "r", encoding: str | None = None) -> IO:
    """A file object for ``path`` (use as a context manager). Text modes default to UTF-8 for URLs."""
    if is_url(path):
        import fsspec

        _fs(path)  # a clear error when the backend is missing
        if "b" not in mode and encoding is None:
            encoding = "utf-8"
        return fsspec.open(path, mode, encoding=encoding).open()
    return builtins.open(local(path), mode, encoding=encoding)


def files(path: str) -> list[tuple[str, int]]:
    """``(relative path with '/', size in bytes)`` of every file below a folder, sorted."""
    if is_url(path):
        fs_, p = _fs(path)
        root = p.rstrip("/") + "/"
        return sorted((name[len(root):], int(info.get("size") or 0))
                      for name, info in fs_.find(p, detail=True).items() if name.startswith(root))
    base = local(path)
    out = []
    for root, _, names in os.walk(base):
        for name in names:
            full = os.path.join(root, name)
            out.append((os.path.relpath(full, base).replace(os.sep, "/"), os.path.getsize(full)))
    return sorted(out)


def remove(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        fs.rm(p)
    else:
        os.remove(local(path))


def rmtree(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
    else:
        shutil.rmtree(local(path), ignore_errors=True)


def write_text(path: str, text: str) -> None:
    """Write a whole text file so a reader never sees half of it: a local file is written beside and renamed; a GCS
    object appears only when its upload completes."""
    if is_url(path):
        with open(path, "w") as f:
            f.write(text)
        return
    path = local(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with builtins.open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def upload_dir(local_dir: str, dest: str) -> None:
    """Copy the files of a local folder (recursively) to ``dest`` (a URL or another local folder)."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for name in files:
            target = join(dest, name) if rel == "." else join(dest, *rel.split(os.sep), name)
            if is_url(target):
                fs, p = _fs(target)
                fs.put_file(os.path.join(root, name), p)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(root, name), target)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path with the contents of ``path`` (a file or folder): itself when local, else a temporary download
    that is deleted afterwards."""
    if not is_url(path):
        yield local(path)
        return
    fs, p = _fs(path)
    with tempfile.TemporaryDirectory(prefix="t1-") as tmp:
        target = os.path.join(tmp, p.rstrip("/").rsplit("/", 1)[-1])
        fs.get(p, target, recursive=fs.isdir(p))
        yield target


@contextlib.contextmanager
def local_output_dir(path: str) -> Iterator[str]:
    """A local folder to write into that ends up at ``path``: itself when local, else a temporary folder uploaded
    to ``path`` when the block exits without an error."""
    if not is_url(path):
        os.makedirs(local(path), exist_ok=True)
        yield local(path)
        return
    with tempfile.TemporaryDirectory(prefix="t1-") as tmp:
        yield tmp
        upload_dir(tmp, path)
