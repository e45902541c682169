"""``t1 search``: queries -> (reasoning +) embeddings -> top-k -> TREC run file + reasoning jsonl.

Where query embeddings come from is a registry, ``QUERY_SOURCES`` (name -> ``(args) -> QueryBatch``): ``model``
(``--checkpoint``: a T1 model writes each query's reasoning and embeds at ``<embtoken>``; the default with a
checkpoint) and ``embeddings`` (precomputed ``.npy`` + ids, or jsonl of ``{id, embedding[, reasoning]}``). Everything
after the source (search, run file, reasoning file) is shared; another source registers itself here with its flags in
``add_arguments``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import posixpath
import sys
from typing import Callable

NAME = "search"
HELP = "search an index with query embeddings; write a TREC run (qid Q0 docid rank score tag) and reasoning jsonl"


@dataclasses.dataclass
class QueryBatch:
    ids: list
    embeddings: "object"  # np.ndarray [b, d] float32
    reasoning: dict  # qid -> reasoning text ("" when none)


def _from_embeddings(args: argparse.Namespace) -> QueryBatch:
    from t1_jax.retrieval.queries import load_query_embeddings

    if not args.query_embeddings:
        raise ValueError("--query-embeddings is required for --queries-from embeddings")
    ids, q_bd, reasoning = load_query_embeddings(args.query_embeddings, args.query_ids)
    return QueryBatch(ids, q_bd, reasoning)


def _from_model(args: argparse.Namespace) -> QueryBatch:
    """Encode queries with a T1 checkpoint: the sampler writes reasoning, the embedding is read at <embtoken>."""
    import json as _json

    from t1_jax.commands.embed import load_encoder, read_query_rows

    if not args.checkpoint:
        raise ValueError("--checkpoint is required for --queries-from model")
    if bool(args.queries) == bool(args.query):
        raise ValueError("give either --queries FILE or --query TEXT (repeatable) with --checkpoint")
    if args.queries:
        ids, texts, domains = read_query_rows(args.queries, args.domain)
    else:
        ids, texts, domains = [f"q{i}" for i in range(len(args.query))], list(args.query), None
        domains = [args.domain] * len(texts)
    encoder, _ = load_encoder(args, args.checkpoint)
    emb, reasoning, stats = encoder.encode_queries(texts, domains, reasoning=not args.no_reasoning, seed=args.seed)
    print(_json.dumps({"query_encoding": stats}))
    if args.query:
        for qid, text, r in zip(ids, texts, reasoning):
            print(f"{qid}: {text}\n  reasoning: {r}")
    args.fingerprint = encoder.fingerprint if args.fingerprint is None else args.fingerprint
    return QueryBatch(ids, emb, dict(zip(ids, reasoning)))


QUERY_SOURCES: dict[str, Callable[[argparse.Namespace], QueryBatch]] = {"embeddings": _from_embeddings,
                                                                        "model": _from_model}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="EXP", help="optional experiment (retrieval.top_k, ...)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", action="extend")
    parser.add_argument("--queries-from", choices=sorted(QUERY_SOURCES), default=None,
                        help="where query embeddings come from (default: model with --checkpoint, else embeddings)")
    parser.add_argument("--query-embeddings", help=".npy [num_queries, dim] (with --query-ids) or jsonl of "
                        "{id, embedding[, reasoning]}")
    parser.add_argument("--query-ids", help="query ids for a .npy, one per line in row order")
    model = parser.add_argument_group("model-based query encoding (--checkpoint)")
    model.add_argument("--checkpoint", default=None, help="T1 model folder or `t1 train` workdir: queries are "
                       "encoded by generating reasoning, then embedding at <embtoken>")
    model.add_argument("--queries", default=None, help="jsonl of {id, query|text[, domain]}")
    model.add_argument("--query", action="append", default=[], help="a query text (repeatable; ids q0, q1, ...)")
    model.add_argument("--no-reasoning", action="store_true", help="prompt + <embtoken> without generation")
    model.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    model.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <model>/tokenizer)")
    model.add_argument("--batch-size", type=int, default=None, help="rows per batch on this host (default: retrieval.encode_batch_size, which is per slice, / hosts)")
    model.add_argument("--domain", default=None, help="BRIGHT domain instructions for every query")
    model.add_argument("--mesh-data", type=int, default=-1, help="data-parallel ways (default: all devices)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--index", help="a `t1 index` folder (ScaNN)")
    target.add_argument("--exact", metavar="DOCS", help="exact search instead: an embedding store folder, or a .npy "
                        "of document embeddings (with --doc-ids); sharded over all local devices")
    parser.add_argument("--doc-ids", help="document ids for --exact DOCS.npy")
    parser.add_argument("--fingerprint", default=None, help="refuse an index built from another model")
    parser.add_argument("--k", type=int, default=None, help="documents per query (default: retrieval.top_k)")
    parser.add_argument("--tag", default="t1", help="run tag (last TREC column)")
    parser.add_argument("--out", default=None, help="TREC run file to write (without it: print the top results)")
    parser.add_argument("--show", type=int, default=5, help="results per query printed when there is no --out")
    parser.add_argument("--corpus", default=None, help="documents (BEIR corpus.jsonl, BRIGHT jsonl/parquet) whose "
                        "texts are printed beside the ids when there is no --out")
    parser.add_argument("--reasoning-out", default=None,
                        help="jsonl of {id, reasoning} per query (default: <out>.reasoning.jsonl)")


def _searcher(args: argparse.Namespace, dim: int):
    if args.index:
        from t1_jax.retrieval.index import load_index

        return load_index(args.index, expected_dim=dim, expected_fingerprint=args.fingerprint)
    import numpy as np

    from t1_jax.config import MeshConfig
    from t1_jax.mesh import make_mesh
    from t1_jax.retrieval.exact import ExactIndex

    if args.exact.endswith(".npy"):
        from t1_jax.retrieval.queries import load_embeddings

        ids, docs = load_embeddings(args.exact, args.doc_ids, "document embeddings")
    else:
        from t1_jax.retrieval.store import EmbeddingStore

        store = EmbeddingStore.open(args.exact)
        if args.fingerprint is not None and store.fingerprint != args.fingerprint:
            raise ValueError(f"{args.exact}: embeddings come from model {store.fingerprint!r}, not "
                             f"{args.fingerprint!r}")
        ids, docs = store.ids, store.read()
    if docs.shape[1] != dim:
        raise ValueError(f"{args.exact}: documents have dimension {docs.shape[1]} but the queries have {dim}")
    return ExactIndex(np.asarray(docs), ids, mesh=make_mesh(MeshConfig()))


def write_reasoning(path: str, batch: QueryBatch) -> None:
    from t1_jax import fs

    fs.write_text(path, "".join(json.dumps({"id": qid, "reasoning": batch.reasoning.get(qid, "")},
                                           ensure_ascii=False) + "\n" for qid in batch.ids))


def _corpus_texts(path) -> dict:
    if not path:
        return {}
    from t1_jax.data.readers import read_documents

    return dict(read_documents(path))


def print_results(run_: dict, query_ids: list, show: int, texts: dict) -> None:
    """The top ``show`` documents per query: rank, score, id and (when known) text."""
    for qid in query_ids:
        print(f"{qid}: top {show}")
        ranked = sorted(run_[qid].items(), key=lambda kv: -kv[1])[:show]
        for rank, (doc_id, score) in enumerate(ranked, 1):
            text = texts.get(doc_id, "")
            print(f"  {rank:>3}. {score:8.4f}  {doc_id}" + (f"  {text[:100]}" if text else ""))


def run(args: argparse.Namespace) -> int:
    from t1_jax import config as config_lib
    from t1_jax.commands.embed import lead_host_only
    from t1_jax.retrieval.queries import search_to_run
    from t1_jax.retrieval.trec import write_run

    if not lead_host_only("search"):
        return 0
    cfg = config_lib.load_config(args.config, args.overrides) if args.config else config_lib.apply_overrides(
        config_lib.ExperimentConfig(), args.overrides)
    k = cfg.retrieval.top_k if args.k is None else args.k
    if k <= 0:
        raise ValueError(f"--k must be positive, got {k}")
    source = args.queries_from or ("model" if args.checkpoint else "embeddings")
    batch = QUERY_SOURCES[source](args)
    searcher = _searcher(args, int(batch.embeddings.shape[1]))
    num_docs = len(searcher.ids)
    if k > num_docs:  # a run cannot hold more documents than the corpus has: say so instead of announcing top-k
        print(f"--k {k} is more than the {num_docs} documents searched: returning all {num_docs} per query",
              file=sys.stderr)
        k = num_docs
    run_ = search_to_run(searcher, batch.embeddings, batch.ids, k)
    if not args.out:
        print_results(run_, batch.ids, args.show, _corpus_texts(args.corpus))
        return 0
    write_run(args.out, run_, tag=args.tag)
    reasoning_path = args.reasoning_out or posixpath.splitext(args.out)[0] + ".reasoning.jsonl"
    write_reasoning(reasoning_path, batch)
    print(f"wrote {len(run_)} queries x top-{k} to {args.out} and reasoning to {reasoning_path}")
    return 0
