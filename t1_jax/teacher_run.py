"""``t1 generate``'s loop: a teacher checkpoint, query records and an output file -> every record with its trace.

Rows are (record, sample k) pairs in input order (record-major). They are cut into chunks of ``chunk_rows``
consecutive rows, fixed by input order alone. A chunk with any row not yet written is generated whole
(:func:`t1_jax.teacher.generate_traces`: continuous batching with one key per row in one process; on several
processes fixed batches, whose draws are those of an uninterrupted run because the chunk is) and its missing rows are
written at once, durably (``t1_jax.teacher_io``). So a killed run, run
again, writes exactly what an uninterrupted run writes. Each row's seed is derived from ``--seed``, the record's id
and ``k``.

Several hosts: one program over the whole slice's mesh (a 32B teacher may be split over more chips than one host
has: tensor 8 on v4-32), every process reading the same records and forming the same batches, each feeding the rows
its devices hold. Process 0 alone reads OUT (it decides which chunks are left and tells the others) and writes it,
from the traces gathered to every host.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional, Sequence

import numpy as np

from t1_jax import fs
from t1_jax.config import SamplingConfig
from t1_jax.sampler import layer_weights
from t1_jax.teacher import generate_traces
from t1_jax.teacher_filter import FilterSettings, verdict
from t1_jax.teacher_io import AppendFile, ChunkFiles, TeacherRecord, output_line, row_id, row_seed

log = logging.getLogger(__name__)

STOP_TOKEN = "<|im_end|>"  # Qwen3's chat end token: generation ends there
EOS_TOKENS = ("<|endoftext|>",)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A loaded teacher: parameters placed on ``mesh``, its tokenizer and the ids generation stops at."""

    graphdef: object
    params: object
    tokenizer: object
    mesh: object
    stop_id: int
    eos_ids: tuple[int, ...]
    pad_id: int


def stop_ids(tokenizer, stop_token: str = STOP_TOKEN) -> tuple[int, tuple[int, ...]]:
    """(the stop token's id, other end-of-sequence ids) of a chat tokenizer."""
    vocab = tokenizer.get_vocab()
    if stop_token not in vocab:
        raise ValueError(f"the teacher's tokenizer has no {stop_token!r} token (t1 generate expects a Qwen3 chat "
                         f"tokenizer; give another with --stop-token)")
    stop = int(vocab[stop_token])
    eos = [tokenizer.eos_token_id] + [vocab.get(t) for t in EOS_TOKENS]
    return stop, tuple(dict.fromkeys(int(e) for e in eos if e is not None and int(e) != stop))


def load_teacher(checkpoint: str, mesh, tokenizer_path: Optional[str] = None, stop_token: str = STOP_TOKEN
                 ) -> Teacher:
    """A plain Qwen3 (``t1 convert hf-to-t1`` folder or ``t1 train`` workdir) in its compute dtype, on ``mesh``."""
    from flax import nnx

    from t1_jax.model.params_io import load_model, load_model_config
    from t1_jax.model.params_io import model_dir
    from t1_jax.text import TOKENIZER_SUBDIR, read_tokenizer

    if not fs.exists(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist (a `t1 convert hf-to-t1` folder or a "
                                "`t1 train` workdir)")
    path = model_dir(checkpoint)
    own = fs.join(path, TOKENIZER_SUBDIR)
    if not tokenizer_path and not fs.isdir(own):
        raise ValueError(f"{path} has no {TOKENIZER_SUBDIR}/ folder: pass --tokenizer DIR")
    tokenizer = read_tokenizer(tokenizer_path or own)
    stop, eos = stop_ids(tokenizer, stop_token)
    compute = load_model_config(path).compute_dtype
    model = load_model(path, mesh=mesh, cfg_overrides={"param_dtype": compute})
    if stop >= model.cfg.vocab_size:
        raise ValueError(f"{stop_token} id {stop} is outside the teacher's {model.cfg.vocab_size}-row vocabulary")
    graphdef, params = nnx.split(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or (stop,))[0]
    return Teacher(graphdef, params, tokenizer, mesh, stop, eos, int(pad))


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    sampling: SamplingConfig
    batch_size: int  # rows per sampler call on this host
    chunk_rows: int  # rows per durable write (and per generate_traces call)
    samples: int = 1
    seed: int = 0
    keep_cut: bool = False  # write traces cut at the budget as they are (default: empty reasoning)
    filter: Optional[FilterSettings] = None  # --filter: keep a trace only if its example's positive ranks top-k

    def validate(self) -> list[str]:
        errors = [f"--{n.replace('_', '-')} must be positive, got {getattr(self, n)}"
                  for n in ("batch_size", "chunk_rows", "samples") if getattr(self, n) <= 0]
        if self.samples > 1 and self.sampling.temperature == 0:
            errors.append(f"--samples {self.samples} with greedy decoding would write one trace {self.samples} "
                          f"times: set sampling.temperature > 0 (--set sampling.temperature=0.7)")
        return errors + self.sampling.validate() + (self.filter.validate() if self.filter else [])


def percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    p50, p90, p99 = np.percentile(np.asarray(values, np.float64), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(max(values))}


def _agreed(mask: np.ndarray) -> np.ndarray:
    """Process 0's chunk mask on every process (only process 0 reads OUT: it may be on its local disk)."""
    import jax

    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(mask.astype(np.int32))).astype(bool)


def open_output(out: str):
    """Process 0's writer of ``out`` (reads what earlier runs wrote, cuts a torn last line); None elsewhere."""
    import jax

    if jax.process_index() != 0:
        return None
    return ChunkFiles(out) if fs.is_url(out) else AppendFile(out)


def run_generation(teacher: Teacher, records: Sequence[TeacherRecord], prompts: Sequence[Sequence[int]], sink,
                   settings: GenerateSettings, out: str = "", scorer=None) -> dict:
    """Generate every row of ``records`` that ``sink`` (:func:`open_output`) lacks; returns the summary.
    ``scorer``: the ``--filter`` scorer (``t1_jax.teacher_filter.make_scorer``) when ``settings.filter`` is set."""
    import jax

    from t1_jax.observe import progress

    errors = settings.validate()
    if errors:
        raise ValueError("; ".join(errors))
    lead = sink is not None
    rows = [(r, k) for r in range(len(records)) for k in range(settings.samples)]
    ids = [row_id(records[r].key, k) for r, k in rows]
    done = sink.done() if lead else set()
    chunks = [range(s, min(s + settings.chunk_rows, len(rows))) for s in range(0, len(rows), settings.chunk_rows)]
    todo_c = _agreed(np.asarray([any(ids[i] not in done for i in c) for c in chunks], bool))
    todo = [c for c, t in zip(chunks, todo_c) if t]
    missing = sum(ids[i] not in done for c in todo for i in c) if lead else sum(len(c) for c in todo)
    skipped = len(rows) - missing
    log.info("teacher: %d records x %d samples = %d traces; %d already written, %d to generate in %d chunks of up "
             "to %d rows", len(records), settings.samples, len(rows), skipped, missing, len(todo), settings.chunk_rows)
    # The engine's per-layer weights (CPU decode layout), split once for every chunk rather than once per chunk.
    layers = (layer_weights(teacher.graphdef, teacher.params, teacher.mesh, huge_pages=True)
              if todo and jax.process_count() == 1 else None)
    bar = progress(None, total=len(rows), initial=skipped, desc="teacher traces", unit="trace")
    generated = tokens = written = 0
    t0 = time.time()
    try:
        for chunk in todo:
            traces = generate_traces(
                teacher.graphdef, teacher.params, [prompts[rows[i][0]] for i in chunk], settings.sampling,
                stop_id=teacher.stop_id, eos_ids=teacher.eos_ids,
                seeds=[row_seed(settings.seed, records[rows[i][0]].key, rows[i][1]) for i in chunk],
                mesh=teacher.mesh, batch_size=settings.batch_size, pad_id=teacher.pad_id, layers=layers)
            generated += len(chunk)
            tokens += sum(len(t.token_ids) for t in traces)
            texts = [_text(teacher, t) for t in traces]
            cut = [t.hit_budget and not settings.keep_cut for t in traces]
            verdicts = _verdicts(scorer, settings, [(records[rows[i][0]], x) for i, x in zip(chunk, texts)], cut)
            if lead:
                new = [(i, t, x, v) for i, t, x, v in zip(chunk, traces, texts, verdicts) if ids[i] not in done]
                sink.write(new[0][0], [_line(records, rows[i], t, x, v, settings) for i, t, x, v in new])
                written += len(new)
                bar.update(len(new))
            bar.set_postfix_str(f"{tokens / max(time.time() - t0, 1e-9):.0f} tok/s", refresh=False)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: {out} keeps every trace written so far ({skipped + written} of "
                                f"{len(rows)}); run the same command again to generate the rest") from None
    finally:
        bar.close()
    seconds = time.time() - t0
    summary = {"out": out, "records": len(records), "samples": settings.samples, "written": written,
               "skipped_already_written": skipped, "generated": generated, "generated_tokens": tokens,
               "seconds": round(seconds, 3), "traces_per_s": round(generated / max(seconds, 1e-9), 3),
               "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    if not lead:
        return {**summary, "process": jax.process_index(), "note": "process 0 writes the output"}
    metas = sink.finish(ids)
    lengths = [int(m["tokens"]) for m in metas]
    summary = {**summary, "traces_in_out": len(metas), "budget_hits": sum(bool(m["hit_budget"]) for m in metas),
               "cut_written_empty": sum("cut_reasoning" in m for m in metas), "trace_tokens": percentiles(lengths)}
    if settings.filter is not None:
        judged = [m["filter"] for m in metas if m.get("filter", {}).get("rank") is not None]
        kept = sum(bool(f["kept"]) for f in judged)
        summary["filter"] = {"method": settings.filter.method, "top_k": settings.filter.top_k, "judged": len(judged),
                             "kept": kept, "kept_fraction": round(kept / len(judged), 4) if judged else None,
                             "unjudged_kept": sum("filter" in m for m in metas) - len(judged)}
    return summary


def _text(teacher: Teacher, trace) -> str:
    return teacher.tokenizer.decode(list(trace.token_ids), skip_special_tokens=True).strip()


def _verdicts(scorer, settings: GenerateSettings, rows, cut: Sequence[bool]) -> list:
    """The --filter verdict of each (record, trace text) row of a chunk (None without a filter, and for a trace
    written empty as cut). Every process judges the whole chunk (a T1 scorer runs programs over the whole mesh)."""
    out: list = [None] * len(rows)
    if settings.filter is None:
        return out
    judge = [i for i, c in enumerate(cut) if not c]
    for i, rank in zip(judge, scorer.ranks([rows[i] for i in judge]) if judge else []):
        out[i] = verdict(settings.filter, rank)
    return out


def _line(records: Sequence[TeacherRecord], row: tuple[int, int], trace, text: str, judged, settings) -> str:
    return output_line(records[row[0]], row[1], settings.samples, text, len(trace.token_ids), trace.hit_budget,
                       settings.keep_cut, judged)
