"""A run directory: open or create it, and record stages into its manifest atomically.

A run is a directory holding ``manifest.json`` and the stage outputs. Stages
commit atomically: outputs are built in ``.partial-*`` siblings, hashed,
renamed into place, and only then recorded; a stage whose inputs changed makes
the stages that consumed them stale, and their outputs are removed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import packager

from packager.errors import DiskFullError, MissingPathError, RunConflictError, UnsafeInputError
from packager.names import validate_name
from packager.run import commit
from packager.run.atomic import PARTIAL_PREFIX, REPLACED_PREFIX, atomic_write_text, partial_sibling, sweep_leftovers
from packager.run.hash_cache import HashCache
from packager.run.hashing import FileDigest, sha256_file
from packager.run.manifest import (MANIFEST_NAME, SCHEMA_VERSION, STATE_DIR, FileRecord, Manifest, StageRecord,
                                   now, read_manifest)
from packager.run.provenance import environment
from packager.terminal import keep_log_in


_HELD: set[str] = set()
"""Runs this process holds with `Run.hold` (flock conflicts between two opens of one file in one process too)."""


class Run:
    """A run directory. Open it, then record work with :meth:`stage`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self.hash_cache = HashCache(self.path / STATE_DIR / "hash-cache.json")
        keep_log_in(self.path / STATE_DIR)  # the libraries' captured output (packager.terminal)

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
        manifest = Manifest(schema_version=SCHEMA_VERSION, run=name, created_at=now(),
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

    def contains(self, file: Path) -> bool:
        """Whether ``file`` lies inside the run once links are followed: nothing outside it is ever deleted,
        whatever a received run's folders link to."""
        root, folder = os.path.realpath(self.path), os.path.realpath(Path(file).parent)
        return folder == root or folder.startswith(root + os.sep)

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

    def hold(self):
        """``with run.hold():`` keeps other packager processes off this run for longer than one stage (all of
        training: its checkpoints live outside any record until the end). Stages recorded inside it take the
        lock this process already holds."""
        return self._locked(holding=True)

    @contextmanager
    def _locked(self, *, holding: bool = False) -> Iterator[None]:
        key = os.path.realpath(self.path)
        if key in _HELD:  # inside this process's `hold`: its stages take the lock it holds
            yield
            return
        state = self.path / STATE_DIR
        state.mkdir(exist_ok=True)
        with open(state / "lock", "a+") as lock:  # "a+": never truncate the holder's pid before locking
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise RunConflictError(self.path, f"another packager process{who} is working on this run") from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            if holding:
                _HELD.add(key)
            try:
                yield
            finally:
                if holding:
                    _HELD.discard(key)

    @contextmanager
    def stage(self, name: str, *, parameters: dict[str, Any] | None = None) -> Iterator["StageWriter"]:
        """Record one stage. Outputs become visible and recorded only if the block completes."""
        with self._locked():
            commit.finish(self.path)  # a commit a killed process left half done
            self.manifest = read_manifest(self.path)  # another process may have recorded a stage
            sweep_leftovers(self.path)
            writer = StageWriter(self, name, dict(parameters or {}))
            with writer._staging():
                yield writer
            record, moves = writer._finish()
            previous = self.manifest.stages.get(name)
            stages = {k: v for k, v in self.manifest.stages.items() if k != name}
            stale = stale_stages(stages, record)
            stages = {k: v for k, v in stages.items() if k not in stale}
            stages[name] = record
            manifest = self.manifest.model_copy(update={"stages": stages})
            kept = {o.path for o in record.outputs}
            obsolete = [rec.path for stage in (*stale.values(), *([previous] if previous else []))
                        for rec in stage.outputs if rec.path not in kept]
            commit.commit(self.path, name, manifest, moves, list(dict.fromkeys(obsolete)))
            self.manifest = manifest
            for file, digest in writer._placed:
                self.hash_cache.remember(file, digest)
            self.hash_cache.save()
            writer.invalidated = sorted(stale)

    def finish_interrupted_commit(self) -> str | None:
        """Finish the commit of a stage killed between placing its outputs and recording them (the name of
        that stage), or None when there was none. Raises RunConflictError while another process holds the run."""
        if not commit.journal_path(self.path).is_file():
            return None
        with self._locked():
            finished = commit.finish(self.path)
            self.manifest = read_manifest(self.path)
            return finished

    def remove_file(self, file: Path) -> None:
        """Delete one file of the run, and the folders its going leaves empty; never anything outside the run."""
        commit.remove_file(self.path, file)


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
        self.started_at = now()
        self._inputs: dict[str, FileRecord] = {}
        self._dirs: dict[Path, Path] = {}  # final -> temporary
        self._files: dict[str, FileRecord] = {}
        self._texts: dict[Path, Path] = {}  # final -> staged, for write_output_text
        self.invalidated: list[str] = []  # stages dropped because this one changed their inputs
        self._known: dict[Path, FileDigest] = {}
        self._placed: list[tuple[Path, FileDigest]] = []  # outputs' final paths and digests, for the hash cache

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
        """Write one file of the run, hashed while writing. Like an output_dir, it is written beside its final
        path (``.partial-*``) and takes its place only when the stage commits: a stage that fails or is killed
        leaves the previous file, which the manifest still records, as it was."""
        final = self.run.path / relpath
        if not self.run.contains(final):
            raise UnsafeInputError(relpath, f"is outside the run {self.run.path}")
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = self._texts.get(final) or final.with_name(f"{PARTIAL_PREFIX}{final.name}-{secrets.token_hex(4)}")
        digest = atomic_write_text(staged, text)
        self._texts[final] = staged
        self._known[final] = digest
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
            for final, staged in self._texts.items():
                self.run.remove_file(staged)
                self._files.pop(self.run.relative(final), None)
            for rec in self._files.values():  # add_output: written in place by the stage itself
                self.run.remove_file(self.run.resolve(rec.path))
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                where = exc.filename or ", ".join(str(final) for final in self._dirs) or self.run.path
                raise DiskFullError(self.name, where) from exc
            raise

    def _finish(self) -> tuple[StageRecord, list[commit.Move]]:
        """The stage's record and the renames that place its outputs (done by the commit, not here)."""
        parents = self._default_parents()
        outputs = dict(self._files)
        moves = []
        for final, staged in self._texts.items():
            self._placed.append((final, self._known[final]))
            moves.append(commit.Move(self.run.relative(staged), self.run.relative(final)))
        for final, tmp in self._dirs.items():
            for p in sorted(tmp.rglob("*")):
                if p.is_file():
                    d = self._known.get(p) or sha256_file(p)
                    dest = final / p.relative_to(tmp)
                    self._placed.append((dest, d))
                    rel = self.run.relative(dest)
                    outputs[rel] = FileRecord(path=rel, sha256=d.sha256, size=d.size, parents=parents)
            aside = final.with_name(f"{REPLACED_PREFIX}{final.name}-{secrets.token_hex(4)}")
            moves.append(commit.Move(self.run.relative(tmp), self.run.relative(final), self.run.relative(aside)))
        record = StageRecord(name=self.name, started_at=self.started_at, finished_at=now(),
                             parameters=self.parameters, inputs=tuple(self._inputs.values()),
                             outputs=tuple(outputs.values()), metrics=self.metrics, environment=environment())
        return record, moves
