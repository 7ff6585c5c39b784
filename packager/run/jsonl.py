"""JSON Lines files packager writes into a run (splits, predictions, call cases), read back."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path, *, missing_ok: bool = True) -> list[dict]:
    """Each non-blank line's JSON value; [] for a file that does not exist (unless ``missing_ok`` is False)."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON value a line (UTF-8, non-ASCII kept), the form :func:`read_jsonl` reads back."""
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
