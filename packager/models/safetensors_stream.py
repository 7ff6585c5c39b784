"""Read and write safetensors one tensor at a time.

The writer lays out a shard's header from names, dtypes and shapes known in
advance, then streams each tensor's bytes to disk as it is produced, hashing
while writing: peak memory is one tensor, whatever the model size, and every
output byte is read zero extra times for its digest.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from packager.errors import InputFileError
from packager.run.hashing import FileDigest, HashingWriter


DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
               "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
               "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # safetensors name: "BF16", "F32", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPE_SIZES[self.dtype] * math.prod(self.shape)


def torch_dtype_name(dtype) -> str:
    return DTYPE_NAMES[str(dtype).removeprefix("torch.")]


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's real size.

    Raises:
        InputFileError: truncated file, unreadable header, or offsets that lie about sizes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InputFileError(path, "truncated safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, 100 << 20):
            raise InputFileError(path, f"corrupt safetensors header (claims {length} bytes; file has {size})")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise InputFileError(path, f"corrupt safetensors header: {exc}") from None
    data_size = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        expected = DTYPE_SIZES.get(info["dtype"], 0) * math.prod(info["shape"])
        if end - start != expected or end > data_size:
            problem = "truncated" if end > data_size else "lies about sizes"
            raise InputFileError(path, f"safetensors file {problem}: tensor {name!r} {info['dtype']}"
                                       f"{info['shape']} needs {expected} bytes at [{start}, {end}), data section "
                                       f"has {data_size}", field=name)
    return header


def write_safetensors(path: Path, specs: list[TensorSpec], produce: Callable[[TensorSpec], object],
                      *, metadata: dict[str, str] | None = None) -> FileDigest:
    """Write tensors in ``specs`` order; ``produce(spec)`` returns each torch tensor just in time."""
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    from concurrent.futures import ThreadPoolExecutor

    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        out = HashingWriter(f)
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        pending = None
        for spec in specs:
            tensor = produce(spec)  # computed while the previous tensor is hashed and written
            if tuple(tensor.shape) != spec.shape or torch_dtype_name(tensor.dtype) != spec.dtype:
                raise ValueError(f"{spec.name}: produced {tensor.dtype}{tuple(tensor.shape)}, planned "
                                 f"{spec.dtype}{spec.shape}")
            if pending is not None:
                pending.result()
            pending = pool.submit(out.write, _tensor_bytes(tensor))
        if pending is not None:
            pending.result()
        f.flush()
    return out.digest()


def _tensor_bytes(tensor) -> memoryview:
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def plan_shards(specs: Iterable[TensorSpec], *, max_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return [s for s in shards if s]


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


@dataclass
class Layout:
    """Where each tensor of a sharded checkpoint lives, read from the safetensors headers only."""

    files: dict[str, Path]  # tensor key -> shard file
    specs: dict[str, TensorSpec]  # tensor key -> dtype and shape, in the checkpoint's own order
    offsets: dict[str, int] = field(default_factory=dict)  # tensor key -> byte offset in its file


def read_layout(shards: Iterable[Path]) -> Layout:
    files, specs, offsets = {}, {}, {}
    for shard in shards:
        header = read_header(shard)
        with open(shard, "rb") as f:
            data_start = 8 + struct.unpack("<Q", f.read(8))[0]
        ordered = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        for key in ordered:
            files[key] = shard
            specs[key] = TensorSpec(key, header[key]["dtype"], tuple(header[key]["shape"]))
            offsets[key] = data_start + header[key]["data_offsets"][0]
    return Layout(files, specs, offsets)


def read_tensor(layout: Layout, key: str):
    """One tensor by a plain read (no mmap, so the pages read do not stay resident in the process)."""
    import torch

    spec = layout.specs[key]
    dtype = getattr(torch, TORCH_DTYPES[spec.dtype])
    buffer = bytearray(spec.nbytes)
    with open(layout.files[key], "rb", buffering=0) as f:
        f.seek(layout.offsets[key])
        if f.readinto(buffer) != spec.nbytes:
            raise InputFileError(layout.files[key], f"truncated while reading tensor {key}", field=key)
    if not buffer:
        return torch.empty(spec.shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(spec.shape)


def write_sharded(out_dir: Path, specs: list[TensorSpec], produce: Callable[[TensorSpec], object], *,
                  max_bytes: int) -> dict[str, FileDigest]:
    """Write shards of at most ``max_bytes`` (plus an index when there are several); digests by file name."""
    shards = plan_shards(specs, max_bytes=max_bytes)
    names = shard_names(len(shards))
    digests = {name: write_safetensors(out_dir / name, shard, produce) for name, shard in zip(names, shards)}
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                 "weight_map": {s.name: n for n, shard in zip(names, shards) for s in shard}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return digests
