"""Contrastive training examples from jsonl or a BEIR folder, validated line by line.

jsonl: one object per line with ``query`` (str), ``positives`` (list of texts, or of document ids when a corpus is
given), optional ``negatives`` (hard negatives, same kinds), ``reasoning`` (a teacher trace, stage 2), ``domain`` or
``instruction``. Malformed lines stop loading with ``file:line``; examples that cannot train (no positive, empty query)
are skipped and *reported* with their locations, never dropped silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Optional

from t1_jax.data.readers import DataError, beir_document_text, load_beir, read_beir_corpus, read_jsonl

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainExample:
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    reasoning: Optional[str] = None
    domain: Optional[str] = None
    source: str = ""  # "file:line", for error messages


@dataclasses.dataclass
class LoadReport:
    """What loading kept and what it skipped, with where (first few locations per reason)."""

    source: str
    kept: int = 0
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    empty_texts_removed: int = 0

    def skip(self, reason: str, where: str) -> None:
        self.skipped.setdefault(reason, []).append(where)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def __str__(self) -> str:
        parts = [f"{self.source}: {self.kept} examples kept"]
        for reason, where in self.skipped.items():
            shown = ", ".join(where[:3]) + (" ..." if len(where) > 3 else "")
            parts.append(f"{len(where)} skipped ({reason}: {shown})")
        if self.empty_texts_removed:
            parts.append(f"{self.empty_texts_removed} empty positive/negative texts removed")
        return "; ".join(parts)


def doc_key(text: str) -> int:
    """A stable 31-bit identifier of a document's text (duplicate detection across the gathered batch)."""
    return int.from_bytes(hashlib.blake2b(text.strip().encode("utf-8"), digest_size=4).digest(), "little") & 0x7FFFFFFF


def _texts(obj: dict, field: str, where: str, corpus: Optional[dict[str, str]], report: LoadReport) -> tuple[str, ...]:
    value = obj.get(field, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{where}: field {field!r} must be a list of texts or document ids, got "
                        f"{type(value).__name__}")
    out = []
    for item in value:
        if isinstance(item, dict):  # {"id": ...} or {"text": ...}
            item = item.get("text") if "text" in item else item.get("id", item.get("_id"))
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise DataError(f"{where}: field {field!r} holds {type(item).__name__}; expected texts or ids")
        if corpus is not None:
            if item not in corpus:
                raise DataError(f"{where}: {field} id {item!r} is not in the corpus")
            item = corpus[item]
        if not item.strip():
            report.empty_texts_removed += 1
            continue
        out.append(item)
    return tuple(out)


def load_jsonl_examples(path: str, corpus_path: str = "", require_reasoning: bool = False
                        ) -> tuple[list[TrainExample], LoadReport]:
    corpus = None
    if corpus_path:
        corpus = {k: beir_document_text(v) for k, v in read_beir_corpus(corpus_path).items()}
    report = LoadReport(source=path)
    examples = []
    for line_no, obj in read_jsonl(path):
        where = f"{path}:{line_no}"
        if "query" not in obj:
            raise DataError(f"{where}: missing field 'query' (fields present: {sorted(obj)})")
        query = obj["query"]
        if not isinstance(query, str):
            raise DataError(f"{where}: field 'query' must be str, got {type(query).__name__}")
        if "positives" not in obj:
            raise DataError(f"{where}: missing field 'positives' (fields present: {sorted(obj)})")
        positives = _texts(obj, "positives", where, corpus, report)
        negatives = _texts(obj, "negatives", where, corpus, report)
        reasoning = obj.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, str):
            raise DataError(f"{where}: field 'reasoning' must be str, got {type(reasoning).__name__}")
        domain = obj.get("domain")
        if not query.strip():
            report.skip("empty query", where)
            continue
        if not positives:
            report.skip("no positive", where)
            continue
        if require_reasoning and not (reasoning or "").strip():
            report.skip("no reasoning (stage 2 needs a teacher trace)", where)
            continue
        examples.append(TrainExample(query, positives, negatives, reasoning, domain, where))
    report.kept = len(examples)
    return examples, report


def load_beir_examples(directory: str, split: str = "train") -> tuple[list[TrainExample], LoadReport]:
    """Join ``queries`` + ``qrels/<split>.tsv`` + ``corpus``: positives are the documents judged relevant (> 0)."""
    data = load_beir(directory, split)
    report = LoadReport(source=os.path.join(directory, "qrels", f"{split}.tsv"))
    examples = []
    for qid, judged in data.qrels.items():
        where = f"{report.source} query {qid}"
        positives = tuple(beir_document_text(data.corpus[d]) for d, rel in judged.items()
                          if rel > 0 and d in data.corpus)
        if not positives:
            report.skip("no positive in the corpus", where)
            continue
        if not data.queries[qid].strip():
            report.skip("empty query", where)
            continue
        examples.append(TrainExample(data.queries[qid], positives, source=where))
    report.kept = len(examples)
    return examples, report


def load_examples(data_cfg, require_reasoning: bool = False) -> list[TrainExample]:
    """Examples for a run, per ``DataConfig``; logs the report and fails when nothing is left to train on."""
    if not data_cfg.train_path:
        raise DataError("data.train_path is empty: set it to a training jsonl or a BEIR folder")
    if data_cfg.format == "beir":
        examples, report = load_beir_examples(data_cfg.train_path, data_cfg.beir_split)
    else:
        examples, report = load_jsonl_examples(data_cfg.train_path, data_cfg.corpus_path, require_reasoning)
    (log.warning if report.num_skipped or report.empty_texts_removed else log.info)("%s", report)
    if not examples:
        raise DataError(f"{data_cfg.train_path}: no usable training examples ({report})")
    return examples
