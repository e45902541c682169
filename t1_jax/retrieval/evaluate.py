"""BEIR and BRIGHT evaluation: datasets, systems (BM25, TREC runs, dense indices), per-dataset table + average, JSON.

A *dataset* is queries + qrels (+ BRIGHT exclusions) + optionally its documents; a *system* is a function from a
dataset to a run ``{qid: {docid: score}}``. ``evaluate`` scores every system on every dataset with
:func:`t1_jax.retrieval.metrics.evaluate_run`; datasets a system cannot score (no run file, no documents for BM25)
are reported as skipped with the reason, not silently dropped.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import re
from typing import Callable, Mapping, Optional, Sequence

from t1_jax import fs
from t1_jax.data import readers
from t1_jax.retrieval import metrics

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


@dataclasses.dataclass
class Dataset:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    excluded: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    reasoning: dict[str, str] = dataclasses.field(default_factory=dict)
    documents_path: Optional[str] = None  # read lazily (BM25); BEIR corpora are kept in memory instead
    corpus: Optional[dict[str, str]] = None  # id -> text
    missing_docs: Optional[int] = None  # judgements naming documents absent from the corpus (None: corpus unknown)
    domain: Optional[str] = None  # BRIGHT domain (its query/document instructions); None for BEIR

    def documents(self) -> dict[str, str]:
        """id -> text, loaded on first use; counts judgements whose document is missing."""
        if self.corpus is None:
            if not self.documents_path:
                raise FileNotFoundError(f"{self.name}: no documents available (pass the documents folder)")
            self.corpus = dict(readers.read_documents(self.documents_path))
            self.missing_docs = readers.count_missing_docs(self.qrels, self.corpus, self.documents_path)
        return self.corpus


class SkipDataset(Exception):
    """A system has nothing to score on this dataset (e.g. no run file); reported in the table as skipped."""


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


def beir_dataset(directory: str, split: str = "test", name: Optional[str] = None, lazy: bool = False) -> Dataset:
    """``lazy``: the corpus is not read now (``documents()`` streams it in when BM25 needs it)."""
    name = name or os.path.basename(os.path.normpath(directory))
    if lazy:
        data = readers.load_beir(directory, split, with_corpus=False)
        return Dataset(name, data.queries, data.qrels, documents_path=readers.beir_corpus_path(directory))
    data = readers.load_beir(directory, split)
    corpus = {d: readers.beir_document_text(doc) for d, doc in data.corpus.items()}
    return Dataset(name, data.queries, data.qrels, corpus=corpus, missing_docs=data.missing_docs)


_TOPICS_RE = re.compile(r"topics\.bright-(?P<domain>.+)-original\.jsonl(\.gz)?$")


def _bright_topics(directory: str) -> dict[str, str]:
    """domain -> examples file, from ``topics/topics.bright-<domain>-original.jsonl.gz`` or ``examples/<d>.jsonl``."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "topics", "*.jsonl*"))):
        m = _TOPICS_RE.search(os.path.basename(path))
        if m:
            found[m.group("domain")] = path
    for path in sorted(glob.glob(os.path.join(directory, "examples", "*.jsonl*"))):
        found.setdefault(re.sub(r"\.jsonl(\.gz)?$", "", os.path.basename(path)), path)
    if not found:
        raise FileNotFoundError(f"{directory}: no BRIGHT examples (expected topics/topics.bright-<domain>-original"
                                f".jsonl.gz or examples/<domain>.jsonl)")
    return found


def _first_existing(paths: Sequence[str]) -> Optional[str]:
    return next((p for p in paths if fs.exists(p)), None)


def bright_datasets(directory: str, docs_dir: Optional[str] = None, domains: Sequence[str] = (),
                    qrels: str = "original", long: bool = False) -> list[Dataset]:
    """One dataset per BRIGHT domain. ``qrels``: original (qrels/*.txt, = gold_ids), fixed (audited), or gold_ids.

    ``long``: the long-document setting: documents from ``long_documents/<domain>.*`` (or ``docs_dir``), judgements
    from each example's ``gold_ids_long``; the dataset is named ``<domain>-long``. Without ``domains``, the domains
    whose examples carry long judgements (BRIGHT has them for the StackExchange domains and pony)."""
    if qrels not in ("original", "fixed", "gold_ids"):
        raise ValueError(f"BRIGHT qrels must be original, fixed or gold_ids; got {qrels!r}")
    topics = _bright_topics(directory)
    unknown = [d for d in domains if d not in topics]
    if unknown:
        raise ValueError(f"unknown BRIGHT domain(s) {unknown}; available: {sorted(topics)}")
    docs_dir = docs_dir or os.path.join(directory, "long_documents" if long else "documents")
    out = []
    for domain in (domains or sorted(topics)):
        docs = _first_existing([os.path.join(docs_dir, domain + ext) for ext in (".jsonl", ".jsonl.gz", ".parquet")])
        if long:
            try:
                data = readers.load_bright(topics[domain], None, None, gold_field="gold_ids_long")
            except readers.DataError:
                if domains:
                    raise ValueError(f"BRIGHT domain {domain!r} has no long-document judgements (gold_ids_long) in "
                                     f"{topics[domain]}") from None
                log.info("BRIGHT %s: no gold_ids_long, left out of the long-document setting", domain)
                continue
            out.append(Dataset(f"{domain}-long", data.queries, data.qrels, data.excluded, data.reasoning,
                               documents_path=docs, domain=domain))
            continue
        suffix = ".fixed.txt" if qrels == "fixed" else ".txt"
        qrels_path = None
        if qrels != "gold_ids":
            qrels_path = _first_existing([os.path.join(directory, "qrels", f"qrels.bright-{domain}{suffix}")])
            if qrels_path is None:
                log.warning("BRIGHT %s: no qrels file for %s judgements, using gold_ids", domain, qrels)
        exclude = _first_existing([os.path.join(directory, "qrels", f"exclude.bright-{domain}.txt")])
        data = readers.load_bright(topics[domain], qrels_path, exclude)
        out.append(Dataset(domain, data.queries, data.qrels, data.excluded, data.reasoning, documents_path=docs,
                           domain=domain))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------------------------------


def _fill(pattern: str, dataset: Dataset) -> str:
    return pattern.replace("{dataset}", dataset.name)


def bm25_system(k: int = 1000, settings=None) -> Callable[[Dataset], Run]:
    def system(dataset: Dataset) -> Run:
        from t1_jax.retrieval.bm25 import BM25Settings, bm25_run

        try:
            corpus = dataset.documents()
        except FileNotFoundError as e:
            raise SkipDataset(str(e)) from None
        qids = list(dataset.queries)
        return bm25_run(list(corpus), list(corpus.values()), qids, [dataset.queries[q] for q in qids], k=k,
                        settings=settings or BM25Settings())

    return system


def run_file_system(pattern: str) -> Callable[[Dataset], Run]:
    """A TREC run file per dataset; ``{dataset}`` in the pattern is replaced by the dataset name."""
    def system(dataset: Dataset) -> Run:
        from t1_jax.retrieval.trec import read_run

        path = _fill(pattern, dataset)
        if not fs.exists(path):
            raise SkipDataset(f"no run file {path}")
        return read_run(path)

    return system


def dense_system(index_pattern: str, queries_pattern: str, ids_pattern: Optional[str] = None,
                 k: int = 1000) -> Callable[[Dataset], Run]:
    """Search a ScaNN index folder (``t1 index``) with precomputed query embeddings (``.npy`` + ids, or jsonl)."""
    def system(dataset: Dataset) -> Run:
        from t1_jax.retrieval.index import load_index
        from t1_jax.retrieval.queries import load_query_embeddings, search_to_run

        index_dir, queries_path = _fill(index_pattern, dataset), _fill(queries_pattern, dataset)
        for path in (index_dir, queries_path):
            if not fs.exists(path):
                raise SkipDataset(f"{path} does not exist")
        qids, q_bd, _ = load_query_embeddings(queries_path, _fill(ids_pattern, dataset) if ids_pattern else None)
        return search_to_run(load_index(index_dir, expected_dim=q_bd.shape[1]), q_bd, qids, k)

    return system


# --------------------------------------------------------------------------------------------------------------------
# Evaluation and reporting
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    ks: tuple[int, ...]
    datasets: dict[str, dict]  # name -> facts (queries, judged, missing docs)
    scores: dict[str, dict[str, dict[str, float]]]  # system -> dataset -> metric -> value
    skipped: dict[str, dict[str, str]]  # system -> dataset -> reason

    def average(self, system: str) -> dict[str, float]:
        rows = list(self.scores.get(system, {}).values())
        if not rows:
            return {}
        return {m: math.fsum(r[m] for r in rows) / len(rows) for m in rows[0]}

    def to_json(self) -> dict:
        return {"ks": list(self.ks), "datasets": self.datasets, "scores": self.scores,
                "average": {s: self.average(s) for s in self.scores}, "skipped": self.skipped}


def evaluate(datasets: Sequence[Dataset], systems: Mapping[str, Callable[[Dataset], Run]],
             ks: Sequence[int] = (10, 100)) -> Results:
    results = Results(tuple(ks), {}, {s: {} for s in systems}, {s: {} for s in systems})
    for dataset in datasets:
        for name, system in systems.items():
            try:
                run = system(dataset)
            except SkipDataset as e:
                results.skipped[name][dataset.name] = str(e)
                log.warning("%s on %s skipped: %s", name, dataset.name, e)
                continue
            cover = metrics.coverage(run, dataset.qrels)
            if cover["answered"] < cover["judged_queries"]:
                log.warning("%s on %s: %d of %d judged queries have no results (scored 0)", name, dataset.name,
                            cover["judged_queries"] - cover["answered"], cover["judged_queries"])
            results.scores[name][dataset.name] = metrics.evaluate_run(run, dataset.qrels, ks, dataset.excluded)
        results.datasets[dataset.name] = {"queries": len(dataset.queries), "judged_queries": len(dataset.qrels),
                                          "judgements": sum(len(d) for d in dataset.qrels.values()),
                                          "missing_docs": dataset.missing_docs}
    return results


def format_table(results: Results, metric: str = "nDCG@10", scale: float = 100.0) -> str:
    """Systems x datasets (+ average) for one metric; ``-`` where a system was skipped."""
    names = list(results.datasets)
    width = max([len(n) for n in names] + [7])
    sys_width = max([len(s) for s in results.scores] + [6])
    header = f"{metric:<{sys_width}}  " + "  ".join(f"{n:>{width}}" for n in names) + f"  {'average':>{width}}"
    lines = [header, "-" * len(header)]
    for system, per_dataset in results.scores.items():
        cells = [f"{per_dataset[n][metric] * scale:>{width}.2f}" if n in per_dataset else f"{'-':>{width}}"
                 for n in names]
        avg = results.average(system)
        cells.append(f"{avg[metric] * scale:>{width}.2f}" if avg else f"{'-':>{width}}")
        lines.append(f"{system:<{sys_width}}  " + "  ".join(cells))
    missing = {n: f["missing_docs"] for n, f in results.datasets.items() if f.get("missing_docs")}
    if missing:
        lines.append(f"judgements naming documents missing from the corpus: {missing}")
    return "\n".join(lines)


def write_json(path: str, results: Results) -> None:
    fs.write_text(path, json.dumps(results.to_json(), indent=2, sort_keys=True) + "\n")
