"""Minimal streaming reader/writer for the safetensors format (8-byte header length, JSON header, raw bytes).

Reading goes tensor by tensor with ``np.fromfile`` at the tensor's offset (no memory map, so pages of tensors already
consumed do not stay in this process's resident set), and supports bfloat16 through ``ml_dtypes``. Writing streams
tensors one at a time after a header computed from shapes alone. Sharded checkpoints are described by
``model.safetensors.index.json`` (``weight_map``: tensor name -> file).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from typing import Callable, Iterable, Optional

import ml_dtypes
import numpy as np

log = logging.getLogger(__name__)

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo for one .safetensors file; a damaged header names the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise ValueError(f"{path}: corrupted safetensors header (length {header_len} exceeds file size {size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupted safetensors header ({e})") from None
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')!r}")
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        shape = tuple(int(s) for s in entry["shape"])
        start, end = (int(x) for x in entry["data_offsets"])
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or 8 + header_len + end > size:
            raise ValueError(f"{path}: tensor {name} ({entry['dtype']} {list(shape)}) has inconsistent byte range "
                             f"[{start}, {end}) (file truncated or corrupted?)")
        infos[name] = TensorInfo(name, path, dtype, shape, 8 + header_len + start, end - start)
    return infos


def index_checkpoint(directory: str) -> dict[str, TensorInfo]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    index_path = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index_path}: not a valid safetensors index ({e!r})") from None
        infos: dict[str, TensorInfo] = {}
        for filename in sorted(set(weight_map.values())):
            shard = os.path.join(directory, filename)
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"{index_path} lists shard {filename}, which does not exist")
            infos.update(read_header(shard))
        for name, filename in weight_map.items():
            if name not in infos or os.path.basename(infos[name].path) != filename:
                raise ValueError(f"{index_path}: tensor {name} is mapped to {filename} but is not stored there")
        return infos
    if os.path.isfile(single):
        return read_header(single)
    raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Load one tensor (a fresh array, no file mapping kept)."""
    count = int(np.prod(info.shape, dtype=np.int64))
    with open(info.path, "rb") as f:
        data = np.fromfile(f, dtype=info.dtype, count=count, offset=info.offset)
    if data.size != count:
        raise ValueError(f"{info.path}: tensor {info.name} is truncated ({data.size} of {count} values)")
    return data.reshape(info.shape)


def read_rows(info: TensorInfo, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a tensor (first axis), read alone."""
    row = int(np.prod(info.shape[1:], dtype=np.int64))
    count = (stop - start) * row
    with open(info.path, "rb") as f:
        data = np.fromfile(f, dtype=info.dtype, count=count, offset=info.offset + start * row * info.dtype.itemsize)
    if data.size != count:
        raise ValueError(f"{info.path}: tensor {info.name} is truncated (rows {start}:{stop} incomplete)")
    return data.reshape((stop - start, *info.shape[1:]))


def dtype_name(dtype) -> str:
    return _NAMES[np.dtype(dtype)]


def write_file(path: str, specs: list[tuple[str, tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray], metadata: Optional[dict[str, str]] = None) -> None:
    """Write one .safetensors file; ``produce(name)`` is called once per tensor, in order, just before writing it."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(produce(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"writing {name}: produced shape {array.shape}, declared {tuple(shape)}")
            f.write(array.tobytes())
    os.replace(tmp, path)


def write_checkpoint(directory: str, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                     produce: Callable[[str], np.ndarray], max_shard_bytes: int = 4 << 30) -> list[str]:
    """Write tensors as ``model.safetensors`` or as shards + index when larger than ``max_shard_bytes``."""
    os.makedirs(directory, exist_ok=True)
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec[1], dtype=np.int64)) * np.dtype(spec[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    if len(shards) == 1:
        write_file(os.path.join(directory, SINGLE_FILE), shards[0], produce)
        _remove_stale(directory, {SINGLE_FILE})
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for filename, shard in zip(names, shards):
        write_file(os.path.join(directory, filename), shard, produce)
        for name, shape, dtype in shard:
            weight_map[name] = filename
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    _remove_stale(directory, set(names) | {INDEX_FILE})
    return names


def _remove_stale(directory: str, written: set[str]) -> None:
    """Delete safetensors files (and an index) of an earlier export into the same folder, once the new files are
    complete: left beside the new ones, a reader would take the old index and its shards."""
    for name in sorted(os.listdir(directory)):
        stale_weights = name.startswith("model") and name.endswith(".safetensors")
        if (stale_weights or name == INDEX_FILE) and name not in written:
            os.remove(os.path.join(directory, name))
            log.info("%s: removed %s of an earlier export", directory, name)


def names_of(infos: Iterable[TensorInfo]) -> list[str]:
    return sorted(i.name for i in infos)
