"""Training checkpoints in the run's working area, and where ``--resume`` continues from."""

from __future__ import annotations

import json
from pathlib import Path

from packager.errors import InterruptedStageError
from packager.run.manifest import STATE_DIR


def working_dir(run_dir: Path) -> Path:
    """Checkpoints and in-progress samples: hidden state of the run, kept for --resume, never an output."""
    return Path(run_dir) / STATE_DIR / "train-work"


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint a kill did not cut short (the trainer writes trainer_state.json last)."""
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def resume_point(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint with steps left to train, where ``--resume`` continues.

    A kill can land after the final checkpoint but before the run is recorded. The Trainer resumed from a
    checkpoint already at max_steps takes one step more than the uninterrupted run did, so an earlier
    checkpoint redoes the last steps instead. A trainer_state.json cut short by the kill does not count.
    """
    for path in sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("global_step", 0) < state.get("max_steps", 0):
            return path
    return None


def interrupted(checkpoints: Path) -> InterruptedStageError:
    """What Ctrl-C during training leaves: nothing recorded, and the checkpoint --resume continues from."""
    point = resume_point(checkpoints) if checkpoints.is_dir() else None
    if point is None:
        return InterruptedStageError("train", "before the first checkpoint; nothing was recorded",
                                     hint="re-run the same command to start again")
    return InterruptedStageError("train", f"nothing was recorded; {point.name} is complete",
                                 hint=f"continue from {point.name}: the same command with --resume (without "
                                      "--resume, training starts again from step 0)")
