"""Decode step with the weights on 2 MiB pages vs 4 KiB pages, in one process (t1_jax/model/host_memory.py).

Two copies of the same per-layer decode weights (``t1_jax.sampler.layer_weights``), one advised to huge pages, the
other left where XLA's allocator put them; the rounds alternate the two, each preceded by a read-bandwidth
measurement, so both see the same minutes of this host. Decode step = (time of a 32-token call - time of a 1-token
call) / 31, as in bench_decode.py. Prints each round and the medians.

    python benchmarks/bench_huge_pages.py [--layers 28] [--rounds 4]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args()

    import jax
    import numpy as np
    from flax import nnx

    from bench_decode import read_bandwidth
    from t1_jax.config import SamplingConfig
    from t1_jax.model.presets import PRESETS
    from t1_jax.model.qwen3 import Qwen3
    from t1_jax.sampler import layer_weights, sample

    model_cfg = dataclasses.replace(PRESETS["qwen3-0.6b"], num_layers=args.layers, param_dtype="float32",
                                    compute_dtype="float32")  # as bench_decode.py
    graphdef, params = nnx.split(Qwen3(model_cfg, rngs=nnx.Rngs(0)))
    ids = np.random.default_rng(0).integers(0, 150_000, (args.batch, 32)).astype(np.int32)
    valid = np.ones_like(ids, bool)
    t0 = time.perf_counter()
    small = layer_weights(graphdef, params, None, huge_pages=False)
    jax.block_until_ready(small)
    small_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    huge = layer_weights(graphdef, params, None, huge_pages=True)
    huge_s = time.perf_counter() - t0
    print(f"prepared: 4 KiB pages {small_s:.1f}s (includes compiling the split), huge pages {huge_s:.1f}s",
          flush=True)

    def run(n, layers):
        cfg = SamplingConfig(max_new_tokens=n - 1, temperature=0.0)
        return jax.block_until_ready(sample(graphdef, params, ids, valid, jax.random.key(0), cfg,
                                            emb_token_id=model_cfg.vocab_size - 1, eos_token_ids=(), layers=layers))

    run(args.new, huge), run(1, huge)  # compile both lengths
    steps = {"huge": [], "4k": []}
    for r in range(args.rounds):
        bandwidth = read_bandwidth(repeats=3)
        for name, layers in (("huge", huge), ("4k", small)) if r % 2 == 0 else (("4k", small), ("huge", huge)):
            t = time.perf_counter()
            run(args.new, layers)
            long_s = time.perf_counter() - t
            t = time.perf_counter()
            run(1, layers)
            steps[name].append((long_s - (time.perf_counter() - t)) / (args.new - 1) * 1e3)
        print(f"round {r}: read bandwidth {bandwidth / 1e9:.1f} GB/s; step huge pages {steps['huge'][-1]:.1f} ms, "
              f"4 KiB pages {steps['4k'][-1]:.1f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in steps.items()}
    print(f"median step: huge pages {med['huge']:.1f} ms, 4 KiB pages {med['4k']:.1f} ms "
          f"({med['4k'] / med['huge'] - 1:+.1%} for 4 KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
