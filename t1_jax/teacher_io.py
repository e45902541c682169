"""``t1 generate``'s records in and lines out: reading query records, writing each with its teacher trace, resuming.

Input: jsonl(.gz) records of any of the formats stage 2 and evaluation read (a training example ``{query,
positives, ...}``, a BEIR query ``{_id, text}``, a BRIGHT example ``{id, query, ...}``). The query is ``query`` (else
``text``); the id is ``id``, ``_id`` or ``qid``, or ``line<N>`` (the record's line in the file) when it has none.
Output: the same records, every field kept, with ``reasoning`` set to the trace and ``teacher`` added
(``{"id": "<id>#<k>", "sample": k, "tokens", "hit_budget"}``); docs/generate.md says why.

Writers, used by process 0 alone (``done()`` = row ids already written, ``write(first_row, lines)`` = one durable
chunk, ``finish(order)`` = the metadata of every line, OUT complete):

* :class:`AppendFile`, a local ``--out``: complete lines appended, flushed and fsynced per chunk; a partial last line
  left by a kill is cut off (and logged) when the file is opened again.
* :class:`ChunkFiles`, a ``gs://`` ``--out`` (objects cannot be appended to): each chunk is one object in
  ``OUT.parts/`` (named by its first row), which appears only when complete; ``finish`` writes OUT in input order
  from OUT's earlier lines and the parts, then deletes the parts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Optional, Sequence

from t1_jax import fs
from t1_jax.data.readers import DataError, read_jsonl, require

log = logging.getLogger(__name__)

ID_FIELDS = ("id", "_id", "qid")
META = "teacher"  # the field t1 generate adds beside "reasoning"


@dataclasses.dataclass(frozen=True)
class TeacherRecord:
    key: str  # the record's id, or line<N>
    query: str
    task: str  # the task line of its teacher prompt
    obj: dict  # the record as read (written back with reasoning and teacher added)
    where: str  # file:line
    id_field: Optional[str] = None


def _task(obj: dict, where: str, tasks: dict[str, str], default_task: str, default_domain: Optional[str],
          instruction_field: str) -> str:
    own = obj.get(instruction_field)
    if own is not None:
        if not isinstance(own, str) or not own.strip():
            raise DataError(f"{where}: field {instruction_field!r} must be a non-empty string")
        return own
    domain = obj.get("domain") or default_domain
    if domain is None:
        return default_task
    if not isinstance(domain, str):
        raise DataError(f"{where}: field 'domain' must be a string, got {type(domain).__name__}")
    task = tasks.get(domain) or tasks.get(domain.replace("_", "-"))
    if task is None:
        raise DataError(f"{where}: no teacher instruction for domain {domain!r} (known: {', '.join(sorted(tasks))}); "
                        f"add one with text.query_domain_instructions or give the record an {instruction_field!r} "
                        f"field")
    return task


def read_records(path: str, tasks: dict[str, str], default_task: str, default_domain: Optional[str] = None,
                 instruction_field: str = "instruction") -> list[TeacherRecord]:
    """Every record of ``path`` with its key, query and task line; ``file:line`` errors (see the module doc)."""
    records, first = [], {}
    for line_no, obj in read_jsonl(path):
        where = f"{path}:{line_no}"
        id_field = next((f for f in ID_FIELDS if f in obj), None)
        key = f"line{line_no}"
        if id_field is not None:
            value = obj[id_field]
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise DataError(f"{where}: field {id_field!r} must be a string or integer id, got "
                                f"{type(value).__name__}")
            key = str(value)
        if key in first:
            raise DataError(f"{where}: duplicate id {key!r} (first at line {first[key]})")
        first[key] = line_no
        query = require(obj, "query" if "query" in obj or "text" not in obj else "text", path, line_no)
        task = _task(obj, where, tasks, default_task, default_domain, instruction_field)
        records.append(TeacherRecord(key, query, task, obj, where, id_field))
    if not records:
        raise DataError(f"{path}: no records (empty file)")
    return records


def row_id(key: str, k: int) -> str:
    return f"{key}#{k}"


def row_seed(seed: int, key: str, k: int) -> int:
    """A 31-bit seed of one (record, sample) row: its randomness depends on nothing else."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def output_line(record: TeacherRecord, k: int, samples: int, text: str, tokens: int, hit_budget: bool,
                keep_cut: bool, judged: Optional[dict] = None) -> str:
    """The record with ``reasoning`` and ``teacher`` set, as one jsonl line. With several samples the id field (when
    there is one) becomes ``<id>#<k>``, so ids stay unique; a trace cut at the budget is written as an empty
    reasoning (stage 2 skips it) with the cut text in ``teacher.cut_reasoning``, unless ``keep_cut``. ``judged``:
    the ``--filter`` verdict (``t1_jax.teacher_filter.verdict``), kept in ``teacher.filter``; a trace it does not
    keep is written empty too, its text in ``teacher.filtered_reasoning``."""
    obj = dict(record.obj)
    if samples > 1 and record.id_field is not None:
        obj[record.id_field] = row_id(record.key, k)
    cut = hit_budget and not keep_cut
    dropped = not cut and judged is not None and not judged["kept"]
    obj["reasoning"] = "" if cut or dropped else text
    meta = {"id": row_id(record.key, k), "sample": k, "tokens": tokens, "hit_budget": hit_budget}
    if cut:
        meta["cut_reasoning"] = text
    if judged is not None and not cut:
        meta["filter"] = judged
    if dropped:
        meta["filtered_reasoning"] = text
    obj[META] = meta
    return json.dumps(obj, ensure_ascii=False) + "\n"


def parse_lines(data: bytes, source: str) -> dict[str, tuple[str, dict]]:
    """row id -> (line, teacher metadata) of complete lines written by t1 generate; anything else is refused."""
    out = {}
    for line_no, raw in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            meta = json.loads(raw)[META]
            out[meta["id"]] = (raw.decode("utf-8") + "\n", meta)
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{source}:{line_no}: not a line t1 generate writes (no {META}.id); is --out another "
                            f"file? choose a new --out") from None
    return out


def _read_bytes(path: str) -> bytes:
    with fs.open(path, "rb") as f:
        return f.read()


def cut_torn_tail(path: str, block: int = 1 << 16) -> int:
    """Cut a partial last line (no newline: a kill interrupted its write) from a local file; bytes removed."""
    if not os.path.isfile(path):
        return 0
    with open(path, "rb+") as f:
        size = end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0 or start == 0:
                keep = start + newline + 1 if newline >= 0 else 0
                if keep < size:
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
                return size - keep
            end = start
    return 0


class AppendFile:
    """A local OUT written by one process (see the module doc)."""

    def __init__(self, path: str):
        self.path = fs.local(path)
        cut = cut_torn_tail(self.path)
        if cut:
            log.warning("%s: cut a partial last line (%d bytes) left by an interrupted run; its trace is generated "
                        "again", path, cut)
        self.torn_bytes = cut
        self._written = parse_lines(_read_bytes(self.path), path) if os.path.isfile(self.path) else {}

    def done(self) -> set[str]:
        return set(self._written)

    def write(self, first_row: int, lines: Sequence[str]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        self._written.update(parse_lines("".join(lines).encode("utf-8"), self.path))

    def finish(self, order: Sequence[str]) -> list[dict]:
        """The teacher metadata of every line in OUT (the file is already in order)."""
        return [meta for _, meta in self._written.values()]


class ChunkFiles:
    """OUT on object storage (see the module doc)."""

    def __init__(self, path: str):
        self.path, self.parts = path, path.rstrip("/") + ".parts"

    def _all(self) -> dict[str, tuple[str, dict]]:
        found = parse_lines(_read_bytes(self.path), self.path) if fs.isfile(self.path) else {}
        if fs.isdir(self.parts):
            for name in fs.listdir(self.parts):
                if name.endswith(".jsonl"):
                    part = fs.join(self.parts, name)
                    found.update(parse_lines(_read_bytes(part), part))
        return found

    def done(self) -> set[str]:
        return set(self._all())

    def write(self, first_row: int, lines: Sequence[str]) -> None:
        fs.write_text(fs.join(self.parts, f"{first_row:010d}.jsonl"), "".join(lines))

    def finish(self, order: Sequence[str]) -> list[dict]:
        """OUT rewritten in input row order (lines of ids no longer in the input kept at the end); parts deleted."""
        found = self._all()
        known = set(order)
        ids = [i for i in order if i in found] + [i for i in found if i not in known]
        fs.write_text(self.path, "".join(found[i][0] for i in ids))
        fs.rmtree(self.parts)
        return [found[i][1] for i in ids]
