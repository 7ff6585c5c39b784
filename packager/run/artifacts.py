"""Where a run keeps the model that later stages work on."""

from __future__ import annotations

from pathlib import Path

from packager.errors import MissingPathError


def merged_model_dir(run) -> Path:
    """The run's complete checkpoint: ``RUN/merged``, or ``RUN/train/model`` for a full fine-tune.

    Raises:
        MissingPathError: neither exists yet; the hint names the command that makes it.
    """
    for candidate in (run.path / "merged", run.path / "train" / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise MissingPathError(run.path, "has no merged model yet", hint=f"run: packager merge {run.path}")


def adapter_dir(run) -> Path:
    """``RUN/train/adapter``: the LoRA adapter the run trained (absent for a full fine-tune)."""
    return run.path / "train" / "adapter"
