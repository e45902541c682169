"""Few-row products (a decode step's whole cost) against the read bandwidth: XLA's forms and PyTorch's, same shapes.

A batch-4 decode step multiplies 4 activation rows by every weight matrix once, so each product should run at the
memory's read rate. This measures, per Qwen3-0.6B weight shape, the bytes of weight read per second by:

- ``reduce``: ``sum(w[None, :, :] * x[:, None, :], -1)`` with ``w [out, in]``: what ``t1_jax.model.precision`` emits
  on CPU for 2-16 rows (XLA fuses it into one YNNPACK reduction);
- ``dot``: ``x @ w.T`` (``w [out, in]``, the stored layout): XLA's dot;
- ``dot_in_out``: ``x @ w`` with ``w [in, out]``: XLA's dot on the transposed layout;
- ``torch``: ``torch.nn.functional.linear(x, w)``, transformers' product (PyTorch threads = cores);

against the read bandwidth measured before each repeat (``bench_decode.read_bandwidth``: the best of a jitted and a
numpy float32 sum over 1 GiB). Each timed call chains ``--copies`` distinct weights of one shape (the output of one
feeds the next), so every weight comes from memory, not cache, as in a decode step. Three interleaved repeats; the
median per form and shape, and its share of the same repeat's bandwidth.

    python benchmarks/bench_few_row_product.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHAPES = {  # name -> (out, in) of a Qwen3-0.6B decode weight, as the CPU decode layout stores it
    "qkv_proj": (4096, 1024),
    "o_proj": (1024, 2048),
    "gate_up_proj": (6144, 1024),
    "down_proj": (1024, 3072),
    "lm_head": (151_936, 1024),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--copies", type=int, default=16, help="distinct weights per shape and call (lm_head: 2)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from bench_decode import read_bandwidth

    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)

    def chain(product):
        def run(x, ws):
            for w in ws:
                y = product(x, w)
                x = x + 1e-3 * y[:, :x.shape[1]] if y.shape[1] >= x.shape[1] else x.at[:, :y.shape[1]].add(1e-3 * y)
            return x
        return jax.jit(run)

    forms = {
        "reduce": (chain(lambda x, w: jnp.sum(w[None, :, :] * x[:, None, :], axis=-1)), False),
        "dot": (chain(lambda x, w: x @ w.T), False),
        "dot_in_out": (chain(lambda x, w: x @ w), True),
    }
    cases = []
    for name, (o, c) in SHAPES.items():
        n = 2 if name == "lm_head" else args.copies
        w_np = [(rng.standard_normal((o, c), np.float32) * 0.02) for _ in range(n)]
        x_np = rng.standard_normal((args.rows, c), np.float32)
        cases.append((name, o * c * 4 * n, x_np, w_np))

    def timer(name, x_np, w_np):
        calls = {}
        for form, (fn, transposed) in forms.items():
            ws = [jnp.asarray(w.T.copy() if transposed else w) for w in w_np]
            x = jnp.asarray(x_np)
            jax.block_until_ready(fn(x, ws))
            calls[form] = (lambda fn=fn, x=x, ws=ws: jax.block_until_ready(fn(x, ws)))
        w_t = [torch.from_numpy(w) for w in w_np]
        x_t = torch.from_numpy(x_np)

        def torch_chain():
            with torch.inference_mode():
                x = x_t
                for w in w_t:
                    y = torch.nn.functional.linear(x, w)
                    if y.shape[1] >= x.shape[1]:
                        x = x + 1e-3 * y[:, :x.shape[1]]
                    else:
                        x = x.clone()
                        x[:, :y.shape[1]] += 1e-3 * y
                return x
        torch_chain()
        calls["torch"] = torch_chain
        return calls

    print(f"{args.rows} rows, float32, {os.cpu_count()} cores; {args.repeats} interleaved repeats; "
          f"{args.copies} weights per call (lm_head 2)")
    results = {}  # (shape, form) -> list of (GB/s, share of bandwidth)
    bandwidths = []
    prepared = [(name, nbytes, timer(name, x_np, w_np)) for name, nbytes, x_np, w_np in cases]
    for _ in range(args.repeats):
        bw = read_bandwidth(repeats=3)
        bandwidths.append(bw)
        for name, nbytes, calls in prepared:
            for form, call in calls.items():
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    call()
                    best = min(best, time.perf_counter() - t)
                results.setdefault((name, form), []).append((nbytes / best, nbytes / best / bw))
    bws = np.array(bandwidths) / 1e9
    print(f"read bandwidth: median {np.median(bws):.1f} GB/s (repeats {', '.join(f'{b:.1f}' for b in bws)})")
    header = "".join(f"{form:>22s}" for form in prepared[0][2])
    print(f"{'weight [out, in]':26s}{header}")
    for name, _, calls in prepared:
        o, c = SHAPES[name]
        cells = []
        for form in calls:
            rates = np.array(results[(name, form)])
            cells.append(f"{np.median(rates[:, 0]) / 1e9:7.1f} GB/s ({np.median(rates[:, 1]):4.0%})")
        print(f"{name + f' [{o}, {c}]':26s}" + "".join(f"{cell:>22s}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
