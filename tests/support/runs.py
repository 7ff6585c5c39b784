"""Runs for the tests: the example task's config, a tiny trained run, copies of shared runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "tickets.jsonl"


TICKET_FORMAT = ('\\{"category": "(billing|account|bug|feature_request)", "priority": "(low|medium|high)", '
                 '"summary": "[^"]+"\\}')


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("lock"))
    return dest


def write_config(directory: Path, base: Path, *, rows: int = 40, data: dict | None = None,
                 source: Path = EXAMPLE_DATA, base_extra: dict | None = None, eval_extra: dict | None = None,
                 **train) -> Path:
    """A config over the first `rows` rows of the example task (the tiny tokenizer makes rows ~270 tokens), or
    of ``source``; ``data``, ``base_extra`` and ``eval_extra`` add to those sections."""
    (directory / "data.jsonl").write_text("".join(source.read_text().splitlines(keepends=True)[:rows]))
    cfg = {"run": {"name": "t", "root": "runs"}, "base": {"model": str(base), **(base_extra or {})},
           "data": {"train": "data.jsonl", "max_seq_length": 512, **(data or {})},
           "train": {"max_steps": 4, "eval_steps": 2, "batch_size": 2, "sample_every": 2, **train},
           "eval": {"max_new_tokens": 8, "format_regex": TICKET_FORMAT, **(eval_extra or {})}}
    path = directory / "packager.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dry_run_train(runner, directory: Path, base: Path, **train) -> Path:
    """`packager train --dry-run` on write_config's tiny config; the run directory."""
    from packager.cli import cli
    from packager.config import load_config

    config = write_config(directory, base, **train)
    result = runner.invoke(cli, ["train", "-c", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    return load_config(config).run_dir


def trained_run(tmp_path, base_dir, runner):
    """A tiny dry-run LoRA with a learning rate high enough for the adapter to matter."""
    return dry_run_train(runner, tmp_path, base_dir, learning_rate=0.05)
