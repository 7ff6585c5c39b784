"""``packager eval-base``, ``packager train`` and ``packager eval``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-c", "--config", "config_path", default="packager.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The packager.yaml to use.")
@click.option("--dry-run", is_flag=True, help="A few steps on a small subset, to prove the config runs.")
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint.")
@click.option("--max-steps", type=int, help="Override train.max_steps.")
def train(config_path: Path, dry_run: bool, resume: bool, max_steps: int | None) -> None:
    """Train a LoRA / QLoRA / full fine-tune into the run directory.

    Checks and splits the data into the run first. Several processes or GPUs:
    accelerate launch --num_processes 2 -m packager train -c packager.yaml

    \b
    Example:
      packager train -c packager.yaml --dry-run
    """
    from packager.config import load_config
    from packager.stages.train.stage import train_model

    result = train_model(load_config(config_path), dry_run=dry_run, resume=resume, max_steps=max_steps)
    click.echo(result.summary())


@click.command("eval")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--against-base", is_flag=True, help="Evaluate the base model too, side by side.")
@click.option("--limit", type=int, help="Evaluate at most this many held-out rows.")
def eval_(run_dir: Path, against_base: bool, limit: int | None) -> None:
    """Task metrics of the fine-tune on the held-out split (greedy), optionally vs the base.

    Exit status 1 when the release gate in eval.gate fails (metrics are still recorded).

    \b
    Example:
      packager eval runs/example --against-base
    """
    from packager.stages.evaluate.stage import evaluate_run

    result = evaluate_run(run_dir, against_base=against_base, limit=limit)
    click.echo(result.summary())
    result.raise_for_gate()


@click.command("eval-base")
@click.option("-c", "--config", "config_path", default="packager.yaml", show_default=True,
              type=click.Path(path_type=Path), help="The packager.yaml to use.")
@click.option("--train-anyway", is_flag=True, help="Exit 0 although prompting reaches eval.gate.max_prompting_score.")
def eval_base(config_path: Path, train_anyway: bool) -> None:
    """Would prompting do? The base model on the held-out split before any training: bare, and prompted with
    the task's system prompt and eval.prompting.shots examples from the training split.

    Checks and splits the data into the run first, as train does; recorded as stage eval-base and reused by
    eval. Exit status 1 when the prompted base already reaches eval.gate.max_prompting_score.

    \b
    Example:
      packager eval-base -c packager.yaml
    """
    from packager.config import load_config
    from packager.stages.evaluate.base import evaluate_base_run

    cfg = load_config(config_path)
    baselines = evaluate_base_run(cfg.run_dir, cfg)
    click.echo(baselines.summary(cfg.eval))
    if not train_anyway:
        baselines.raise_for_prompting_gate(cfg.eval)
