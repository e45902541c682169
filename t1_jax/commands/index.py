"""``t1 index``: document embeddings (an embedding store, or any encoder's ``.npy`` + ids) -> a ScaNN index folder."""
from __future__ import annotations

import argparse
import dataclasses
import json

NAME = "index"
HELP = "build a ScaNN index from document embeddings (tensorstore store or .npy + ids), serialized with its ids"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="EXP", help="optional experiment (retrieval.* settings)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", action="extend")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="embedding store folder written by `t1 encode` (ids and fingerprint included)")
    src.add_argument("--embeddings", help="a [num_docs, dim] .npy of document embeddings (any encoder)")
    parser.add_argument("--ids", help="document ids for --embeddings, one per line in row order")
    parser.add_argument("--fingerprint", default=None, help="model fingerprint recorded in the index (default: the "
                        "store's; empty for .npy)")
    parser.add_argument("--out", required=True, help="index folder to write")
    parser.add_argument("--mode", choices=("auto", "brute_force", "tree_ah"), default=None,
                        help="default: retrieval.index_mode (auto: brute force under retrieval.brute_force_below docs)")
    parser.add_argument("--num-leaves", type=int, default=None, help="tree leaves (0 = about sqrt(num_docs))")
    parser.add_argument("--leaves-to-search", type=int, default=None, help="leaves searched per query (0 = auto)")
    parser.add_argument("--reorder-k", type=int, default=None, help="candidates re-scored exactly (0 = auto)")
    parser.add_argument("--target-recall", type=float, default=None,
                        help="tree_ah: tune leaves searched / reorder_k at build time until recall@10 against exact "
                             "search reaches this (default retrieval.target_recall = 0.95; 0 = no tuning)")
    parser.add_argument("--tune-queries", default=None, metavar="Q.npy",
                        help="query embeddings [m, dim] to tune on (default: 500 sampled documents, self excluded)")
    parser.add_argument("--no-normalize", action="store_true", help="index .npy embeddings as given (default: "
                        "L2-normalise rows, as the model's embeddings are)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from t1_jax import config as config_lib
    from t1_jax.retrieval.index import build_index, settings_from_config

    cfg = config_lib.load_config(args.config, args.overrides) if args.config else config_lib.apply_overrides(
        config_lib.ExperimentConfig(), args.overrides)
    problems = cfg.retrieval.validate()
    if problems:
        raise config_lib.ConfigError("; ".join(problems))
    settings = settings_from_config(cfg.retrieval)
    overrides = {"mode": args.mode, "num_leaves": args.num_leaves, "num_leaves_to_search": args.leaves_to_search,
                 "reorder_k": args.reorder_k, "target_recall": args.target_recall}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})

    if args.store:
        from t1_jax.retrieval.store import EmbeddingStore

        store = EmbeddingStore.open(args.store)
        emb_ed, ids = store.read().astype(np.float32), store.ids
        fingerprint = store.fingerprint if args.fingerprint is None else args.fingerprint
    else:
        from t1_jax.retrieval.queries import load_embeddings

        ids, emb_ed = load_embeddings(args.embeddings, args.ids, "document embeddings")
        fingerprint = args.fingerprint or ""
        if not args.no_normalize:
            norms = np.linalg.norm(emb_ed, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError(f"{args.embeddings}: row {int(np.argmin(norms[:, 0]))} is all zeros")
            emb_ed = emb_ed / norms
    tune_queries = None
    if args.tune_queries:
        from t1_jax.retrieval.queries import load_npy

        tune_queries = np.asarray(load_npy(args.tune_queries, "tuning query embeddings"), np.float32)
        if tune_queries.ndim != 2 or tune_queries.shape[1] != emb_ed.shape[1]:
            raise ValueError(f"{args.tune_queries}: expected [num_queries, {emb_ed.shape[1]}] query embeddings, got "
                             f"shape {tune_queries.shape}")
    index = build_index(emb_ed, ids, args.out, fingerprint, settings, tune_queries=tune_queries)
    summary = {"out": args.out, "num_docs": index.num_docs, "dim": index.dim,
               "build_seconds": index.meta["build_seconds"], "settings": index.meta["settings"]}
    if "tuning" in index.meta:
        t = index.meta["tuning"]
        summary["tuning"] = {key: t[key] for key in ("recall", "reached", "k", "num_queries", "source", "seconds")}
    print(json.dumps(summary, indent=2))
    return 0
