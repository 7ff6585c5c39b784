"""GGUF files: the types packager makes, and the header fields it checks, read without loading the file.

How each type is made lives here (a registry that export, serving and deploy share); the making itself is
the export stage's (:mod:`packager.stages.export`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from packager.errors import InputFileError, MissingPathError, StageError


GGUF_MAGIC = b"GGUF"
# How each GGUF type is made: by the converter from the merged checkpoint, or by llama.cpp's quantize from f16.
GGUF_TYPES = {
    "f16": ("convert", "f16"), "bf16": ("convert", "bf16"), "q8_0": ("convert", "q8_0"),
    "Q4_K_M": ("quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M"), "Q5_K_M": ("quantize", "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    "Q6_K": ("quantize", "LLAMA_FTYPE_MOSTLY_Q6_K"),
}


def canonical_quant(name: str) -> str:
    for known in GGUF_TYPES:
        if known.lower() == name.lower():
            return known
    raise StageError("export", f"unknown GGUF type {name!r}; choose from {', '.join(GGUF_TYPES)}")


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_WANTED = {"general.architecture": "architecture", "general.file_type": "file_type",
           "tokenizer.chat_template": "chat_template", "tokenizer.ggml.eos_token_id": "eos_token_id",
           "tokenizer.ggml.bos_token_id": "bos_token_id", "general.base_model.0.repo_url": "base_model"}


def read_gguf_metadata(path: Path) -> dict:
    """The GGUF header fields packager checks, read from the header alone (gguf's GGUFReader builds a view
    of every vocabulary entry and tensor: seconds per file). Checks that every tensor's data lies inside the
    file. Raises InputFileError on a wrong magic, an unknown version or value type, or a truncated file."""
    import mmap
    import struct

    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise InputFileError(path, f"not a GGUF file (first bytes {magic!r})")
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 4

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string(keep: bool = True) -> str | None:
        nonlocal pos
        length = take("<Q")
        if pos + length > size:
            raise struct.error("a string runs past the end of the file")
        pos += length
        return buf[pos - length:pos].decode("utf-8", "replace") if keep else None

    def value(kind: int, keep: bool):
        """The value at ``pos``, or None past it when not kept (the vocabulary is ~100k strings)."""
        nonlocal pos
        if kind in _GGUF_SCALARS:
            return take(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return string(keep)
        if kind != _GGUF_ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = take("<I"), take("<Q")
        if item in _GGUF_SCALARS and not keep:
            pos += count * struct.calcsize(_GGUF_SCALARS[item])
            return None
        items = [value(item, keep) for _ in range(count)]
        return items if keep else None

    try:
        version = take("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version} (packager reads versions 2 and 3)")
        n_tensors, n_fields = take("<Q"), take("<Q")
        fields = {}
        for _ in range(n_fields):
            key = string()
            kind = take("<I")
            fields[key] = value(kind, key in _WANTED or key == "general.alignment")
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        tensors_end = 0
        for _ in range(n_tensors):
            string()
            dims = [take("<Q") for _ in range(take("<I"))]
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(take("<I"))]
            offset = take("<Q")
            elements = math.prod(dims)
            tensors_end = max(tensors_end, offset + elements // block * block_bytes)
        alignment = fields.get("general.alignment", 32)
        data_start = pos + (-pos % alignment)
    except (struct.error, ValueError, KeyError) as exc:
        raise InputFileError(path, f"unreadable or truncated GGUF: {exc}") from None
    finally:
        buf.close()
    if data_start + tensors_end > size:
        raise InputFileError(path, f"truncated GGUF: its tensors need {data_start + tensors_end} bytes, the file "
                                   f"has {size}")
    return {**{name: fields.get(key) for key, name in _WANTED.items()}, "tensors": n_tensors}


def check_gguf_magic(gguf: Path) -> None:
    """The file exists and starts with the GGUF magic (a cheap check before any expensive reading)."""
    if not gguf.is_file():
        raise MissingPathError(gguf, "GGUF file does not exist")
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InputFileError(gguf, f"not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r})")
