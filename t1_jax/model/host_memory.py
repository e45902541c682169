"""Huge pages for weights that a CPU decode loop reads every step.

A CPU decode step reads every weight once, so it runs at the memory bandwidth, and on 4 KiB pages it does not get
all of it: the hardware prefetcher stops at every page boundary and each page costs a TLB entry. Linux backs a
region with 2 MiB pages when asked (``madvise(MADV_HUGEPAGE)`` for future faults, ``MADV_COLLAPSE`` since Linux 6.1 to
move memory already written into huge pages in place). XLA's CPU allocator does not ask; numpy does, for its large
arrays. docs/benchmarks.md ("Decode") has the measured difference.

:func:`advise_huge_pages` asks for the arrays given (in place: addresses and contents do not change). It is a
performance hint only: on other systems, for non-CPU arrays, or when the kernel refuses, nothing happens.
``T1_HUGE_PAGES=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

import jax

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
MIN_BYTES = 2 * HUGE_PAGE  # smaller arrays cannot hold a whole aligned huge page worth the call


@functools.cache
def _libc():
    if not sys.platform.startswith("linux") or os.environ.get("T1_HUGE_PAGES", "1").strip().lower() in (
            "0", "false", "no", "off"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def aligned_span(address: int, n_bytes: int) -> tuple[int, int]:
    """The whole huge pages inside ``[address, address + n_bytes)``: (start, length), length 0 when none fits."""
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    end = (address + n_bytes) // HUGE_PAGE * HUGE_PAGE
    return start, max(0, end - start)


def _buffers(tree):
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array) or leaf.nbytes < MIN_BYTES:
            continue
        for shard in leaf.addressable_shards:
            if shard.device.platform == "cpu":
                yield shard.data


def advise_huge_pages(tree) -> int:
    """Ask Linux to back the CPU arrays in ``tree`` with huge pages, now (collapse) and for later faults; return the
    number of bytes it collapsed (0 where unsupported)."""
    libc = _libc()
    if libc is None:
        return 0
    collapsed = 0
    for buffer in _buffers(tree):
        try:
            start, length = aligned_span(buffer.unsafe_buffer_pointer(), buffer.nbytes)
        except (RuntimeError, ValueError):  # deleted or not addressable
            continue
        if not length:
            continue
        libc.madvise(start, length, MADV_HUGEPAGE)
        if libc.madvise(start, length, MADV_COLLAPSE) == 0:
            collapsed += length
        else:
            log.debug("MADV_COLLAPSE refused (errno %d)", ctypes.get_errno())
    return collapsed
