"""Greedy decode: t1_jax's jitted KV-cache sampler vs transformers ``generate``, and both against the memory roofline.

Both run float32 on CPU, the same random Qwen3 (Qwen3-0.6B widths), the same batch of random prompts, the same
number of new tokens (neither stops early: transformers gets an EOS id that never comes up, ours an <embtoken> id
that greedy never picks, so ours also feeds the forced <embtoken> at the end). Greedy tokens are checked identical.

Two figures per side, each the median of ``--repeats`` warm runs (compilation and transformers' first call excluded):
- end to end: new tokens / wall time of one call (prompt prefill included);
- decode step: (time for ``--new`` tokens - time for 1 token) / (``--new`` - 1), the cost of one more token.
The roofline of a decode step: the bytes it must read (every layer weight and the tied embedding as LM head, plus
the KV cache: both sides read their whole cache buffer each step, ours sized prompt + new + 1) divided by the read
bandwidth: the best of a jitted float32 sum over a 1 GiB array (2 threads) and numpy's, measured before each repeat
(the repeats interleave the bandwidth, our calls and transformers' calls; each repeat's steps are set against its own
bandwidth). A last line per side sets its least-disturbed step (the fastest) against the highest bandwidth seen: on a
VM whose neighbours come and go, the pair least affected by them.

Ours decodes with its weights prepared once, as the engine and ``t1 generate`` do (per-layer split, 2 MiB pages:
``--small-pages`` leaves them on 4 KiB pages).

    python benchmarks/bench_decode.py                 # Qwen3-0.6B shape (28 layers)
    python benchmarks/bench_decode.py --layers 8      # the 0.6B widths with fewer layers (faster)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def read_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best bytes/s of a full read of an ``n_bytes`` float32 array: jitted jnp.sum and numpy sum, best of both."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    host = np.ones(n_bytes // 4, np.float32)
    best = 0.0
    for fn in (lambda: f(x).block_until_ready(), host.sum):
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = max(best, n_bytes / (time.perf_counter() - t))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small-pages", action="store_true", help="leave our weights on 4 KiB pages")
    args = p.parse_args()

    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from t1_jax.config import SamplingConfig
    from t1_jax.model.hf import import_hf
    from t1_jax.model.presets import PRESETS
    from t1_jax.model.counts import layer_shapes
    from t1_jax.sampler import layer_weights, sample

    torch.set_num_threads(os.cpu_count())
    shape = PRESETS["qwen3-0.6b"]
    config = transformers.Qwen3Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=args.layers, num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim, tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                            "rope_theta": shape.rope_theta},
        attn_implementation="sdpa", dtype="float32")
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = import_hf(tmp)
    graphdef, params = nnx.split(ours)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 150_000, (args.batch, args.prompt)).astype(np.int32)
    valid = np.ones_like(ids, bool)

    def run_hf(n, eos):
        with torch.inference_mode():
            return hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.ones(ids.shape,
                               dtype=torch.long), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=eos, pad_token_id=0)[:, args.prompt:].numpy()

    hf_tokens = run_hf(args.new, eos=151_900)
    unused = next(i for i in range(151_700, 151_936) if i not in set(hf_tokens.ravel().tolist()))

    # The decode weights are prepared once, as `t1 generate` and the engine do: split per layer (CPU decode layout)
    # and on huge pages (t1_jax/model/host_memory.py), as transformers keeps its weights between calls.
    t0 = time.perf_counter()
    layers = layer_weights(graphdef, params, None, huge_pages=not args.small_pages)
    prepare_s = time.perf_counter() - t0

    def run_ours(n):  # n new tokens in all: n - 1 reasoning tokens, then the forced <embtoken>
        cfg = SamplingConfig(max_new_tokens=n - 1, temperature=0.0)
        return jax.block_until_ready(sample(graphdef, params, ids, valid, jax.random.key(0), cfg,
                                            emb_token_id=unused, eos_token_ids=(), layers=layers))

    t0 = time.perf_counter()
    first = run_ours(args.new + 1)
    compile_s = time.perf_counter() - t0
    run_ours(args.new)  # the timed calls: max_new_tokens is static, so each length compiles once, here
    run_ours(1)
    same = bool((np.asarray(first.tokens_bt)[:, :args.new] == hf_tokens).all())

    # Interleaved: each repeat measures the read bandwidth, then both sides (this VM's bandwidth drifts by +-15%
    # between minutes: a roofline from one moment and steps from another would mix two machines).
    calls = {"ours": (run_ours, {}), "hf": (lambda n: run_hf(n, eos=unused), {})}
    bandwidths = []
    for _ in range(args.repeats):
        bandwidths.append(read_bandwidth(repeats=3))
        for fn, out in calls.values():
            for n in (args.new, 1):
                t = time.perf_counter()
                fn(n)
                out.setdefault(n, []).append(time.perf_counter() - t)

    def total_and_step(name):
        out = calls[name][1]
        long_ = np.array(out[args.new])
        return long_, (long_ - np.array(out[1])) / (args.new - 1)

    ours_total, ours_step = total_and_step("ours")
    hf_total, hf_step = total_and_step("hf")
    bandwidths = np.array(bandwidths)
    bandwidth = float(np.median(bandwidths))
    d, kv, h = shape.hidden_size, shape.num_kv_heads, shape.head_dim
    weight_bytes = 4 * (args.layers * sum(int(np.prod(s)) for s in layer_shapes(shape).values())
                        + shape.vocab_size * d)
    cache_len = args.prompt + args.new + 1
    kv_bytes = 4 * 2 * args.layers * args.batch * kv * h * cache_len
    roofline_s = (weight_bytes + kv_bytes) / bandwidth
    roofline_runs = (weight_bytes + kv_bytes) / bandwidths  # each repeat's own roofline
    tokens = args.batch * args.new

    def spread(a):
        return f"median {np.median(a) * 1e3:.1f} ms (range {a.min() * 1e3:.1f}-{a.max() * 1e3:.1f})"

    print(f"model: Qwen3-0.6B widths, {args.layers} layers, vocab {shape.vocab_size}, float32, CPU "
          f"({os.cpu_count()} cores), torch threads {torch.get_num_threads()}; {args.repeats} runs each")
    print(f"batch {args.batch}, prompt {args.prompt}, new tokens {args.new}; greedy tokens identical: {same}; "
          f"our first call incl. compile {compile_s:.1f}s; decode weights prepared in {prepare_s:.1f}s "
          f"({'4 KiB' if args.small_pages else 'huge'} pages)")
    print(f"read bandwidth median {bandwidth / 1e9:.1f} GB/s (range {bandwidths.min() / 1e9:.1f}-"
          f"{bandwidths.max() / 1e9:.1f}); bytes per decode step: weights {weight_bytes / 1e9:.3f} GB + "
          f"KV cache {kv_bytes / 1e6:.1f} MB -> roofline {roofline_s * 1e3:.1f} ms/step "
          f"({args.batch / roofline_s:.1f} tokens/s)")
    for name, total, step in (("t1_jax sampler", ours_total, ours_step), ("transformers  ", hf_total, hf_step)):
        print(f"{name}: end to end {tokens / np.median(total):6.1f} tokens/s ({spread(total)} per call); "
              f"decode step {spread(step)} = {np.median(roofline_runs / step):.0%} of roofline (median of the "
              f"repeats' own; range {np.min(roofline_runs / step):.0%}-{np.max(roofline_runs / step):.0%})")
        print(f"  {name.strip()} best step {step.min() * 1e3:.1f} ms vs the best bandwidth's roofline "
              f"{(weight_bytes + kv_bytes) / bandwidths.max() * 1e3:.1f} ms = "
              f"{(weight_bytes + kv_bytes) / bandwidths.max() / step.min():.0%} (least-disturbed run of each)")
    print(f"ratio (ours / transformers): end to end {np.median(hf_total) / np.median(ours_total):.2f}x, "
          f"decode step {np.median(hf_step) / np.median(ours_step):.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
