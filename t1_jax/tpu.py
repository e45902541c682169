"""TPU generations and topologies, ahead-of-time compile reports, and roofline bounds.

Nothing here needs a TPU. With ``libtpu`` installed (the ``tpu`` extra), :func:`abstract_mesh_devices` asks
``jax.experimental.topologies`` for compile-only devices of a real slice (``v5p-8`` = 4 chips laid out 2x2x1), so a
jitted step can be lowered and compiled for that slice on a CPU host; :func:`compile_report` then reads XLA's
per-device memory analysis and compares it with the chip's HBM. XLA's ``cost_analysis()`` counts a scanned layer body
once, so step FLOPs come from the analytic :func:`t1_jax.model.counts.decoder_flops` (checked against ``cost_analysis`` on an unscanned
model in ``tests/test_tpu_compile.py``) and the step-time lower bound from :func:`roofline_seconds`.

Chip figures are Google's published per-chip numbers (see docs/tpu.md for the sources). Accelerator-type names count
TensorCores for the two-core generations (v4, v5p: ``v5p-8`` is 4 chips) and chips for the one-core ones (v5e, v6e).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import time
from typing import Any, Optional, Sequence

from t1_jax.model.counts import FlopCount

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One TPU generation: per-chip HBM (size, bandwidth) and peak dense bf16 rate, how its slices are named and made."""

    name: str  # our canonical name: v4, v5e, v5p, v6e
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, per second
    hbm_bandwidth: float  # bytes per second per chip (what bounds memory-bound programs such as decoding)
    cores_per_chip: int  # TensorCores; 2 = the accelerator-type suffix counts cores and JAX runs them as one megacore
    topology_dims: int  # 3 (3D torus) or 2
    accelerator_prefix: str  # what gcloud's --accelerator-type starts with
    runtime_version: str  # TPU VM software version for JAX
    device_kinds: tuple[str, ...]  # jax Device.device_kind strings of this generation

    @property
    def chip_config_name(self) -> str:
        return "megacore" if self.cores_per_chip == 2 else "default"


CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32 * GiB, 275e12, 1200e9, 2, 3, "v4", "tpu-ubuntu2204-base", ("TPU v4",)),
    "v5e": ChipSpec("v5e", 16 * GiB, 197e12, 819e9, 1, 2, "v5litepod", "v2-alpha-tpuv5-lite",
                    ("TPU v5 lite", "TPU v5e")),
    "v5p": ChipSpec("v5p", 95 * GiB, 459e12, 2765e9, 2, 3, "v5p", "v2-alpha-tpuv5", ("TPU v5", "TPU v5p")),
    "v6e": ChipSpec("v6e", 32 * GiB, 918e12, 1638e9, 1, 2, "v6e", "v2-alpha-tpuv6e", ("TPU v6 lite", "TPU v6e")),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}

# Standard 2D shapes of the one-core generations (chips -> "AxB").
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def chip_spec(name: str) -> ChipSpec:
    """The :class:`ChipSpec` for ``v4``/``v5e``/``v5litepod``/``v5p``/``v6e``; ValueError naming the known ones."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in CHIPS:
        raise ValueError(f"unknown TPU generation {name!r}; known: {', '.join(sorted(CHIPS))} (and v5litepod)")
    return CHIPS[key]


def chip_for_device_kind(device_kind: str) -> Optional[ChipSpec]:
    """The generation of a jax device (``TPU v5 lite`` -> v5e); None for CPUs/GPUs or unknown kinds."""
    for spec in CHIPS.values():
        if device_kind in spec.device_kinds:
            return spec
    return None


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    """A slice: generation, chip count and physical layout, e.g. v5p-8 = 4 v5p chips as 2x2x1."""

    chip: ChipSpec
    chips: int
    topology: str  # "2x2x1"

    @property
    def accelerator_type(self) -> str:
        """gcloud's --accelerator-type (cores for v4/v5p, chips for v5e/v6e): v5p-8, v5litepod-16."""
        return f"{self.chip.accelerator_prefix}-{self.chips * self.chip.cores_per_chip}"

    @property
    def jax_topology_name(self) -> str:
        """What ``jax.experimental.topologies.get_topology_desc`` expects: ``v5p:2x2x1``."""
        return f"{self.chip.name}:{self.topology}"

    @property
    def hbm_bytes_total(self) -> int:
        return self.chips * self.chip.hbm_bytes

    @property
    def peak_flops_total(self) -> float:
        return self.chips * self.chip.peak_bf16_flops


def _default_shape_3d(chips: int) -> Optional[str]:
    """Power-of-two 3D slices as Cloud TPU lays them out: 4 -> 2x2x1, 8 -> 2x2x2, 16 -> 2x2x4, 32 -> 2x4x4 ..."""
    if chips < 4 or chips & (chips - 1):
        return None
    dims = [2, 2, 1]
    while math.prod(dims) < chips:
        smallest = min(dims)
        last = max(i for i, d in enumerate(dims) if d == smallest)
        dims[last] *= 2
    return "x".join(map(str, dims))


_NAME_RE = re.compile(r"^(v\d+[a-z]*)[-:](.+)$")


def parse_topology(name: str) -> TopologySpec:
    """Parse ``v5p-8``, ``v4-32``, ``v5e-16``/``v5litepod-16``, ``v6e-8`` or an explicit ``v5p:2x4x4``.

    The ``-N`` form counts TensorCores on v4/v5p and chips on v5e/v6e (as gcloud's accelerator types do); the
    ``gen:AxBxC`` form gives the chip layout directly.
    """
    match = _NAME_RE.match(name.strip().lower())
    if not match:
        raise ValueError(f"cannot parse TPU topology {name!r}: expected e.g. v5p-8, v4-32, v5e-16 or v5p:2x2x1")
    chip = chip_spec(match.group(1))
    rest = match.group(2)
    if "x" in rest:
        try:
            dims = [int(d) for d in rest.split("x")]
        except ValueError:
            raise ValueError(f"TPU topology {name!r}: {rest!r} is not a shape like 2x2x1") from None
        if len(dims) != chip.topology_dims or any(d <= 0 for d in dims):
            raise ValueError(f"TPU topology {name!r}: {chip.name} slices are {chip.topology_dims}-D, e.g. "
                             f"{'2x2x1' if chip.topology_dims == 3 else '4x4'}")
        return TopologySpec(chip, math.prod(dims), rest)
    if not rest.isdigit() or int(rest) <= 0:
        raise ValueError(f"TPU topology {name!r}: {rest!r} is not a positive count")
    count = int(rest)
    if count % chip.cores_per_chip:
        raise ValueError(f"TPU topology {name!r}: {chip.name} names count TensorCores ({chip.cores_per_chip} per chip), "
                         f"so the count must be a multiple of {chip.cores_per_chip}")
    chips = count // chip.cores_per_chip
    shape = _default_shape_3d(chips) if chip.topology_dims == 3 else _SHAPES_2D.get(chips)
    if shape is None:
        raise ValueError(f"TPU topology {name!r}: no standard {chip.name} layout for {chips} chips; give the shape "
                         f"explicitly, e.g. {chip.name}:4x4x12")
    return TopologySpec(chip, chips, shape)


# --------------------------------------------------------------------------------------------------------------------
# Compile-only TPU devices
# --------------------------------------------------------------------------------------------------------------------


def libtpu_available() -> bool:
    """Whether the ``libtpu`` package (the ``tpu`` extra) is importable; compile checks need it, a TPU they do not."""
    return importlib.util.find_spec("libtpu") is not None


def abstract_mesh_devices(topology_name: str) -> list:
    """Compile-only jax devices of the slice ``topology_name`` (one per chip; v4/v5p as megacore), on any host.

    Works with ``JAX_PLATFORMS=cpu``; the devices can build a ``Mesh`` for ``jit(...).lower(...).compile()`` but not run.
    Raises RuntimeError with the fix when libtpu is missing.
    """
    spec = parse_topology(topology_name)
    if not libtpu_available():
        raise RuntimeError("compiling for TPU topologies needs libtpu: pip install -e '.[tpu]'")
    import os

    from jax.experimental import topologies

    # Compile-only devices never touch a TPU, so another process holding libtpu's lock (a TPU job, or a second
    # compile check) must not stop us: libtpu honours this switch.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    desc = topologies.get_topology_desc(spec.jax_topology_name, "tpu", chip_config_name=spec.chip.chip_config_name)
    devices = list(desc.devices)
    if len(devices) != spec.chips:
        raise RuntimeError(f"libtpu returned {len(devices)} devices for {spec.jax_topology_name}, expected "
                           f"{spec.chips} (one per chip)")
    return devices


def topology_mesh(topology_name: str, mesh_cfg) -> Any:
    """The ``(data, fsdp, tensor)`` mesh of :mod:`t1_jax.mesh` over the compile-only devices of ``topology_name``."""
    from t1_jax.mesh import make_mesh

    return make_mesh(mesh_cfg, abstract_mesh_devices(topology_name))


# --------------------------------------------------------------------------------------------------------------------
# Compile report
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-device memory of one compiled program (XLA's buffer assignment), against the chip's HBM."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs that reuse (donated) argument buffers
    temp_bytes: int
    generated_code_bytes: int
    hbm_bytes: Optional[int]  # None when the devices are not a known TPU generation
    chip: Optional[str]
    num_devices: int
    xla_flops_per_device: Optional[float]  # cost_analysis(); counts a scanned body once
    compile_seconds: float
    # Set when the TPU compiler itself refused the program (RESOURCE_EXHAUSTED): its required total, and its message.
    # The breakdown above is then unknown (zeros) and hbm_bytes is the compiler's usable HBM.
    required_bytes: Optional[int] = None
    compile_error: str = ""

    @property
    def total_bytes(self) -> int:
        if self.required_bytes is not None:
            return self.required_bytes
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.generated_code_bytes

    @property
    def fits(self) -> Optional[bool]:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    @property
    def overflow_gib(self) -> float:
        """GiB over the chip's HBM (0 when it fits or the chip is unknown)."""
        if self.hbm_bytes is None:
            return 0.0
        return max(0, self.total_bytes - self.hbm_bytes) / GiB

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(total_bytes=self.total_bytes, fits=self.fits, overflow_gib=self.overflow_gib)
        return out

    def format(self) -> str:
        def gib(n: int) -> str:
            return f"{n / GiB:8.3f} GiB"

        if self.compile_error:
            return (f"per-device memory ({self.num_devices} devices, {self.chip or 'unknown chip'}): the compiler ran "
                    f"out of HBM: needs {gib(self.total_bytes)} of {gib(self.hbm_bytes or 0)} -> DOES NOT FIT: over by "
                    f"{self.overflow_gib:.3f} GiB\n  ({self.compile_error})")
        lines = [f"per-device memory ({self.num_devices} devices, {self.chip or 'unknown chip'}):",
                 f"  arguments       {gib(self.argument_bytes)}",
                 f"  outputs         {gib(self.output_bytes)}  (aliased with arguments: {gib(self.alias_bytes)})",
                 f"  temporaries     {gib(self.temp_bytes)}",
                 f"  generated code  {gib(self.generated_code_bytes)}",
                 f"  total           {gib(self.total_bytes)}"]
        if self.hbm_bytes is not None:
            verdict = "fits" if self.fits else f"DOES NOT FIT: over by {self.overflow_gib:.3f} GiB"
            lines.append(f"  chip HBM        {gib(self.hbm_bytes)}  -> {verdict} "
                         f"({100 * self.total_bytes / self.hbm_bytes:.1f}% used)")
        return "\n".join(lines)


def _first_devices(tree) -> list:
    import jax

    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and getattr(sharding, "device_set", None):
            return sorted(sharding.device_set, key=lambda d: d.id)
    return []


def _flops_from_cost(cost) -> Optional[float]:
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


_OOM_RE = re.compile(r"RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)", re.S)
_UNITS = {"K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 ** 4}


def _parse_oom(message: str) -> Optional[tuple[int, int]]:
    """(required, available) bytes from the TPU compiler's out-of-HBM error, or None for other errors."""
    match = _OOM_RE.search(message)
    if not match:
        return None
    return (int(float(match.group(1)) * _UNITS[match.group(2)]), int(float(match.group(3)) * _UNITS[match.group(4)]))


def compile_report(jitted_fn, abstract_args: Sequence[Any], abstract_kwargs: Optional[dict] = None,
                   chip: Optional[ChipSpec] = None) -> tuple[MemoryReport, Any]:
    """Lower and compile ``jitted_fn`` for ``abstract_args`` (``jax.ShapeDtypeStruct`` pytrees carrying shardings);
    returns the :class:`MemoryReport` and the compiled executable (None when the compiler ran out of HBM: the report
    then carries the compiler's required and usable bytes and ``fits`` is False).

    The chip (and so the HBM limit) is taken from the devices of the argument shardings unless given.
    """
    abstract_kwargs = abstract_kwargs or {}
    devices = _first_devices((abstract_args, abstract_kwargs))
    if chip is None and devices:
        chip = chip_for_device_kind(devices[0].device_kind)
    lowered = jitted_fn.lower(*abstract_args, **abstract_kwargs)
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; the TPU compiler refuses programs that cannot fit
        oom = _parse_oom(str(e))
        if oom is None:
            raise
        required, available = oom
        return MemoryReport(0, 0, 0, 0, 0, hbm_bytes=available, chip=None if chip is None else chip.name,
                            num_devices=max(1, len(devices)), xla_flops_per_device=None,
                            compile_seconds=time.perf_counter() - start, required_bytes=required,
                            compile_error=str(e).strip().splitlines()[0]), None
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    try:
        xla_flops = _flops_from_cost(compiled.cost_analysis())
    except Exception:  # cost analysis is best effort; some backends do not implement it
        xla_flops = None
    report = MemoryReport(
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        generated_code_bytes=int(mem.generated_code_size_in_bytes),
        hbm_bytes=None if chip is None else chip.hbm_bytes, chip=None if chip is None else chip.name,
        num_devices=max(1, len(devices)), xla_flops_per_device=xla_flops, compile_seconds=seconds)
    return report, compiled


# --------------------------------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------------------------------


def roofline_seconds(flops: float, chips: int, peak: float) -> float:
    """Lower bound on step time: ``flops`` spread perfectly over ``chips`` chips running at ``peak`` FLOP/s each."""
    if chips <= 0 or peak <= 0:
        raise ValueError(f"roofline_seconds: chips and peak must be positive, got {chips}, {peak}")
    return flops / (chips * peak)


def format_step_estimate(flops: FlopCount, spec: TopologySpec, tokens: int) -> str:
    """Two lines for a compile check: step FLOPs by part, and the roofline step time with the tokens/s it implies."""
    seconds = roofline_seconds(flops.total, spec.chips, spec.chip.peak_bf16_flops)
    parts = ", ".join(f"{name} {value:.3g}" for name, value in (("layers", flops.layers), ("attention", flops.attention),
                                                               ("lm head", flops.lm_head), ("remat", flops.recompute)))
    rate = tokens / seconds if seconds > 0 else float("inf")
    return (f"FLOPs per step: {flops.total:.4g} ({parts})\n"
            f"roofline step time at {spec.chip.peak_bf16_flops / 1e12:g} TFLOP/s x {spec.chips} chips: "
            f"{seconds * 1e3:.2f} ms -> at most {rate:,.0f} tokens/s")
