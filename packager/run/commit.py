"""A stage's commit: its outputs take their places and the manifest records them, as one step.

Placing the outputs (renames) and recording them (the manifest) are separate writes, and a process killed
between them would leave finished-looking outputs that no record names, or a re-written file the manifest
still records with its old digest. So the commit is written ahead as a journal, ``.packager/commit.json``:
the manifest to be, every rename, and the files it makes obsolete. Killed before the journal is complete,
nothing changed (the ``.partial-*`` siblings are swept by the next stage); killed after, the next process
that opens the run for a stage, or verifies it, finishes the commit from the journal (:func:`finish`).
Every step is idempotent, so a commit killed while being finished is finished again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from packager.errors import ManifestError, UnsafeInputError
from packager.run.atomic import PARTIAL_PREFIX, REPLACED_PREFIX, atomic_write_text
from packager.run.hashing import fsync_dir
from packager.run.manifest import MANIFEST_NAME, STATE_DIR, Manifest


JOURNAL = "commit.json"


@dataclass(frozen=True)
class Move:
    """One rename of a commit, run-relative: a staged output to its final path. A directory that was there
    before goes ``aside`` first (a directory cannot be renamed over), and is deleted once recorded."""

    staged: str
    final: str
    aside: str | None = None


def journal_path(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_DIR / JOURNAL


def commit(run_dir: Path, stage: str, manifest: Manifest, moves: list[Move], obsolete: list[str]) -> None:
    """Place ``moves``, record ``manifest`` and delete ``obsolete`` (run-relative files no record keeps)."""
    journal = {"stage": stage, "manifest": manifest.model_dump(mode="json"),
               "moves": [asdict(m) for m in moves], "obsolete": obsolete}
    atomic_write_text(journal_path(run_dir), json.dumps(journal, indent=1) + "\n")
    _apply(Path(run_dir), manifest, moves, obsolete)


def finish(run_dir: Path) -> str | None:
    """Finish the commit a killed process left in ``run_dir``'s journal; the stage's name, or None when there
    was none. The caller holds the run's lock."""
    path = journal_path(run_dir)
    if not path.is_file():
        return None
    stage, manifest, moves, obsolete = _read(Path(run_dir), path)
    _apply(Path(run_dir), manifest, moves, obsolete)
    return stage


def _apply(root: Path, manifest: Manifest, moves: list[Move], obsolete: list[str]) -> None:
    for move in moves:
        staged, final = root / move.staged, root / move.final
        if not os.path.lexists(staged):
            continue  # placed before the kill
        if move.aside is not None and os.path.lexists(final):
            os.replace(final, root / move.aside)
        os.replace(staged, final)
        fsync_dir(final.parent)
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    atomic_write_text(root / MANIFEST_NAME, text)
    for rel in obsolete:
        remove_file(root, root / rel)
    for move in moves:
        if move.aside is not None:
            shutil.rmtree(root / move.aside, ignore_errors=True)
    journal_path(root).unlink(missing_ok=True)


def remove_file(root: Path, file: Path) -> None:
    """Delete one file of the run, and the folders its going leaves empty; never anything outside the run."""
    real_root = os.path.realpath(root)
    folder = os.path.realpath(file.parent)
    if folder != real_root and not folder.startswith(real_root + os.sep):
        return
    file.unlink(missing_ok=True)
    for parent in file.parents:
        if parent == root:
            break
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # empty once its files went; climb on


def _read(root: Path, path: Path) -> tuple[str, Manifest, list[Move], list[str]]:
    """The journal, with every path it names checked to stay inside the run before anything is moved."""
    try:
        data = json.loads(path.read_text())
        stage, obsolete = str(data["stage"]), [str(p) for p in data["obsolete"]]
        moves = [Move(**m) for m in data["moves"]]
        manifest = Manifest.model_validate(data["manifest"])
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ManifestError(path, f"an unreadable commit journal ({type(exc).__name__}: {exc})",
                            hint=f"delete {path} and run the stage again") from None
    for move in moves:
        _inside(root, path, move.staged, prefix=PARTIAL_PREFIX)
        _inside(root, path, move.final)
        if move.aside is not None:
            _inside(root, path, move.aside, prefix=REPLACED_PREFIX)
    for rel in obsolete:
        _inside(root, path, rel)
    return stage, manifest, moves, obsolete


def _inside(root: Path, journal: Path, rel: str, *, prefix: str = "") -> None:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or not p.name.startswith(prefix):
        raise UnsafeInputError(str(journal), f"names {rel!r}, which is not a "
                                             f"{'staged ' if prefix else ''}path inside the run {root}")
