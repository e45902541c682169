"""Few-row products on CPU (decode steps): the fused multiply-reduce path of weight_einsum is taken for 2-16 rows
only, equals a float64 reference, keeps the float32 weight gradient, and two products of one activation with
same-shaped weights (k and v) do not share one broadcast (which XLA would write to memory)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t1_jax.model.precision import FEW_ROWS, weight_einsum

CASES = {  # spec, x shape after the row count, w shape
    "q": ("btd,nhd->btnh", (1, 8), (4, 4, 8)),  # a decode step: t = 1
    "o": ("btnh,dnh->btd", (1, 4, 4), (6, 4, 4)),  # two contracted dims
    "lm_head": ("...d,vd->...v", (8,), (40, 8)),
}


@pytest.mark.parametrize("rows", [1, 4, 16, 17])
@pytest.mark.parametrize("case", sorted(CASES))
def test_value_equals_float64_reference(case, rows):
    spec, x_tail, w_shape = CASES[case]
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, *x_tail)).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    out = np.asarray(jax.jit(lambda a, b: weight_einsum(spec, a, b))(x, w))
    ref = np.einsum(spec, x.astype(np.float64), w.astype(np.float64))
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def _dots(fn, *args) -> int:
    return len(re.findall(r"\bdot\(", jax.jit(fn).lower(*args).compile().as_text()))


def test_path_taken_only_for_few_rows_on_cpu():
    w = jnp.ones((64, 32), jnp.float32)
    for rows in (1, 2, 16, 17, 64):
        x = jnp.ones((rows, 32), jnp.float32)
        expect_dot = rows not in FEW_ROWS
        assert (_dots(lambda a, b: weight_einsum("md,nd->mn", a, b), x, w) > 0) == expect_dot, rows


def test_k_and_v_products_do_not_share_a_materialised_broadcast():
    """x [4, 64] against two [64, 64] weights: the compiled program must not hold an [4, 64, 64] buffer (the shared
    broadcast XLA writes out when both products use the same broadcast x)."""
    x = jnp.ones((4, 64), jnp.float32)
    wk = jnp.ones((64, 64), jnp.float32)
    wv = jnp.full((64, 64), 2.0, jnp.float32)

    def kv(x, wk, wv):
        h = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True))
        return weight_einsum("md,nd->mn", h, wk), weight_einsum("md,nd->mn", h, wv)

    text = jax.jit(kv).lower(x, wk, wv).compile().as_text()
    entry = text[text.index("ENTRY"):]
    assert "f32[4,64,64]" not in entry
    k, v = jax.jit(kv)(x, wk, wv)
    np.testing.assert_allclose(np.asarray(v), 2 * np.asarray(k), rtol=1e-6)


def test_gradient_of_bf16_compute_with_float32_master_is_float32_and_exact():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((8, 16)) * (1 + 2.0 ** -12), jnp.float32)  # not representable in bf16
    g = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)

    def loss(w):
        return jnp.sum(weight_einsum("md,nd->mn", x, w, out_dtype=jnp.float32) * g)

    dw = jax.jit(jax.grad(loss))(w)
    assert dw.dtype == jnp.float32
    # the cotangent enters in the compute dtype (as in the dot path); the product is accumulated in float32
    g16 = np.asarray(g.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    ref = np.einsum("mn,md->nd", g16, np.asarray(x.astype(jnp.float32), np.float64))
    assert np.abs(np.asarray(dw) - ref).max() <= 1e-5 * np.abs(ref).max()
