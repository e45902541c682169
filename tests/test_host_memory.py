"""Huge pages for decode weights (t1_jax/model/host_memory.py): the aligned span advised, the data left as it was,
the pages granted (the process's own smaps), and the environment switch."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from t1_jax.model import host_memory


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
        pytest.skip("this Linux kernel refused MADV_COLLAPSE (needs 6.1+ with transparent huge pages enabled)")
    assert collapsed == length
    assert _huge_kb(start, length) * 1024 >= length


def test_huge_pages_switched_off(monkeypatch):
    monkeypatch.setenv("T1_HUGE_PAGES", "0")
    host_memory._libc.cache_clear()
    try:
        assert host_memory.advise_huge_pages(jnp.zeros(4 << 20)) == 0
    finally:
        host_memory._libc.cache_clear()
