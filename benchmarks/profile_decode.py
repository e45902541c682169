"""Where a CPU decode step's time goes: one profiled greedy ``sample`` call, its XLA ops summed per step.

Builds a random Qwen3 (Qwen3-0.6B widths, ``--layers`` deep, float32), prepares the decode weights as the engine does
(per-layer split, 2 MiB pages), runs one warm ``sample`` call of ``--new`` tokens under ``jax.profiler`` with XLA's
per-op trace events on, and splits each decode step (LM head to LM head) into:

- multi-threaded ops: those the second intra-op thread joined (the weight products and the LM head, run by YNNPACK
  over both threads), with the bytes of weights a step reads and the rate that makes;
- the second thread's join delay: from an op's start to the moment the other thread starts its share. The first
  thread works alone meanwhile, and the split is static, so the op ends about that much later;
- single-threaded ops: everything else (attention over the KV cache, norms, RoPE, cache writes, sampling);
- sampling: from the end of the LM head to the start of the first layer's first product (the greedy choice, the
  log-probabilities, the loop's bookkeeping, the first norm).

    python benchmarks/profile_decode.py                # 28 layers, batch 4, 32-token prompt, 32 new tokens
    python benchmarks/profile_decode.py --layers 4     # faster

Step times under the profiler are a few percent above ``bench_decode.py``'s; this script is for the split, not the
figure. Run it on a quiet machine (load average below ~1.5 on 2 cores).
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import glob
import gzip
import itertools
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
DUMP_DIR = tempfile.mkdtemp(prefix="t1_profile_decode_")  # the decode program's optimised HLO: op name -> weight
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
                           f" --xla_dump_to={DUMP_DIR} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=_decode").strip()

PRODUCTS_PER_LAYER = 4  # q/k/v (fused), o, gate/up (fused), down: the CPU decode layout (t1_jax.model.qwen3.split_layers)
HOUSEKEEPING = ("$", "end:", "ThreadpoolListener", "SlinkyThreadPool", "ThunkExecutor", "MutexLock")


def load_events(trace_dir: str) -> list[dict]:
    path = glob.glob(f"{trace_dir}/**/*perfetto_trace.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    return sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])


def product_ops(dump_dir: str, weight_shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Op name -> weight name, for the products of the decode program: fusions that reduce (or dot) over a parameter
    of that weight's shape, or of its [out, in] flattening (not the embedding lookup, which gathers from the table
    the LM head reads)."""
    paths = sorted(glob.glob(f"{dump_dir}/*_decode*after_optimizations.txt"))
    with open(paths[-1]) as f:
        text = f.read()
    by_shape = {}
    for name, shape in weight_shapes.items():
        by_shape[",".join(map(str, shape))] = name
        by_shape[f"{shape[0]},{int(np.prod(shape[1:]))}"] = name
    computation_weight = {}
    for m in re.finditer(r"^%?([\w.\-]+) \(([^)]*)\) -> ", text, re.MULTILINE):
        body = text[m.end():text.find("\n}", m.end())]
        if not re.search(r" (reduce|dot)\(", body):
            continue
        for shape in re.findall(r"f32\[([\d,]+)\]", m.group(2)):
            if shape in by_shape:
                computation_weight[m.group(1)] = by_shape[shape]
    ops = {}
    for m in re.finditer(r"%([\w.\-]+) = [^\n]*? fusion\([^\n]*?calls=%([\w.\-]+)", text):
        if m.group(2) in computation_weight:
            ops[m.group(1)] = computation_weight[m.group(2)]
    return ops


def split_steps(events: list[dict], lm_head: str) -> list[tuple[float, float]]:
    starts = [e["ts"] for e in events if e["name"] == lm_head]
    return list(itertools.pairwise(starts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args()

    import jax
    from flax import nnx

    from t1_jax.config import SamplingConfig
    from t1_jax.model.counts import layer_shapes
    from t1_jax.model.presets import PRESETS
    from t1_jax.model.qwen3 import Qwen3
    from t1_jax.sampler import layer_weights, sample

    cfg = dataclasses.replace(PRESETS["qwen3-0.6b"], num_layers=args.layers, param_dtype="float32",
                              compute_dtype="float32")
    graphdef, params = nnx.split(Qwen3(cfg, rngs=nnx.Rngs(0)))
    layers = layer_weights(graphdef, params, None, huge_pages=True)
    ids = np.random.default_rng(0).integers(0, 150_000, (args.batch, args.prompt)).astype(np.int32)
    valid = np.ones_like(ids, bool)
    settings = SamplingConfig(max_new_tokens=args.new - 1, temperature=0.0)
    unused_id = cfg.vocab_size - 1  # as <embtoken>: an id greedy decoding of random weights is unlikely to pick

    def run():
        return jax.block_until_ready(sample(graphdef, params, ids, valid, jax.random.key(0), settings,
                                            emb_token_id=unused_id, layers=layers))

    run()  # compile
    run()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run()
        events = load_events(trace_dir)

    base = layer_shapes(cfg)
    shapes = {"qkv": ((cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, cfg.hidden_size),
              "o": base["o_proj"], "gate_up": (2 * cfg.intermediate_size, cfg.hidden_size), "down": base["down_proj"],
              "lm_head": (cfg.vocab_size, cfg.hidden_size)}  # the CPU decode layout's weights (split_layers)
    weight_of = product_ops(DUMP_DIR, shapes)
    shutil.rmtree(DUMP_DIR, ignore_errors=True)
    lm_head = next(name for name, weight in weight_of.items() if weight == "lm_head")

    ops = [e for e in events if not e["name"].startswith(HOUSEKEEPING)]
    joins = [e for e in events if e["name"] == "ThreadpoolListener::StartRegion"]
    join_ts = [e["ts"] for e in joins]
    steps = split_steps(ops, lm_head)[2:]  # the first steps follow the prefill
    if not steps:
        print("too few decode steps in the trace; use a larger --new", file=sys.stderr)
        return 1

    rows = []
    for t0, t1 in steps:
        in_step = [e for e in ops if t0 <= e["ts"] < t1]
        multi, single, delays, per_weight = 0.0, 0.0, [], {}
        for e in in_step:
            i = bisect.bisect_left(join_ts, e["ts"])
            if i < len(joins) and join_ts[i] < e["ts"] + e["dur"] and joins[i]["tid"] != e["tid"]:
                multi += e["dur"]
                delays.append(join_ts[i] - e["ts"])
            else:
                single += e["dur"]
            if e["name"] in weight_of:
                per_weight[weight_of[e["name"]]] = per_weight.get(weight_of[e["name"]], 0.0) + e["dur"]
        lm = next(e for e in in_step if e["name"] == lm_head)
        first = next((e for e in in_step if weight_of.get(e["name"]) == "qkv"), None)
        sampling = first["ts"] - lm["ts"] - lm["dur"] if first else float("nan")
        rows.append(dict(step=t1 - t0, multi=multi, single=single, delays=delays, sampling=sampling,
                         products=sum(per_weight.values()), **{f"w_{k}": v for k, v in per_weight.items()}))

    def med(key):
        return float(np.median([r[key] for r in rows])) / 1e3

    weight_bytes = {name: 4 * int(np.prod(shape)) * (1 if name == "lm_head" else args.layers)
                    for name, shape in shapes.items()}
    delays = np.concatenate([r["delays"] for r in rows]) / 1e3
    step_ms = med("step")
    print(f"Qwen3-0.6B widths, {args.layers} layers, batch {args.batch}, cache {args.prompt + args.new} slots; "
          f"{len(rows)} decode steps profiled (medians per step)")
    print(f"step (LM head to LM head)      {step_ms:7.1f} ms")
    print(f"  weight products              {med('products'):7.1f} ms   {sum(weight_bytes.values()) / 1e9:.3f} GB "
          f"-> {sum(weight_bytes.values()) / med('products') / 1e6:.1f} GB/s while they run")
    for name in ("qkv", "o", "gate_up", "down", "lm_head"):
        shape = "x".join(map(str, shapes[name]))
        count = "" if name == "lm_head" else f" x {args.layers}"
        label = "o (+ attention P.V)" if name == "o" else name
        title = f"{label} [{shape}]{count}"
        print(f"    {title:38s} {med('w_' + name):7.1f} ms   "
              f"{weight_bytes[name] / med('w_' + name) / 1e6:5.1f} GB/s")
    print(f"  everything else              {step_ms - med('products'):7.1f} ms   (attention, norms, RoPE, cache "
          f"writes, sampling, dispatch)")
    print(f"    sampling (LM head -> first layer's q/k/v) {med('sampling'):5.2f} ms")
    print(f"  ops run by both threads      {med('multi'):7.1f} ms; the second thread joins each after: median "
          f"{np.median(delays) * 1e3:.0f} us, p10 {np.percentile(delays, 10) * 1e3:.0f} us, p90 "
          f"{np.percentile(delays, 90) * 1e3:.0f} us ({np.median([sum(r['delays']) for r in rows]) / 1e3:.1f} ms a "
          f"step in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
