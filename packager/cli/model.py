"""``packager merge`` and ``packager export``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", metavar="RUN", required=False, type=click.Path(path_type=Path))
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), help="An adapter trained elsewhere.")
@click.option("--base", "base_model", help="Base model of --adapter (directory or Hub id).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory for --adapter merges.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16"]), help="Output dtype (default: merge.dtype).")
@click.option("--hub-id", help="With --adapter: the Hub id of a local --base, named in model cards.")
def merge(run_dir: Path | None, adapter: Path | None, base_model: str | None, out: Path | None,
          dtype: str | None, hub_id: str | None) -> None:
    """Merge the adapter into the base, shard by shard, verified against the unmerged model.

    \b
    Example:
      packager merge runs/example
      packager merge --adapter ./my-lora --base ./base --out runs/imported
    """
    from packager.stages.merge.stage import merge_external, merge_run

    if (run_dir is None) == (adapter is None) or (adapter is not None and not (base_model and out)):
        raise click.UsageError("give RUN, or --adapter DIR --base MODEL --out RUN")
    result = (merge_run(run_dir, dtype=dtype) if run_dir is not None
              else merge_external(adapter, base_model, out, dtype=dtype or "bfloat16", hub_id=hub_id))
    click.echo(result.summary())


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["safetensors", "gguf", "adapter-gguf"]), required=True,
              help="adapter-gguf: the LoRA itself as a GGUF adapter plus the base as f16 GGUF (Ollama ADAPTER).")
@click.option("--quant", multiple=True, help="GGUF type(s): f16, bf16, q8_0, Q4_K_M, Q5_K_M, Q6_K "
                                            "(default: export.gguf_quants).")
@click.option("--shard-size", help="Re-shard safetensors at this size, e.g. 500MB.")
def export(run_dir: Path, fmt: str, quant: tuple[str, ...], shard_size: str | None) -> None:
    """Export the merged model as safetensors (with a model card) or GGUF, with a parity check.

    A GGUF that fails parity against the merged model is moved to RUN/export/rejected/,
    recorded as failed, and the command exits 1.

    \b
    Example:
      packager export runs/example --format gguf --quant q8_0 --quant Q4_K_M
    """
    from packager.stages.export.formats import export_run

    result = export_run(run_dir, fmt=fmt, quants=quant, shard_size=shard_size)
    click.echo(result.summary())
    result.raise_for_rejected()
