"""Greedy decode throughput: t1_jax's jitted KV-cache sampler vs transformers ``generate`` on the same random model.

Both run float32 on CPU, the same batch of random prompts, the same number of new tokens (generation is kept from
stopping early on either side: transformers gets an EOS id that never comes up, ours an <embtoken> id that greedy
never picks, so ours also feeds the forced <embtoken> at the end, one extra step we do not count). Compilation
(ours) and the first call (theirs) are excluded: each side is timed on its best of ``--repeats`` warm runs.

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from t1_jax.config import SamplingConfig
    from t1_jax.model.hf import import_hf
    from t1_jax.model.presets import PRESETS
    from t1_jax.sampler import sample

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

    def run_hf(eos):
        with torch.inference_mode():
            return hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.ones(ids.shape,
                               dtype=torch.long), max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                               eos_token_id=eos, pad_token_id=0)[:, args.prompt:].numpy()

    hf_tokens = run_hf(eos=151_900)
    unused = next(i for i in range(151_700, 151_936) if i not in set(hf_tokens.ravel().tolist()))
    cfg = SamplingConfig(max_new_tokens=args.new, temperature=0.0)

    def run_ours():
        out = sample(graphdef, params, ids, valid, jax.random.key(0), cfg, emb_token_id=unused, eos_token_ids=())
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    first = run_ours()
    compile_s = time.perf_counter() - t0
    same = bool((np.asarray(first.tokens_bt)[:, :args.new] == hf_tokens).all())

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    ours_s = best(run_ours)
    hf_s = best(lambda: run_hf(eos=unused))
    tokens = args.batch * args.new
    print(f"model: Qwen3-0.6B widths, {args.layers} layers, vocab {shape.vocab_size}, float32, CPU "
          f"({os.cpu_count()} cores), torch threads {torch.get_num_threads()}")
    print(f"batch {args.batch}, prompt {args.prompt}, new tokens {args.new}; greedy tokens identical: {same}")
    print(f"t1_jax sampler   : {tokens / ours_s:8.1f} tokens/s  ({ours_s:.2f}s; first call incl. compile "
          f"{compile_s:.1f}s)")
    print(f"transformers     : {tokens / hf_s:8.1f} tokens/s  ({hf_s:.2f}s)")
    print(f"ratio (ours / transformers): {hf_s / ours_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
