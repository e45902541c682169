"""The CPU few-row kernel (t1_jax/model/cpu_kernel.py) and huge pages for decode weights (host_memory.py).

The kernel against a float64 numpy product on shapes that hit every tail (row counts that are not a multiple of its
4-row tile, weight rows not a multiple of 2 or of its 8-row block, contracted sizes not a multiple of 8); weight_einsum
routing (kernel for float32 on one device, XLA's reduction under a multi-device mesh and for other dtypes); the
fallback when it cannot be built; and huge-page advice that leaves the data as it was.
"""
import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t1_jax.config import MeshConfig
from t1_jax.mesh import make_mesh, use_mesh
from t1_jax.model import cpu_kernel, host_memory
from t1_jax.model.precision import weight_einsum

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="the few-row kernel cannot be built here "
                                  "(no C++ compiler or not x86-64 with AVX2/FMA)")


@needs_kernel
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 16])
@pytest.mark.parametrize("n,c", [(1, 8), (7, 13), (64, 1024), (301, 1030)])
def test_kernel_equals_float64_product(m, n, c):
    rng = np.random.default_rng(m * 1000 + n)
    x = rng.standard_normal((m, c)).astype(np.float32)
    w = rng.standard_normal((n, c)).astype(np.float32)
    out = np.asarray(jax.jit(cpu_kernel.few_rows_product)(x, w))
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert out.shape == (m, n) and out.dtype == np.float32
    # float32 accumulation over c terms: error grows like sqrt(c) * eps * |x||w|
    scale = np.sqrt(c) * np.abs(x).max() * np.abs(w).max()
    assert np.abs(out - ref).max() <= 4e-6 * scale


@needs_kernel
def test_kernel_result_is_deterministic_and_fills_every_output():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 256)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4099, 256)), jnp.float32)  # odd rows, several threads' ranges
    f = jax.jit(cpu_kernel.few_rows_product)
    a, b = np.asarray(f(x, w)), np.asarray(f(x, w))
    assert np.array_equal(a, b)
    assert np.isfinite(a).all() and (a != 0).all()


@needs_kernel
def test_kernel_rejects_wrong_operands():
    with pytest.raises(ValueError, match="float32"):
        cpu_kernel.few_rows_product(jnp.ones((2, 8), jnp.bfloat16), jnp.ones((4, 8), jnp.float32))
    with pytest.raises(ValueError, match="contracted"):
        cpu_kernel.few_rows_product(jnp.ones((2, 8)), jnp.ones((4, 9)))


def _custom_calls(fn, *args) -> int:
    return jax.jit(fn).lower(*args).as_text().count("t1_few_rows")


@needs_kernel
def test_weight_einsum_uses_the_kernel_for_float32_few_rows_only():
    w = jnp.ones((64, 32), jnp.float32)

    def product(a, b):
        return weight_einsum("md,nd->mn", a, b)

    assert _custom_calls(product, jnp.ones((4, 32), jnp.float32), w) == 1
    assert _custom_calls(product, jnp.ones((32, 32), jnp.float32), w) == 0  # many rows: the dot
    assert _custom_calls(product, jnp.ones((4, 32), jnp.bfloat16), w) == 0  # bfloat16 compute: XLA's reduction


@needs_kernel
def test_no_kernel_under_a_multi_device_mesh():
    """An FFI call cannot be partitioned: with the 8-device mesh active the product stays XLA's, and still runs under
    the model's sharding constraints with the kernel-path value."""
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)

    def product(a, b):
        return weight_einsum("md,nd->mn", a, b)

    with use_mesh(mesh):
        assert _custom_calls(product, x, w) == 0
        sharded = np.asarray(jax.jit(product)(x, w))
    single = np.asarray(jax.jit(product)(x, w))
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)


def test_failed_build_falls_back_with_the_reason(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        cpu_kernel.build(tmp_path / "cache")
    cpu_kernel.available.cache_clear()
    monkeypatch.setattr(cpu_kernel, "cache_dir", lambda: tmp_path / "cache")
    try:
        assert cpu_kernel.available() is False
        assert "no C++ compiler" in caplog.text
    finally:
        cpu_kernel.available.cache_clear()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("T1_CPU_KERNELS", "0")
    cpu_kernel.available.cache_clear()
    try:
        assert cpu_kernel.available() is False
        assert _custom_calls(lambda a, b: weight_einsum("md,nd->mn", a, b), jnp.ones((4, 8)), jnp.ones((16, 8))) == 0
    finally:
        cpu_kernel.available.cache_clear()


@needs_kernel
def test_build_is_cached_by_content(tmp_path):
    first = cpu_kernel.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_kernel.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


def test_aligned_span():
    page = host_memory.HUGE_PAGE
    assert host_memory.aligned_span(page, 3 * page) == (page, 3 * page)
    assert host_memory.aligned_span(page + 1, 3 * page) == (2 * page, 2 * page)
    assert host_memory.aligned_span(page + 1, page) == (2 * page, 0)


def _huge_kb(start: int, length: int) -> int:
    """AnonHugePages (kB) of the mappings of this process that overlap [start, start + length)."""
    total, overlaps = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                overlaps = lo < start + length and start < hi
            elif overlaps and line.startswith("AnonHugePages:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
def test_huge_pages_keep_the_data_and_are_granted():
    x = jnp.arange(6 << 20, dtype=jnp.float32)  # 24 MiB: at least 10 whole huge pages
    before = np.asarray(x).copy()
    collapsed = host_memory.advise_huge_pages({"w": x, "small": jnp.ones(8)})
    np.testing.assert_array_equal(np.asarray(x), before)
    start, length = host_memory.aligned_span(x.unsafe_buffer_pointer(), x.nbytes)
    if collapsed == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        pytest.skip(f"this kernel refused MADV_COLLAPSE (errno {ctypes.get_errno()}; {libc})")
    assert collapsed == length
    assert _huge_kb(start, length) * 1024 >= length


def test_huge_pages_switched_off(monkeypatch):
    monkeypatch.setenv("T1_HUGE_PAGES", "0")
    host_memory._libc.cache_clear()
    try:
        assert host_memory.advise_huge_pages(jnp.zeros(4 << 20)) == 0
    finally:
        host_memory._libc.cache_clear()
