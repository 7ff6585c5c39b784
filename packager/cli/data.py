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
@click.argument("dataset")
@click.option("--eval", "eval_path", help="A separate held-out file (or Hub dataset).")
@click.option("--split", default="train", show_default=True, help="The split of a Hub dataset.")
@click.option("--subset", help="The config (subset) of a Hub dataset that has several.")
@click.option("--column", "columns", multiple=True, metavar="FIELD=COLUMN",
              help="The data's own name of a field (messages, instruction, input, output, system, tools). "
                   "Repeatable.")
@click.option("--tools", "tools_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON file with the tools that rows declaring none may call (data.tools).")
@click.option("--model", help="Base model whose tokenizer and chat template to check against.")
@click.option("--chat-template", type=click.Path(dir_okay=False, path_type=Path),
              help="A Jinja chat template file, for tokenizers without one.")
@click.option("--system-policy", type=click.Choice(["error", "merge_into_first_user", "drop"]), default="error",
              show_default=True, help="What becomes of a system message the chat template cannot take "
                                      "(data.system_policy).")
@click.option("--max-seq-length", type=int, default=1024, show_default=True)
@click.option("--eval-fraction", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_check(dataset: str, eval_path: str | None, split: str, subset: str | None, columns: tuple[str, ...],
               tools_file: Path | None, model: str | None, chat_template: Path | None, system_policy: str,
               max_seq_length: int, eval_fraction: float, seed: int, as_json: bool) -> None:
    """Validate rows, render a sample through the chat template, report token lengths.

    DATASET is a JSONL, JSON, CSV/TSV or Parquet file, a `datasets` directory, or a Hub dataset as
    hf://datasets/ORG/NAME[@REVISION]. Every problem is reported at once with its file, line (or row) and
    field; exit 2 if any.

    \b
    Example:
      packager data check data/train.jsonl --model ./base
      packager data check hf://datasets/org/tickets@v2 --split train --column messages=conversation
    """
    from packager.stages.data.check import check_data

    mapping = dict(_column(c) for c in columns)
    report = check_data(_spec(dataset, split, subset), eval_path=_spec(eval_path, split, subset) if eval_path else None,
                        model=model, chat_template=chat_template, max_seq_length=max_seq_length,
                        eval_fraction=eval_fraction, seed=seed, columns=mapping, system_policy=system_policy,
                        tools=tools_file)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    if report.errors:
        click.get_current_context().exit(2)


def _spec(value: str, split: str, subset: str | None):
    """A local path, or a Hub dataset given as hf://datasets/ORG/NAME[@REVISION]."""
    from pydantic import ValidationError

    from packager.config import HubDataset, parse_hub_url

    fields = parse_hub_url(value)
    if isinstance(fields, str):
        return Path(value)
    try:
        return HubDataset.model_validate({**fields, "split": split, "config": subset})
    except ValidationError:
        raise click.BadParameter(f"{value!r} is not hf://datasets/ORG/NAME[@REVISION]") from None


def _column(value: str) -> tuple[str, str]:
    ours, _, theirs = value.partition("=")
    if ours not in ("messages", "instruction", "input", "output", "system") or not theirs:
        raise click.BadParameter(f"{value!r}: give FIELD=COLUMN, FIELD one of messages, instruction, input, "
                                 "output, system", param_hint="--column")
    return ours, theirs
