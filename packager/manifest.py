"""The run directory and its manifest: the spine of provenance.

A run is a directory holding ``manifest.json`` and the stage outputs. Every
stage records the files it consumed and produced (sha256 + size), its
parameters, metrics and environment; every output names its parents by digest.
Stages commit atomically: outputs are built in ``.partial-*`` siblings, hashed,
renamed into place, and only then recorded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import packager
from packager.atomic import atomic_write_text, is_leftover, partial_sibling, replace_directory, sweep_leftovers
from packager.errors import DiskFullError, ManifestError, MissingPathError, RunConflictError
from packager.hashing import FileDigest, HashCache, sha256_file
from packager.names import validate_name
from packager.provenance import environment

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


class StageRecord(_Strict):
    name: str
    started_at: str
    finished_at: str
    parameters: dict[str, Any] = {}
    inputs: tuple[FileRecord, ...] = ()
    outputs: tuple[FileRecord, ...] = ()
    metrics: dict[str, Any] = {}
    environment: dict[str, Any] = {}


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


def _now() -> str:
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


class Run:
    """A run directory. Open it, then record work with :meth:`stage`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self.hash_cache = HashCache(self.path / STATE_DIR / "hash-cache.json")

    @classmethod
    def open(cls, path: Path | str) -> "Run":
        path = Path(path)
        return cls(path, read_manifest(path))

    @classmethod
    def create(cls, path: Path | str, *, name: str | None = None) -> "Run":
        """Open the run at ``path``, creating it if absent. Refuses a directory that holds something else."""
        path = Path(path)
        name = validate_name(name or path.name, what="run name")
        if (path / MANIFEST_NAME).is_file():
            run = cls.open(path)
            if run.manifest.run != name:
                raise RunConflictError(path, f"already holds run {run.manifest.run!r}, not {name!r}",
                                       hint="choose another directory or run name")
            return run
        if path.exists() and any(p.name != STATE_DIR for p in path.iterdir()):
            raise RunConflictError(path, "exists and is not a packager run (no manifest.json); "
                                         "refusing to write into it", hint="choose an empty or new directory")
        path.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(schema_version=SCHEMA_VERSION, run=name, created_at=_now(),
                            packager_version=packager.__version__)
        run = cls(path, manifest)
        run._write_manifest()
        return run

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def relative(self, file: Path) -> str:
        """The manifest's name for a file: run-relative POSIX path inside the run, absolute outside."""
        file = Path(os.path.abspath(file))
        root = Path(os.path.abspath(self.path))
        try:
            return file.relative_to(root).as_posix()
        except ValueError:
            return str(file)

    def resolve(self, recorded_path: str) -> Path:
        p = Path(recorded_path)
        return p if p.is_absolute() else self.path / p

    def digest(self, file: Path) -> FileDigest:
        return self.hash_cache.digest(file)

    def outputs_intact(self, stage_name: str) -> bool:
        """The stage is recorded and every output is there with its recorded digest (hash cache: cheap)."""
        stage = self.manifest.stages.get(stage_name)
        return stage is not None and all(
            self.resolve(rec.path).is_file() and self.digest(self.resolve(rec.path)).sha256 == rec.sha256
            for rec in stage.outputs)

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
        atomic_write_text(self.manifest_path, text)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        state = self.path / STATE_DIR
        state.mkdir(exist_ok=True)
        with open(state / "lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunConflictError(self.path, "another packager process is working on this run") from None
            yield

    @contextmanager
    def stage(self, name: str, *, parameters: dict[str, Any] | None = None) -> Iterator["StageWriter"]:
        """Record one stage. Outputs become visible and recorded only if the block completes."""
        with self._locked():
            self.manifest = read_manifest(self.path)  # another process may have recorded a stage
            sweep_leftovers(self.path)
            writer = StageWriter(self, name, dict(parameters or {}))
            with writer._staging():
                yield writer
            record = writer._finish()
            previous = self.manifest.stages.get(name)
            stages = {k: v for k, v in self.manifest.stages.items() if k != name}
            stale = stale_stages(stages, record)
            stages = {k: v for k, v in stages.items() if k not in stale}
            stages[name] = record
            self.manifest = self.manifest.model_copy(update={"stages": stages})
            self._write_manifest()
            self.hash_cache.save()
            self._remove_outputs_of({**stale, **({name: previous} if previous else {})},
                                    keep={o.path for o in record.outputs})
            writer.invalidated = sorted(stale)

    def _remove_outputs_of(self, stale: dict[str, "StageRecord"], *, keep: set[str]) -> None:
        """Delete files of stages that no longer describe this run; nothing unrecorded is left behind."""
        for stage in stale.values():
            for rec in stage.outputs:
                file = self.resolve(rec.path)
                if rec.path not in keep and not Path(rec.path).is_absolute():
                    file.unlink(missing_ok=True)
                    for parent in file.parents:
                        if parent == self.path:
                            break
                        if parent.is_dir() and not any(parent.iterdir()):
                            parent.rmdir()  # empty once its files went; climb on


def stale_stages(stages: dict[str, StageRecord], new: StageRecord) -> dict[str, StageRecord]:
    """Stages that consumed a run file the new record changed, and, transitively, stages that consumed theirs."""
    changed = {o.path: o.sha256 for o in new.outputs}
    stale: dict[str, StageRecord] = {}
    while True:
        found = {k: v for k, v in stages.items() if k not in stale and any(
            i.path in changed and changed[i.path] != i.sha256 for i in v.inputs)}
        if not found:
            return stale
        stale.update(found)
        for stage in found.values():
            changed.update({o.path: "" for o in stage.outputs})  # everything they made is gone too


class StageWriter:
    """Collects one stage's inputs, outputs, parameters and metrics until it commits."""

    def __init__(self, run: Run, name: str, parameters: dict[str, Any]):
        self.run = run
        self.name = name
        self.parameters = parameters
        self.metrics: dict[str, Any] = {}
        self.started_at = _now()
        self._inputs: dict[str, FileRecord] = {}
        self._dirs: dict[Path, Path] = {}  # final -> temporary
        self._files: dict[str, FileRecord] = {}
        self.invalidated: list[str] = []  # stages dropped because this one changed their inputs
        self._known: dict[Path, FileDigest] = {}

    def add_input(self, file: Path | str, *, parents: tuple[str, ...] = ()) -> FileRecord:
        """Record a file this stage consumed (hashed once, via the run's cache)."""
        file = Path(file)
        if not file.is_file():
            raise MissingPathError(file, "input file does not exist")
        digest = self.run.digest(file)
        rec = FileRecord(path=self.run.relative(file), sha256=digest.sha256, size=digest.size,
                         parents=parents)
        self._inputs[rec.path] = rec
        return rec

    def known_digest(self, file: Path, digest: FileDigest) -> None:
        """A digest computed while writing ``file`` (inside an output_dir), so commit need not re-read it."""
        self._known[Path(file)] = digest

    def digest_of(self, file: Path) -> FileDigest:
        """A file's digest: the one computed while writing it, else hashed now (cached)."""
        return self._known.get(Path(file)) or self.run.digest(Path(file))

    def add_input_dir(self, directory: Path, *, patterns: tuple[str, ...] = ("*",)) -> list[FileRecord]:
        files = sorted({p for pat in patterns for p in Path(directory).glob(pat) if p.is_file()})
        return [self.add_input(p) for p in files]

    def output_dir(self, relpath: str) -> Path:
        """A fresh temporary directory to fill; it becomes ``RUN/relpath`` when the stage commits."""
        final = self.run.path / relpath
        if final not in self._dirs:
            self._dirs[final] = partial_sibling(final)
        return self._dirs[final]

    def add_output(self, file: Path, *, parents: tuple[str, ...] | None = None) -> FileRecord:
        """Record a file already written inside the run (hashed now)."""
        digest = sha256_file(file)
        self.run.hash_cache.remember(file, digest)
        rec = FileRecord(path=self.run.relative(file), sha256=digest.sha256, size=digest.size,
                         parents=self._default_parents() if parents is None else parents)
        self._files[rec.path] = rec
        return rec

    def write_output_text(self, relpath: str, text: str, *, parents: tuple[str, ...] | None = None) -> FileRecord:
        """Write one file directly in the run (atomically), hashed while writing."""
        final = self.run.path / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        digest = atomic_write_text(final, text)
        self.run.hash_cache.remember(final, digest)
        rec = FileRecord(path=self.run.relative(final), sha256=digest.sha256, size=digest.size,
                         parents=self._default_parents() if parents is None else parents)
        self._files[rec.path] = rec
        return rec

    def _default_parents(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.sha256 for r in self._inputs.values()))

    @contextmanager
    def _staging(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            for tmp in self._dirs.values():
                shutil.rmtree(tmp, ignore_errors=True)
            for rec in self._files.values():
                self.run.resolve(rec.path).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                where = exc.filename or ", ".join(str(final) for final in self._dirs) or self.run.path
                raise DiskFullError(self.name, where) from exc
            raise

    def _finish(self) -> StageRecord:
        parents = self._default_parents()
        outputs = dict(self._files)
        for final, tmp in self._dirs.items():
            digests = {p: self._known.get(p) or sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            replace_directory(tmp, final)
            for p, d in digests.items():
                dest = final / p.relative_to(tmp)
                self.run.hash_cache.remember(dest, d)
                rel = self.run.relative(dest)
                outputs[rel] = FileRecord(path=rel, sha256=d.sha256, size=d.size, parents=parents)
        return StageRecord(name=self.name, started_at=self.started_at, finished_at=_now(),
                           parameters=self.parameters, inputs=tuple(self._inputs.values()),
                           outputs=tuple(outputs.values()), metrics=self.metrics, environment=environment())


# ---------------------------------------------------------------- lineage

PUBLISH_STAGES = ("sign", "push-")
"""Stages that sign or publish a run: recorded afterwards without changing what the run is."""


def lineage(manifest: Manifest) -> dict[str, Any]:
    """Every stage that made the run's artifacts (all but signing and publishing), as recorded."""
    return {name: stage.model_dump(mode="json") for name, stage in sorted(manifest.stages.items())
            if not name.startswith(PUBLISH_STAGES)}


def lineage_digest(manifest: Manifest) -> str:
    """sha256 of :func:`lineage`: names what was published, and stays put while publishing records more."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(lineage(manifest), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- what is published

PUBLISHED_FOLDERS = {"merged": "export/safetensors/", "adapter": "train/adapter/", "gguf": "export/gguf/"}


def published_files(run: "Run", what: str) -> list[tuple[str, FileRecord]]:
    """The recorded files of one published kind, as (path inside the model, record), sorted.

    Raises:
        MissingPathError: the run has none yet; the hint names the command that makes them.
    """
    prefix = PUBLISHED_FOLDERS[what]
    records = {o.path: o for s in run.manifest.stages.values() for o in s.outputs if o.path.startswith(prefix)}
    if not records:
        how = {"merged": f"export {run.path} --format safetensors", "adapter": "train -c packager.yaml",
               "gguf": f"export {run.path} --format gguf"}[what]
        raise MissingPathError(run.path / prefix, f"nothing to push: the run has no {what} files",
                               hint=f"run: packager {how}")
    return [(path[len(prefix):], rec) for path, rec in sorted(records.items())]


# ---------------------------------------------------------------- verify

@dataclass
class VerifyReport:
    run_dir: Path
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(run_dir: Path | str) -> VerifyReport:
    """Re-hash every recorded file (no cache) and report modified, missing and unrecorded files."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    run = Run(run_dir, manifest)
    report = VerifyReport(run_dir)
    known_digests: set[str] = set()
    outputs: dict[str, FileRecord] = {}
    for stage in manifest.stages.values():
        for rec in stage.outputs:
            outputs[rec.path] = rec
        known_digests.update(r.sha256 for r in (*stage.inputs, *stage.outputs))

    every_record: dict[str, list[tuple[str, FileRecord]]] = {}  # a file several stages recorded: check each record
    for name, stage in manifest.stages.items():
        for rec in (*stage.inputs, *stage.outputs):
            every_record.setdefault(rec.path, []).append((name, rec))
    for path, records in every_record.items():
        rec = records[-1][1]  # the last record wins, as in Manifest.recorded_files
        file = run.resolve(path)
        inside = not Path(path).is_absolute()
        if not file.is_file():
            if inside or path in outputs:
                report.problems.append(f"missing: {path} (recorded sha256 {rec.sha256[:12]}…)")
            else:
                report.warnings.append(f"input no longer present: {path}")
            continue
        actual = sha256_file(file)
        report.files_checked += 1
        report.bytes_checked += actual.size
        wrong = [(name, r) for name, r in records if r.sha256 != actual.sha256]
        if wrong:
            name, rec = wrong[-1]
            kind = "modified" if inside else "input changed since recorded"
            by = "" if rec is records[-1][1] else f" by stage {name!r}"
            report.problems.append(f"{kind}: {path} (recorded sha256 {rec.sha256[:12]}… size {rec.size}{by}, "
                                   f"now {actual.sha256[:12]}… size {actual.size})")

    for path, rec in outputs.items():
        unknown = [p for p in rec.parents if p not in known_digests]
        if unknown:
            report.problems.append(f"broken lineage: {path} names parent {unknown[0][:12]}… "
                                   "that no recorded file has")

    recorded_inside = {p for p in manifest.recorded_files() if not Path(p).is_absolute()}
    for file in sorted(run_dir.rglob("*")):
        rel = file.relative_to(run_dir)
        if rel.parts[0] in (STATE_DIR, SIGNATURES_DIR, MANIFEST_NAME) or not file.is_file():
            continue
        if any(is_leftover(part) for part in rel.parts):
            report.warnings.append(f"leftover of an interrupted run (safe to delete): {rel.as_posix()}")
            continue
        if rel.as_posix() not in recorded_inside:
            report.problems.append(f"unrecorded: {rel.as_posix()} (not in the manifest)")
    return report
