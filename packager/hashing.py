"""Streaming sha256 of files, each file hashed once per (path, size, mtime).

hashlib does the work in C with the GIL released; we only feed it chunks, so
hashing a multi-GB shard costs one sequential read and no memory growth.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


def sha256_file(path: Path | str) -> FileDigest:
    """Hash one file in chunks; the size is what was actually read.

    4 MiB reads into one reused buffer: a quarter of the syscalls of ``hashlib.file_digest``'s 256 KiB
    (bench/hashing.py measures it against a plain hashlib loop).
    """
    digest, size = hashlib.sha256(), 0
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
    return FileDigest(digest.hexdigest(), size)


class HashingWriter:
    """A binary file wrapper that hashes bytes as they are written, so outputs are read zero extra times."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def digest(self) -> FileDigest:
        return FileDigest(self._h.hexdigest(), self.size)


class HashCache:
    """Remembers digests by absolute path, size and mtime so a file is hashed once across stages.

    Only recording uses the cache. ``packager verify`` always re-reads every byte,
    because a tamperer can restore a file's size and mtime.
    """

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, list] = {}
        self._dirty = False
        if path.is_file():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self._entries = {}  # a cache is disposable; a broken one is rebuilt

    def digest(self, file: Path) -> FileDigest:
        file = file.resolve()
        st = file.stat()
        key = str(file)
        cached = self._entries.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return FileDigest(cached[2], cached[0])
        result = sha256_file(file)
        self.remember(file, result)
        return result

    def remember(self, file: Path, digest: FileDigest) -> None:
        """Record a digest computed elsewhere (e.g. while writing the file)."""
        st = file.resolve().stat()
        if st.st_size != digest.size:
            return
        self._entries[str(file.resolve())] = [digest.size, st.st_mtime_ns, digest.sha256]
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        from packager.atomic import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self._entries))
        self._dirty = False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
