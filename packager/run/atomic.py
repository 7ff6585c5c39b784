"""Writes that are either complete or absent.

A file is written to a temporary sibling, fsynced, then renamed over the target.
A stage's output directory is built as a ``.partial-*`` sibling and renamed into
place when complete, so a killed run never leaves something that looks finished.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from packager.run.hashing import FileDigest, HashingWriter, fsync_dir


PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = ".replaced-"


def atomic_write_bytes(path: Path, data: bytes) -> FileDigest:
    """Write ``data`` to ``path`` atomically and return its digest, computed while writing."""
    path = Path(path)
    tmp = path.with_name(f"{PARTIAL_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            writer = HashingWriter(f)
            writer.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return writer.digest()


def atomic_write_text(path: Path, text: str) -> FileDigest:
    return atomic_write_bytes(path, text.encode("utf-8"))


def partial_sibling(final: Path) -> Path:
    """Create and return an empty ``.partial-*`` directory beside ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{PARTIAL_PREFIX}{final.name}-{secrets.token_hex(4)}")
    tmp.mkdir()
    return tmp


def replace_directory(new: Path, final: Path) -> None:
    """Move the complete directory ``new`` to ``final``, replacing what was there."""
    old = None
    if final.exists():
        old = final.with_name(f"{REPLACED_PREFIX}{final.name}-{secrets.token_hex(4)}")
        os.replace(final, old)
    os.replace(new, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sweep_leftovers(root: Path) -> list[Path]:
    """Delete every ``.partial-*``/``.replaced-*`` entry under ``root`` that a killed run left behind.

    A ``.replaced-*`` directory whose final name is gone was moved aside by :func:`replace_directory` just
    before a kill: the new directory never took its place, so the manifest still records this one, which is
    put back instead.
    """
    found = [p for p in Path(root).rglob("*") if is_leftover(p.name)]
    removed = []
    for p in sorted(found, key=lambda p: len(p.parts)):
        if not os.path.lexists(p):
            continue  # inside a leftover directory already removed
        final = _replaced_from(p)
        if final is not None and not os.path.lexists(final):
            os.replace(p, final)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _replaced_from(path: Path) -> Path | None:
    """The final path a ``.replaced-NAME-XXXXXXXX`` directory was moved aside from (None for other names)."""
    name = path.name
    if not name.startswith(REPLACED_PREFIX) or "-" not in name[len(REPLACED_PREFIX):]:
        return None
    original, token = name[len(REPLACED_PREFIX):].rsplit("-", 1)
    return path.with_name(original) if len(token) == 8 and original else None


def is_leftover(name: str) -> bool:
    return name.startswith((PARTIAL_PREFIX, REPLACED_PREFIX))
