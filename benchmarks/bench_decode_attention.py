"""Decode attention on CPU at a given cache length: forms of the same maths, each inside a chained 8-layer loop.

A decode step's attention reads each layer's whole K/V cache once (``[B, K, S, H]`` each) for one new query token.
At long contexts those bytes approach the weights' (batch 4, 8 KV heads, 512 slots: 16.8 MB a layer against the
0.6B model's 63 MB of layer weights). This times, per layer, a loop of ``--layers`` layers that each run one
Qwen3-0.6B-shaped q/k/v product (so the cache is evicted between uses, as in a real step), write one new key and
value into their layer's cache, and run the attention form; ``none`` skips the attention, so a form's cost is its
time minus ``none``'s. Forms (``einsum`` is what ``t1_jax.model.qwen3.attention`` runs):

- ``einsum``: scores ``bkmh,bksh->bkms``, softmax, ``bkms,bksh->bkmh`` (XLA: two batched YNNPACK dots);
- ``reduce``: scores and P.V as broadcast multiply + sum (XLA fuses each into one YNNPACK reduction);
- ``keys_transposed``: the key cache stored ``[B, K, H, S]``, scores ``bkmh,bkhs->bkms`` (no transposed operand);
- ``keys_first``: scores ``bksh,bkmh->bksm`` (the cache as the left operand), softmax over ``s``.

Four interleaved repeats, the median per form; the bytes the attention must read set against the read bandwidth.

    python benchmarks/bench_decode_attention.py --slots 512
    python benchmarks/bench_decode_attention.py --slots 64
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slots", type=int, default=512, help="cache length S")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench_decode import read_bandwidth

    b, kv, g, h, s, n_layers = args.batch, 8, 2, 128, args.slots, args.layers  # Qwen3-0.6B: 16 q heads, 8 KV
    d = 1024
    rng = np.random.default_rng(0)
    q0 = jnp.asarray(rng.standard_normal((b, kv, g, h)), jnp.float32)
    keys = [rng.standard_normal((b, kv, s, h)).astype(np.float32) for _ in range(n_layers)]
    values = [jnp.asarray(rng.standard_normal((b, kv, s, h)), jnp.float32) for _ in range(n_layers)]
    weights = [jnp.asarray(rng.standard_normal(((16 + 2 * kv) * h, d)) * 0.02, jnp.float32) for _ in range(n_layers)]

    def softmax_last(x):
        return jax.nn.softmax(x, axis=-1)

    forms = {  # name -> (attention(q, cache_k, cache_v), keys stored transposed)
        "none": (lambda q, k, v: q, False),
        "einsum": (lambda q, k, v: jnp.einsum("bkms,bksh->bkmh", softmax_last(jnp.einsum("bkmh,bksh->bkms", q, k)),
                                              v), False),
        "reduce": (lambda q, k, v: jnp.sum(softmax_last(jnp.sum(k[:, :, None] * q[:, :, :, None], -1))[..., None]
                                           * v[:, :, None], axis=-2), False),
        "keys_transposed": (lambda q, k, v: jnp.einsum("bkms,bksh->bkmh",
                                                       softmax_last(jnp.einsum("bkmh,bkhs->bkms", q, k)), v), True),
        "keys_first": (lambda q, k, v: jnp.einsum("bksm,bksh->bkmh", jax.nn.softmax(
            jnp.einsum("bksh,bkmh->bksm", k, q), axis=-2), v), False),
    }

    def make_loop(attend, transposed):
        def step(i, carry):
            q, ks, vs = carry
            ks, vs = list(ks), list(vs)
            for layer in range(n_layers):
                x_bd = q.reshape(b, -1)[:, :d]
                qkv = jnp.sum(weights[layer][None] * x_bd[:, None, :], axis=-1)  # the layer's q/k/v product
                q = q + 1e-3 * qkv[:, :kv * g * h].reshape(b, kv, g, h)
                new_k = q[:, :, :1]
                if transposed:
                    ks[layer] = jax.lax.dynamic_update_slice(ks[layer], new_k.swapaxes(-1, -2), (0, 0, 0, i % s))
                else:
                    ks[layer] = jax.lax.dynamic_update_slice(ks[layer], new_k, (0, 0, i % s, 0))
                vs[layer] = jax.lax.dynamic_update_slice(vs[layer], q[:, :, 1:], (0, 0, i % s, 0))
                q = q + 0.01 * attend(q, ks[layer], vs[layer])
            return q, tuple(ks), tuple(vs)
        return jax.jit(lambda c: jax.lax.fori_loop(0, args.steps, step, c), donate_argnums=0)

    def fresh(transposed):
        ks = tuple(jnp.asarray(k.swapaxes(-1, -2).copy() if transposed else k) for k in keys)
        return jnp.copy(q0), ks, tuple(jnp.copy(v) for v in values)

    reference = None
    loops = {}
    for name, (attend, transposed) in forms.items():
        loops[name] = make_loop(attend, transposed)
        out = np.asarray(jax.block_until_ready(loops[name](fresh(transposed)))[0])
        if name == "einsum":
            reference = out
        elif name != "none":
            assert np.abs(out - reference).max() < 1e-3 * max(1.0, np.abs(reference).max()), name
    times = {name: [] for name in forms}
    bandwidths = []
    for _ in range(args.repeats):
        bandwidths.append(read_bandwidth(repeats=3))
        for name, (_, transposed) in forms.items():
            carry = fresh(transposed)
            jax.block_until_ready(carry)
            t = time.perf_counter()
            jax.block_until_ready(loops[name](carry))
            times[name].append((time.perf_counter() - t) / args.steps / n_layers)
    bw = float(np.median(bandwidths))
    kv_bytes = 2 * b * kv * s * h * 4
    base = float(np.median(times["none"]))
    print(f"batch {b}, 8 KV heads x 2 query heads each, head dim {h}, {s} cache slots: K + V {kv_bytes / 1e6:.1f} MB a "
          f"layer; read bandwidth median {bw / 1e9:.1f} GB/s -> {kv_bytes / bw * 1e3:.3f} ms a layer at the bandwidth")
    print(f"loop without attention: {base * 1e3:.3f} ms a layer (the q/k/v product and the cache writes)")
    for name in forms:
        if name == "none":
            continue
        cost = float(np.median(times[name])) - base
        print(f"  {name:16s} attention {cost * 1e3:6.3f} ms a layer = {kv_bytes / max(cost, 1e-9) / 1e9:5.1f} GB/s "
              f"({kv_bytes / max(cost, 1e-9) / bw:4.0%} of the bandwidth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
