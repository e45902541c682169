"""Progress bars, console metrics and TensorBoard event files. Only process 0 writes on multi-host runs."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterable, Mapping, Optional, TypeVar

import jax
import numpy as np

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

    def __init__(self, logdir: Optional[str], console: bool = True, jsonl: Optional[str] = None):
        """``logdir``: TensorBoard event files; ``jsonl``: also append one JSON object per write (easy to parse)."""
        self._lead = is_lead_process()
        self._console = console
        self._writer = None
        self._jsonl = None
        if logdir and self._lead:
            from tensorboardX import SummaryWriter

            os.makedirs(logdir, exist_ok=True)
            self._writer = SummaryWriter(logdir=logdir, flush_secs=10)
        if jsonl and self._lead:
            os.makedirs(os.path.dirname(os.path.abspath(jsonl)), exist_ok=True)
            self._jsonl = open(jsonl, "a")
        self._t0 = time.time()

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        if not self._lead:
            return
        scalars = {f"{prefix}{k}": float(np.asarray(v)) for k, v in metrics.items()}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
            self._jsonl.flush()
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


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"
