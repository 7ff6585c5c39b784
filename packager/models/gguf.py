"""GGUF files: the types packager makes, and the header fields it checks, read without loading the file.

How each type is made lives here (a registry that export, serving and deploy share); the making itself is
the export stage's (:mod:`packager.stages.export`).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
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


class _HeaderReader:
    """Reads GGUF header values one after another from a mapped file, never past its end."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 4  # after the magic

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, keep: bool = True) -> str | None:
        length = self.take("<Q")
        if self.pos + length > self.size:
            raise struct.error("a string runs past the end of the file")
        self.pos += length
        return self.buf[self.pos - length:self.pos].decode("utf-8", "replace") if keep else None

    def value(self, kind: int, keep: bool):
        """The value at the position, or None past it when not kept (the vocabulary is ~100k strings)."""
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string(keep)
        if kind != _GGUF_ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self.take("<I"), self.take("<Q")
        if item in _GGUF_SCALARS and not keep:
            self.pos += count * struct.calcsize(_GGUF_SCALARS[item])
            return None
        items = [self.value(item, keep) for _ in range(count)]
        return items if keep else None

    def fields(self, count: int) -> dict:
        """The key-value fields, keeping the values packager reads."""
        fields = {}
        for _ in range(count):
            key = self.string()
            fields[key] = self.value(self.take("<I"), key in _WANTED or key == "general.alignment")
        return fields

    def tensors_end(self, count: int) -> int:
        """How far past the data section's start the tensors' data reaches."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        end = 0
        for _ in range(count):
            self.string(keep=False)
            dims = [self.take("<Q") for _ in range(self.take("<I"))]
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(self.take("<I"))]
            offset = self.take("<Q")
            end = max(end, offset + math.prod(dims) // block * block_bytes)
        return end


def read_gguf_metadata(path: Path) -> dict:
    """The GGUF header fields packager checks, read from the header alone (gguf's GGUFReader builds a view
    of every vocabulary entry and tensor: seconds per file). Checks that every tensor's data lies inside the
    file. Raises InputFileError on a wrong magic, an unknown version or value type, or a truncated file."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise InputFileError(path, f"not a GGUF file (first bytes {magic!r})")
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    reader = _HeaderReader(buf, size)
    try:
        version = reader.take("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version} (packager reads versions 2 and 3)")
        n_tensors, n_fields = reader.take("<Q"), reader.take("<Q")
        fields = reader.fields(n_fields)
        tensors_end = reader.tensors_end(n_tensors)
        alignment = fields.get("general.alignment", 32)
        data_start = reader.pos + (-reader.pos % alignment)
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
