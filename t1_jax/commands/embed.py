"""``t1 embed``: queries (with the model's reasoning) or documents from jsonl -> embeddings (.npy or .jsonl).

Outputs: ``OUT.npy`` + ``OUT.ids.txt`` (+ ``OUT.reasoning.jsonl`` for queries), or ``OUT.jsonl`` with one
``{"id", "embedding"[, "reasoning"]}`` per line, which ``t1 search --query-embeddings`` reads directly.
"""
from __future__ import annotations

import argparse
import json

NAME = "embed"
HELP = "embed queries (reasoning, then <embtoken>) or documents with a trained T1 model; .npy or .jsonl out"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that load an Encoder (embed, encode, search)."""
    parser.add_argument("--config", default=None, metavar="EXP", help="experiment whose text/sampling/retrieval "
                        "sections apply (default: the run's config.json beside the model, decoding greedily with "
                        "the budget in model/inference.json)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", action="extend",
                        help="dotted overrides, e.g. --set sampling.max_new_tokens=128 sampling.temperature=0.7")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <model>/tokenizer)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch on this host (default: retrieval.encode_batch_size, which is per slice, / hosts)")
    parser.add_argument("--domain", default=None, help="BRIGHT domain whose instructions to use for every row "
                        "(a query row's own 'domain' field wins)")
    parser.add_argument("--mesh-data", type=int, default=-1, help="data-parallel ways of the mesh over this "
                        "host's devices (default: all of them); batches are split over it")


def load_encoder(args: argparse.Namespace, checkpoint: str):
    from t1_jax import config as config_lib
    from t1_jax import distributed, fs, inference_defaults
    from t1_jax.config import MeshConfig
    from t1_jax.encoder import Encoder
    from t1_jax.mesh import make_mesh
    from t1_jax.model.params_io import model_dir

    if not fs.exists(checkpoint):  # before anything else: "no tokenizer given" used to be the first complaint
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist (a `t1 train` workdir or a model folder)")
    if args.config:
        cfg = config_lib.load_config(args.config, args.overrides)
        source = f"--config {args.config}"
        distributed.initialize(cfg.mesh)
    else:  # the run's config.json, with the model's inference decoding instead of its training sampling
        base, source = inference_defaults.run_config(model_dir(checkpoint))
        cfg = config_lib.apply_overrides(base, args.overrides)
        distributed.initialize(config_lib.MeshConfig())  # a trained run's mesh section names its training slice
    if any(o.startswith("sampling.") for o in args.overrides):
        source += " and --set sampling.*"
    # A mesh over this process's devices only: on several hosts each process encodes its own chunks independently
    # (t1_jax.retrieval.store assigns them), so no collective may span hosts.
    import jax

    mesh = make_mesh(MeshConfig(data=args.mesh_data), devices=jax.local_devices())
    kwargs = {} if args.batch_size is None else {"batch_size": args.batch_size}
    return Encoder.from_checkpoint(checkpoint, mesh=mesh, tokenizer=args.tokenizer, config=cfg, config_source=source,
                                   **kwargs), cfg


def read_query_rows(path: str, default_domain=None) -> tuple[list[str], list[str], list]:
    """(ids, texts, domains) from a jsonl of {id|_id|qid, query|text[, domain]} (BEIR queries / BRIGHT examples)."""
    from t1_jax.data.readers import DataError, read_jsonl, require

    ids, texts, domains, seen = [], [], [], {}
    for line_no, obj in read_jsonl(path):
        key = next((k for k in ("id", "_id", "qid") if k in obj), None)
        if key is None:
            raise DataError(f"{path}:{line_no}: missing id field (id, _id or qid)")
        qid = str(obj[key])
        if qid in seen:
            raise DataError(f"{path}:{line_no}: duplicate query id {qid!r} (first at line {seen[qid]})")
        seen[qid] = line_no
        ids.append(qid)
        texts.append(require(obj, "query" if "query" in obj else "text", path, line_no))
        domains.append(obj.get("domain") or default_domain)
    if not ids:
        raise DataError(f"{path}: no queries (empty file)")
    return ids, texts, domains


def write_embeddings(out: str, ids, emb_ed, reasoning=None) -> list[str]:
    """Write ``.npy`` (+ ids, + reasoning jsonl) or ``.jsonl``; returns the paths written."""
    import numpy as np

    from t1_jax import fs
    from t1_jax.retrieval.queries import write_ids

    if out.endswith(".jsonl"):
        rows = []
        for i, x in enumerate(ids):
            row = {"id": x, "embedding": [float(v) for v in emb_ed[i]]}
            if reasoning is not None:
                row["reasoning"] = reasoning[i]
            rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        fs.write_text(out, "".join(rows))
        return [out]
    if not out.endswith(".npy"):
        raise ValueError(f"--out must end with .npy or .jsonl, got {out!r}")
    stem = out[:-len(".npy")]
    fs.makedirs(fs.dirname(out))
    with fs.open(out, "wb") as f:
        np.save(f, np.asarray(emb_ed, np.float32))
    write_ids(stem + ".ids.txt", ids)
    written = [out, stem + ".ids.txt"]
    if reasoning is not None:
        fs.write_text(stem + ".reasoning.jsonl", "".join(json.dumps({"id": x, "reasoning": r}, ensure_ascii=False)
                                                         + "\n" for x, r in zip(ids, reasoning)))
        written.append(stem + ".reasoning.jsonl")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="saved model folder or `t1 train` workdir")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--queries", help="jsonl of {id, query|text[, domain]}")
    src.add_argument("--docs", help="documents: BEIR corpus.jsonl or BRIGHT jsonl/parquet (id, content)")
    parser.add_argument("--out", required=True, help="OUT.npy (+ OUT.ids.txt, OUT.reasoning.jsonl) or OUT.jsonl")
    parser.add_argument("--no-reasoning", action="store_true", help="queries: prompt + <embtoken> in one pass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    add_model_arguments(parser)


def lead_host_only(command: str) -> bool:
    """On a multi-host slice, only process 0 runs a command that writes one set of outputs (embed, search): the
    other hosts would repeat the same generation and race on the same files. ``t1 encode`` splits a corpus over the
    hosts instead (its store assigns chunks)."""
    import jax

    from t1_jax import distributed
    from t1_jax.config import MeshConfig

    distributed.initialize(MeshConfig())
    if jax.process_index() == 0:
        return True
    print(f"t1 {command}: process {jax.process_index()} of {jax.process_count()}: nothing to do (process 0 writes "
          "the outputs; use `t1 encode` to spread a corpus over the hosts)")
    return False


def run(args: argparse.Namespace) -> int:
    if not lead_host_only("embed"):
        return 0
    encoder, _ = load_encoder(args, args.checkpoint)
    if args.docs:
        from t1_jax.data.readers import read_documents

        docs = list(read_documents(args.docs))
        ids = [d for d, _ in docs]
        emb = encoder.encode_documents([t for _, t in docs], [args.domain] * len(docs))
        written = write_embeddings(args.out, ids, emb)
        stats = {"documents": len(ids)}
    else:
        ids, texts, domains = read_query_rows(args.queries, args.domain)
        emb, reasoning, stats = encoder.encode_queries(texts, domains, reasoning=not args.no_reasoning,
                                                       seed=args.seed)
        written = write_embeddings(args.out, ids, emb, reasoning)
    print(json.dumps({"written": written, "dim": int(emb.shape[1]), **stats}, indent=2))
    return 0
