"""Progress bars, console metrics and TensorBoard event files. Only process 0 writes on multi-host runs."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterable, Mapping, Optional, TypeVar

import jax
import numpy as np

from t1_jax import fs

log = logging.getLogger("t1_jax")
T = TypeVar("T")


def is_lead_process() -> bool:
    return jax.process_index() == 0


def progress(iterable: Iterable[T], total: Optional[int] = None, desc: str = "", unit: str = "it",
             initial: int = 0, **kwargs) -> Iterable[T]:
    """A tqdm progress bar on process 0 (and when stderr is not silenced); the bare iterable elsewhere."""
    from tqdm.auto import tqdm

    disable = not is_lead_process() or os.environ.get("T1_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, dynamic_ncols=True,
                **kwargs)


class MetricWriter:
    """Scalars to TensorBoard (tensorboardX) and to the console log, written by process 0 only."""

    def __init__(self, logdir: Optional[str], console: bool = True, jsonl: Optional[str] = None,
                 resume_step: Optional[int] = None):
        """``logdir``: TensorBoard event files; ``jsonl``: also one JSON object per write (easy to parse). Both may
        be gs:// paths. ``resume_step``: a resumed run drops the jsonl lines of steps after it (written by the run
        that was killed before its next checkpoint), so every step appears once."""
        self._lead = is_lead_process()
        self._console = console
        self._writer = None
        self._jsonl = None
        if logdir and self._lead:
            from tensorboardX import SummaryWriter

            fs.makedirs(logdir)
            self._writer = SummaryWriter(logdir=logdir, flush_secs=10)
        if jsonl and self._lead:
            self._jsonl = JsonlLog(jsonl, resume_step)
        self._t0 = time.time()

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        if not self._lead:
            return
        scalars = {f"{prefix}{k}": float(np.asarray(v)) for k, v in metrics.items()}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        if self._jsonl is not None:
            self._jsonl.append({"step": step, **scalars})
        if self._console:
            text = "  ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
            log.info("step %d  %s", step, text)

    def text(self, step: int, tag: str, value: str) -> None:
        if self._lead and self._writer is not None:
            self._writer.add_text(tag, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class JsonlLog:
    """An append-only jsonl file, local or gs:// (objects cannot be appended to: a URL's file is rewritten whole on
    every append, which at one line per logged step stays small)."""

    def __init__(self, path: str, resume_step: Optional[int] = None):
        self.path = path
        self._lines: list[str] = []
        if fs.exists(path):
            for line in fs.read_text(path).splitlines():
                try:
                    step = json.loads(line).get("step")
                except ValueError:
                    continue  # a line cut by a kill
                if resume_step is None or step is None or step <= resume_step:
                    self._lines.append(line)
        if fs.is_url(path):
            self._file = None
            self._rewrite()
        else:
            fs.makedirs(fs.dirname(path))
            if resume_step is not None:
                fs.write_text(path, "".join(line + "\n" for line in self._lines))
            self._file = fs.open(path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        line = json.dumps(row)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._lines.append(line)
            self._rewrite()

    def _rewrite(self) -> None:
        fs.write_text(self.path, "".join(line + "\n" for line in self._lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"
