"""``t1 eval``: score systems (BM25, TREC runs, dense indices) on BEIR and BRIGHT datasets; table + JSON."""
from __future__ import annotations

import argparse
import json
import logging
import sys

NAME = "eval"
HELP = ("evaluate retrieval on BEIR folders and/or BRIGHT domains: nDCG/Recall/MRR/MAP per dataset + average, "
        "with a BM25 baseline row")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="EXP",
                        help="optional experiment (eval.* and retrieval.* settings); flags below override it")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", action="extend")
    data = parser.add_argument_group("datasets")
    data.add_argument("--beir", action="append", default=[], metavar="DIR",
                      help="a BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv); repeatable")
    data.add_argument("--split", default="test", help="BEIR qrels split (default: test)")
    data.add_argument("--bright", default=None, metavar="DIR",
                      help="BRIGHT folder: topics/topics.bright-<domain>-original.jsonl.gz (or examples/<domain>."
                           "jsonl) and qrels/; documents in DIR/documents/<domain>.jsonl|.parquet or --bright-docs")
    data.add_argument("--bright-docs", default=None, metavar="DIR", help="BRIGHT documents folder (<domain>.jsonl|"
                      ".jsonl.gz|.parquet with id/content)")
    data.add_argument("--domains", nargs="+", default=[], help="BRIGHT domains to evaluate (default: all found)")
    data.add_argument("--bright-qrels", default="original", choices=("original", "fixed", "gold_ids"),
                      help="BRIGHT judgements: original (what papers report), fixed (audited), or the gold_ids field")
    systems = parser.add_argument_group("systems (rows of the table)")
    systems.add_argument("--run", action="append", default=[], metavar="NAME=PATH",
                         help="a TREC run; '{dataset}' in PATH is replaced by each dataset/domain name; repeatable")
    systems.add_argument("--dense", action="append", default=[], metavar="NAME=INDEX,QUERIES[,IDS]",
                         help="search a `t1 index` folder with query embeddings (.npy + ids file, or jsonl with "
                              "id/embedding); '{dataset}' placeholders allowed; repeatable")
    systems.add_argument("--bm25", dest="bm25", action="store_true", default=None, help="add the BM25 row")
    systems.add_argument("--no-bm25", dest="bm25", action="store_false", help="leave out the BM25 row")
    model = parser.add_argument_group(
        "a T1 checkpoint (--checkpoint): documents encoded into a store, queries reasoned and embedded, searched, "
        "scored; everything cached under --workdir, so a killed run resumes and a finished one only re-scores")
    model.add_argument("--checkpoint", default=None, metavar="DIR", help="a T1 model folder or a `t1 train` workdir "
                       "(its config.json's text/sampling/retrieval sections apply unless --config is given)")
    model.add_argument("--workdir", default=None, help="where stores, indices, query embeddings, runs, reasoning and "
                       "results.json go (default: runs/eval/<name>-<model fingerprint>)")
    model.add_argument("--name", default=None, help="the model's row in the table (default: the checkpoint's folder "
                       "name)")
    model.add_argument("--long", action="store_true", help="BRIGHT long documents: long_documents/<domain>.* (or "
                       "--bright-docs) judged by gold_ids_long; datasets are named <domain>-long")
    model.add_argument("--no-reasoning", action="store_true", help="add a row with direct queries (prompt + "
                       "<embtoken>, stage-1 style) beside the reasoning row")
    model.add_argument("--search", choices=("auto", "exact", "scann"), default="auto", help="exact search over the "
                       "embeddings, or a ScaNN index (auto: exact below --exact-below documents)")
    model.add_argument("--exact-below", type=int, default=None, metavar="N",
                       help="auto search: exact below N documents (default: retrieval.brute_force_below)")
    model.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <model>/tokenizer)")
    model.add_argument("--batch-size", type=int, default=None, help="rows per encoder batch on this host (default: "
                       "retrieval.encode_batch_size / hosts)")
    model.add_argument("--query-chunk", type=int, default=0, help="queries per resumable part (default: 4 x batch)")
    model.add_argument("--seed", type=int, default=0, help="query sampling seed (temperature > 0)")
    model.add_argument("--mesh-data", type=int, default=-1, help="data-parallel ways (default: all devices)")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="metric cut-offs (default: eval.ks)")
    parser.add_argument("--depth", type=int, default=1000, help="documents retrieved per query by BM25/dense")
    parser.add_argument("--metric", default=None, help="metric shown in the table (default: nDCG@<first k>)")
    parser.add_argument("--out", default=None, help="write all metrics as JSON here")


def _named(spec: str, flag: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"{flag} expects NAME=VALUE, got {spec!r}")
    return name, value


def _checkpoint_systems(args: argparse.Namespace, datasets, systems: dict):
    """The T1 rows (reasoning, and direct queries with --no-reasoning): inputs checked, model loaded, documents
    scanned and the workdir checked against them, all before the first encoding."""
    from t1_jax import fs
    from t1_jax.commands.embed import lead_host_only, load_encoder
    from t1_jax.encoder import fingerprint_of
    from t1_jax.retrieval import checkpoint_eval as ce
    from t1_jax.retrieval.index import settings_from_config
    from t1_jax.stages.build import model_dir

    ce.check_inputs(datasets)
    if not fs.exists(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist (a `t1 train` workdir or a model "
                                f"folder)")
    ce.check_tokenizer(model_dir(args.checkpoint), args.tokenizer, args.config, args.overrides)
    fingerprint = fingerprint_of(model_dir(args.checkpoint))
    name = args.name or ce.model_name(args.checkpoint)
    workdir = args.workdir or f"runs/eval/{name}-{fingerprint[:8]}"
    ce.check_workdir(workdir, datasets, fingerprint, args.checkpoint)
    if not lead_host_only("eval"):  # the checks above run on every host; the work on process 0
        return None
    encoder, cfg = load_encoder(args, args.checkpoint)
    retrieval = cfg.retrieval
    settings = ce.Settings(workdir=workdir, depth=args.depth, search=args.search,
                           exact_below=retrieval.brute_force_below if args.exact_below is None else args.exact_below,
                           query_chunk=args.query_chunk, seed=args.seed, dtype=retrieval.embedding_dtype)
    model_eval = ce.CheckpointEval(encoder, settings, index_settings=settings_from_config(retrieval))
    model_eval.prepare(datasets)
    systems[name] = model_eval.system(reasoning=True, tag=name)
    if args.no_reasoning:
        systems[f"{name} (no reasoning)"] = model_eval.system(reasoning=False, tag=name)
    return model_eval, cfg


def run(args: argparse.Namespace) -> int:
    from t1_jax import config as config_lib
    from t1_jax.retrieval import evaluate as ev

    cfg = config_lib.load_config(args.config, args.overrides) if args.config else config_lib.apply_overrides(
        config_lib.ExperimentConfig(), args.overrides)
    ks = tuple(args.ks or cfg.eval.ks)
    if any(k <= 0 for k in ks):
        raise ValueError(f"--ks must be positive, got {ks}")
    if (args.long or args.domains or args.bright_docs) and not args.bright:
        raise ValueError("--long, --domains and --bright-docs need --bright DIR")
    datasets = [ev.beir_dataset(d, args.split, lazy=bool(args.checkpoint)) for d in args.beir]
    if args.bright:
        datasets += ev.bright_datasets(args.bright, args.bright_docs, args.domains, args.bright_qrels, long=args.long)
    if not datasets:
        raise ValueError("nothing to evaluate: pass --beir DIR and/or --bright DIR")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique (they name the table columns): {names}")

    systems = {}
    model_eval = None
    if args.checkpoint:
        checked = _checkpoint_systems(args, datasets, systems)
        if checked is None:
            return 0
        model_eval, cfg = checked
        ks = tuple(args.ks or cfg.eval.ks)
    if args.bm25 if args.bm25 is not None else cfg.eval.bm25_baseline:
        systems["bm25"] = ev.bm25_system(k=args.depth)
        if model_eval is not None:
            systems["bm25"] = model_eval.bm25(systems["bm25"])
    for spec in args.run:
        name, path = _named(spec, "--run")
        systems[name] = ev.run_file_system(path)
    for spec in args.dense:
        name, value = _named(spec, "--dense")
        parts = value.split(",")
        if len(parts) not in (2, 3):
            raise ValueError(f"--dense expects NAME=INDEX,QUERIES[,IDS], got {spec!r}")
        systems[name] = ev.dense_system(*parts, k=args.depth)
    if not systems:
        raise ValueError("no systems to evaluate: add --run, --dense, or --bm25")

    results = ev.evaluate(datasets, systems, ks)
    metric = args.metric or f"nDCG@{ks[0]}"
    known = set(next(iter(next(iter(results.scores.values()), {}).values()), {})) or {metric}
    if metric not in known:
        raise ValueError(f"--metric {metric!r} is not computed; choose one of {sorted(known)}")
    print(ev.format_table(results, metric))
    for system, skipped in results.skipped.items():
        for dataset, reason in skipped.items():
            print(f"skipped {system} on {dataset}: {reason}")
    from t1_jax import fs

    if args.out:
        ev.write_json(args.out, results)
        print(f"wrote {fs.absolute(args.out)}")
    if model_eval is not None:
        path = fs.join(model_eval.s.workdir, "results.json")
        fs.write_text(path, json.dumps({**results.to_json(), "checkpoint": args.checkpoint,
                                        "fingerprint": model_eval.encoder.fingerprint,
                                        "seconds": model_eval.timings}, indent=2, sort_keys=True) + "\n")
        print(f"t1 eval: everything is under {fs.absolute(model_eval.s.workdir)}: results.json (every metric), and per "
              f"dataset <dataset>/run.trec, reasoning.jsonl, store/")
    named = {_named(spec, "")[0] for spec in args.run + args.dense} | ({"bm25"} if args.bm25 else set())
    unscored = [system for system, per_dataset in results.scores.items() if not per_dataset and system in named]
    if unscored:  # a typo in a run path must not pass as an evaluation (the default BM25 row may be skipped)
        first = next(iter(results.skipped[unscored[0]].values()), "")
        print(f"t1 eval: error: {', '.join(unscored)} scored no dataset (e.g. {first})", file=sys.stderr)
        return 1
    return 0
