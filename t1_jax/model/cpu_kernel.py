"""The CPU few-row product kernel (``few_rows_kernel.cc``): built on first use, registered as an XLA FFI target.

``few_rows_product(x_flat, w_flat)`` is ``x_flat @ w_flat.T`` in float32 for a few rows against a whole weight matrix:
a decode step's products (see the kernel source for why it is faster than XLA's reduction here, and
docs/benchmarks.md, "Decode", for the measurements). :func:`available` says whether it can run; callers fall back to
XLA otherwise, so nothing requires a compiler.

Building: the source ships with the package; the first call compiles it with the host's C++ compiler (``$CXX``, else
``c++``/``g++``/``clang++``) against the XLA FFI headers that jaxlib ships (``jax.ffi.include_dir()``), into
``$T1_KERNEL_CACHE`` (default ``~/.cache/t1_jax/kernels``) under a name keyed by the source, the compiler, the headers
and jaxlib's version, so later processes load it in milliseconds and a jaxlib upgrade rebuilds. The build is written
to a temporary file and renamed, so concurrent processes never load a half-written library. No ``-march=native``:
the vector code is compiled for AVX2+FMA by function attribute and the library reports at load whether the CPU has
them, so one cached build is right on any x86-64 host.

``T1_CPU_KERNELS=0`` turns the kernel off (XLA's fused reduction is used); a failed build or an unsupported CPU also
falls back, with one warning naming the reason.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

log = logging.getLogger(__name__)

TARGET = "t1_few_rows"
SOURCE = Path(__file__).with_name("few_rows_kernel.cc")


def cache_dir() -> Path:
    return Path(os.environ.get("T1_KERNEL_CACHE") or Path.home() / ".cache" / "t1_jax" / "kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _flags(include_dir: str) -> list[str]:
    return ["-O3", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include_dir}"]


def build(out_dir: Path | None = None) -> Path:
    """Compile the kernel (or find it built) and return the library's path. Raises ``RuntimeError`` with the reason."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"the kernel is x86-64 only (this machine: {platform.machine()})")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    include_dir = jax.ffi.include_dir()
    flags = _flags(include_dir)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    headers = Path(include_dir, "xla", "ffi", "api")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(flags).encode(), jaxlib.__version__.encode(),
                 *(p.read_bytes() for p in sorted(headers.glob("*.h")))):
        key.update(part)
    out_dir = out_dir or cache_dir()
    path = out_dir / f"few_rows_{key.hexdigest()[:16]}.so"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE.name}:\n{done.stderr[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.cache
def available() -> bool:
    """True when the kernel is built, registered and this CPU runs it (cached per process)."""
    if os.environ.get("T1_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
        if not lib.t1_few_rows_supported():
            raise RuntimeError("this CPU lacks AVX2/FMA")
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.T1FewRows), platform="cpu")
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        log.warning("t1_jax CPU few-row kernel unavailable, using XLA's reduction: %s", err)
        return False
    return True


def few_rows_product(x_flat: jax.Array, w_flat: jax.Array) -> jax.Array:
    """``x_flat @ w_flat.T`` by the kernel: float32 ``x [R, C]`` and ``w [O, C]`` (rows, outputs, contracted; flat
    operands, as in ``precision.py``) -> float32 ``[R, O]``. Call only when :func:`available` is true (the FFI target
    must be registered)."""
    if x_flat.dtype != jnp.float32 or w_flat.dtype != jnp.float32 or x_flat.ndim != 2 or w_flat.ndim != 2:
        raise ValueError(f"few_rows_product takes float32 [R, C] and [O, C]; got {x_flat.dtype}{x_flat.shape}, "
                         f"{w_flat.dtype}{w_flat.shape}")
    if x_flat.shape[1] != w_flat.shape[1]:
        raise ValueError(f"few_rows_product: contracted sizes differ: {x_flat.shape} vs {w_flat.shape}")
    out = jax.ShapeDtypeStruct((x_flat.shape[0], w_flat.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x_flat, w_flat)
