"""``packager data check``: every row problem at once, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def data() -> None:
    """Check a dataset before any model loads.

    \b
    Example:
      packager data check data/train.jsonl --model ./base
    """


@data.command("check")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--eval", "eval_path", type=click.Path(path_type=Path), help="A separate held-out file.")
@click.option("--model", help="Base model whose tokenizer and chat template to check against.")
@click.option("--chat-template", type=click.Path(dir_okay=False, path_type=Path),
              help="A Jinja chat template file, for tokenizers without one.")
@click.option("--max-seq-length", type=int, default=1024, show_default=True)
@click.option("--eval-fraction", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_check(dataset: Path, eval_path: Path | None, model: str | None, chat_template: Path | None,
               max_seq_length: int, eval_fraction: float, seed: int, as_json: bool) -> None:
    """Validate rows, render a sample through the chat template, report token lengths.

    Every problem is reported at once with its file, line and field; exit 2 if any.

    \b
    Example:
      packager data check data/train.jsonl --model ./base
    """
    from packager.stages.data.check import check_data

    report = check_data(dataset, eval_path=eval_path, model=model, chat_template=chat_template,
                        max_seq_length=max_seq_length, eval_fraction=eval_fraction, seed=seed)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    if report.errors:
        click.get_current_context().exit(2)
