"""``packager verify``: re-hash every recorded file and report what no longer matches the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import RunConflictError
from packager.run.atomic import is_leftover
from packager.run.directory import Run
from packager.run.hashing import sha256_file
from packager.run.manifest import MANIFEST_NAME, SIGNATURES_DIR, STATE_DIR, FileRecord, read_manifest


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

    def to_json(self) -> dict:
        return {"run": str(self.run_dir), "ok": self.ok, "files_checked": self.files_checked,
                "bytes_checked": self.bytes_checked, "problems": self.problems, "warnings": self.warnings}

    def summary(self) -> str:
        return f"{self.run_dir}: OK, {self.files_checked} files, {self.bytes_checked:,} bytes match the manifest"


def verify_run(run_dir: Path | str) -> VerifyReport:
    """Re-hash every recorded file (no cache) and report modified, missing and unrecorded files.

    A stage killed between placing its outputs and recording them left its commit journal: that commit is
    finished first (the one write verify makes), as the next stage on the run would, and said in a warning."""
    run_dir = Path(run_dir)
    report = VerifyReport(run_dir)
    run = Run(run_dir, read_manifest(run_dir))
    if not _finish_interrupted_commit(run, report):
        return report
    manifest = run.manifest
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


def _finish_interrupted_commit(run: Run, report: VerifyReport) -> bool:
    """False when the run cannot be verified now (another process is committing to it)."""
    try:
        finished = run.finish_interrupted_commit()
    except RunConflictError as exc:
        report.problems.append(f"cannot verify now: {exc}")
        return False
    if finished is not None:
        report.warnings.append(f"finished the commit of stage {finished!r}: its process was killed after placing "
                               "its outputs, before recording them")
    return True
