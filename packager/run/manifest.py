"""``manifest.json``: the records of a run's stages, as a typed schema, and reading it.

Every stage records the files it consumed and produced (sha256 + size), its
parameters, metrics and environment; every output names its parents by digest.
Writing records is :mod:`packager.run.directory`'s work.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from packager.errors import ManifestError, MissingPathError


SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
STATE_DIR = ".packager"
SIGNATURES_DIR = "signatures"  # the run's signature: about the recorded files, not one of them (packager.signing)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRecord(_Strict):
    """One file as recorded: where, what digest, and what it was made from."""

    path: str = Field(description="Relative to the run directory (POSIX), or absolute when outside it.")
    sha256: str
    size: int
    parents: tuple[str, ...] = Field(default=(), description="sha256 digests of the files this was made from.")

    @field_validator("path")
    @classmethod
    def _stays_where_it_belongs(cls, path: str) -> str:
        """A run received from someone else must not name files elsewhere through its records: packager
        deletes a stage's previous outputs by these paths, and publishes and reads files by them."""
        if not path or "\0" in path:
            raise ValueError("an empty path, or one with a NUL byte")
        if not PurePosixPath(path).is_absolute() and ".." in PurePosixPath(path).parts:
            raise ValueError(f"{path!r} climbs out of the run directory ('..')")
        return path


class StageRecord(_Strict):
    name: str
    started_at: str
    finished_at: str
    parameters: dict[str, Any] = {}
    inputs: tuple[FileRecord, ...] = ()
    outputs: tuple[FileRecord, ...] = ()
    metrics: dict[str, Any] = {}
    environment: dict[str, Any] = {}

    @field_validator("outputs")
    @classmethod
    def _outputs_are_inside_the_run(cls, outputs: tuple[FileRecord, ...]) -> tuple[FileRecord, ...]:
        outside = [o.path for o in outputs if PurePosixPath(o.path).is_absolute()]
        if outside:
            raise ValueError(f"output {outside[0]!r} is outside the run directory (a stage writes only inside it)")
        return outputs


class Manifest(_Strict):
    schema_version: int
    run: str
    created_at: str
    packager_version: str
    stages: dict[str, StageRecord] = {}

    def recorded_files(self) -> dict[str, FileRecord]:
        """Every file the manifest names, by path; a later stage's record of a path wins."""
        files: dict[str, FileRecord] = {}
        for stage in self.stages.values():
            for rec in (*stage.inputs, *stage.outputs):
                files[rec.path] = rec
        return files


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(run_dir: Path) -> Manifest:
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        raise MissingPathError(run_dir, f"not a packager run (no {MANIFEST_NAME})",
                               hint="give the run directory a stage wrote, e.g. runs/<name>")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ManifestError(path, f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "expected a JSON object at the top level")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ManifestError(path, f"schema_version {version} is newer than this packager understands "
                                  f"({SCHEMA_VERSION})", hint="upgrade packager to read this run")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ManifestError(path, f"not a valid manifest: {problems}") from None
