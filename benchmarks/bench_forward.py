"""Forward throughput: our jitted Qwen3 forward vs transformers (PyTorch) on CPU, float32, same shape, one run.

Both compute the final-normed hidden states of a full batch (transformers' ``Qwen3Model``, i.e. no LM head on either
side). Also measures the machine's float32 matmul peak (best of jitted JAX and torch on a large square matmul) and
reports each forward's achieved FLOP/s against it.

    python benchmarks/bench_forward.py                      # Qwen3-0.6B shape, batch 4 x 256
    python benchmarks/bench_forward.py --layers 4 --repeats 2   # quicker, fewer layers
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(size: int, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import torch
    torch.set_num_threads(os.cpu_count())  # PyTorch threads = cores (the standard for our benchmarks)

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    t_jax = best_time(lambda: mm(a, a).block_until_ready(), repeats)
    ta = torch.randn(size, size)
    torch.mm(ta, ta)
    t_torch = best_time(lambda: torch.mm(ta, ta), repeats)
    flops = 2.0 * size ** 3
    return {"jax": flops / t_jax, "torch": flops / t_torch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="qwen3-0.6b")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--layers", type=int, default=0, help="override the number of layers (0 = preset's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from t1_jax.model import PRESETS, Qwen3, to_hf_config

    cfg = dataclasses.replace(PRESETS[args.preset], param_dtype="float32", compute_dtype="float32")
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    b, t = args.batch, args.length
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, jax {jax.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; shape {args.preset} "
          f"({cfg.num_layers} layers) batch {b} x {t}, float32")

    peaks = matmul_peak(args.matmul_size, args.repeats)
    peak = max(peaks.values())
    print(f"fp32 matmul peak ({args.matmul_size}^3): jax {peaks['jax'] / 1e9:.1f} GFLOP/s, "
          f"torch {peaks['torch'] / 1e9:.1f} GFLOP/s -> peak {peak / 1e9:.1f} GFLOP/s")

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
    positions = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    mask = np.ones((b, t), bool)
    # matmul FLOPs of one forward (projections, MLP, full unmasked attention): the model's own count
    flops = cfg.flops_per_token(t, training=False) * b * t

    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    del model
    forward = jax.jit(lambda s, x, p, m: nnx.merge(graphdef, s)(x, p, m)[0])
    start = time.perf_counter()
    forward(state, tokens, positions, mask).block_until_ready()
    compile_s = time.perf_counter() - start
    t_ours = best_time(lambda: forward(state, tokens, positions, mask).block_until_ready(), args.repeats)
    del state, forward
    ours_tps = b * t / t_ours
    print(f"ours:         {ours_tps:8.1f} tokens/s ({t_ours:.2f} s/forward, first call incl. compile "
          f"{compile_s:.1f} s), {flops / t_ours / 1e9:.1f} GFLOP/s = {100 * flops / t_ours / peak:.0f}% of peak")

    hf_cfg = transformers.Qwen3Config(**{k: v for k, v in to_hf_config(cfg, "float32").items()
                                         if k not in ("architectures", "model_type", "torch_dtype")})
    hf_model = transformers.Qwen3ForCausalLM(hf_cfg).model.eval()
    ids, tmask = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    with torch.inference_mode():
        hf_model(input_ids=ids, attention_mask=tmask)  # warm-up
        t_hf = best_time(lambda: hf_model(input_ids=ids, attention_mask=tmask), args.repeats)
    hf_tps = b * t / t_hf
    print(f"transformers: {hf_tps:8.1f} tokens/s ({t_hf:.2f} s/forward, attn {hf_model.config._attn_implementation}),"
          f" {flops / t_hf / 1e9:.1f} GFLOP/s = {100 * flops / t_hf / peak:.0f}% of peak")
    print(f"ratio ours/transformers: {ours_tps / hf_tps:.2f}x  (target >= 1.5x); ours at "
          f"{100 * flops / t_ours / peak:.0f}% of the fp32 matmul peak (target >= 60%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
