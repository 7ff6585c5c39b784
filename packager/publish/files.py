"""What is published of a run: the recorded files of each kind (merged, adapter, GGUF)."""

from __future__ import annotations

from packager.errors import MissingPathError
from packager.run.directory import Run
from packager.run.manifest import FileRecord


PUBLISHED_FOLDERS = {"merged": "export/safetensors/", "adapter": "train/adapter/", "gguf": "export/gguf/"}


def published_files(run: Run, what: str) -> list[tuple[str, FileRecord]]:
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
