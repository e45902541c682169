"""Chunked token cross-entropy vs the naive full-logits version: compiled temp memory and step time, same run.

    python benchmarks/bench_chunked_ce.py [--batch 4 --length 512 --dim 256 --vocab 8192 --chunk 128]

Prints both and the ratios (naive / chunked). Memory is XLA's compiled temp allocation for value_and_grad.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from t1_jax.logprobs import chunked_token_ce  # noqa: E402


def naive_ce(h_btd, y_bt, w_bt, logits_fn):
    logits = logits_fn(h_btd).astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y_bt[..., None], -1)[..., 0]
    return jnp.sum(nll * w_bt), jnp.sum(w_bt)


def measure(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(compiled(*args))
    return temp, (time.perf_counter() - start) / repeats


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    k = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k[0], (a.batch, a.length, a.dim))
    w = jax.random.normal(k[1], (a.dim, a.vocab)) / a.dim ** 0.5
    y = jax.random.randint(k[2], (a.batch, a.length), 0, a.vocab)
    wt = jnp.ones((a.batch, a.length))

    def grad_of(ce):
        return jax.value_and_grad(lambda h_, w_: ce(h_, w_)[0], argnums=(0, 1))

    chunked = grad_of(lambda h_, w_: chunked_token_ce(h_, y, wt, lambda x: x @ w_, a.chunk))
    naive = grad_of(lambda h_, w_: naive_ce(h_, y, wt, lambda x: x @ w_))
    mem_chunked, t_chunked = measure(chunked, (h, w), a.repeats)
    mem_naive, t_naive = measure(naive, (h, w), a.repeats)
    full = a.batch * a.length * a.vocab * 4
    print(f"shape B={a.batch} T={a.length} D={a.dim} V={a.vocab} chunk={a.chunk}; "
          f"full f32 logits = {full / 2**20:.1f} MiB")
    print(f"naive   : temp {mem_naive / 2**20:8.1f} MiB  value_and_grad {t_naive * 1e3:8.1f} ms")
    print(f"chunked : temp {mem_chunked / 2**20:8.1f} MiB  value_and_grad {t_chunked * 1e3:8.1f} ms")
    print(f"ratio naive/chunked: memory {mem_naive / max(mem_chunked, 1):.2f}x  time {t_naive / t_chunked:.2f}x")


if __name__ == "__main__":
    main()
