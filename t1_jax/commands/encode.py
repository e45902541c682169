"""``t1 encode``: a corpus -> document embeddings in a tensorstore store (resumable; see t1_jax.retrieval.store)."""
from __future__ import annotations

import argparse
import json

NAME = "encode"
HELP = "embed a corpus (BEIR corpus.jsonl, BRIGHT jsonl/parquet) into a resumable tensorstore embedding store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from t1_jax.commands.embed import add_model_arguments

    parser.add_argument("--checkpoint", required=True, help="saved model folder or `t1 train` workdir")
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl[.gz] or BRIGHT documents jsonl/parquet")
    parser.add_argument("--out", required=True, help="store folder (local or gs://); rerun to resume")
    parser.add_argument("--dtype", choices=("float16", "float32"), default=None,
                        help="stored dtype (default: retrieval.embedding_dtype)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per store chunk (default: ~4 MiB)")
    parser.add_argument("--group", type=int, default=8, help="encoder batches handed over at once; texts are "
                        "sorted by length within a group (larger = less padding)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from t1_jax.commands.embed import load_encoder
    from t1_jax.data.readers import read_documents
    from t1_jax.retrieval.store import encode_corpus

    encoder, cfg = load_encoder(args, args.checkpoint)
    encoder.show_progress = False  # encode_corpus shows one bar with docs/s
    domain = args.domain

    def embed_fn(texts):
        return encoder.encode_documents(texts, [domain] * len(texts))

    store = encode_corpus(read_documents(args.corpus), embed_fn, args.out,
                          batch_size=encoder.batch_size * max(1, args.group),
                          dtype=args.dtype or cfg.retrieval.embedding_dtype, fingerprint=encoder.fingerprint,
                          chunk_rows=args.chunk_rows, dim=encoder.dim, normalize=encoder.normalize)
    print(json.dumps({"out": args.out, "num_docs": store.num_docs, "dim": store.dim, "dtype": store.dtype,
                      "fingerprint": store.fingerprint}, indent=2))
    return 0
