"""Digests remembered by (path, size, mtime), so recording a file hashes it once across stages."""

from __future__ import annotations

import json
from pathlib import Path

from packager.run.atomic import atomic_write_text
from packager.run.hashing import FileDigest, sha256_file


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self._entries))
        self._dirty = False
