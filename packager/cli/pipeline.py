"""``packager init``, ``packager deploy`` and ``packager demo``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", "base_model", default="HuggingFaceTB/SmolLM2-135M-Instruct", show_default=True,
              help="Base model: a Hub id or a local checkpoint directory.")
@click.option("--force", is_flag=True, help="Overwrite an existing packager.yaml and example data.")
def init(directory: Path, base_model: str, force: bool) -> None:
    """Write a commented packager.yaml and a tiny example dataset into DIRECTORY.

    \b
    Example:
      packager init myproject --base ./base
    """
    from packager.pipeline.scaffold import init_project

    for path in init_project(directory, base_model=base_model, force=force):
        click.echo(f"wrote {path}")


@click.command()
@click.option("-c", "--config", "config_path", default="packager.yaml", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Use this run directory.")
@click.option("--skip-train", is_flag=True, help="Start from an existing trained run.")
@click.option("--train-anyway", is_flag=True,
              help="Train although the prompted base reaches eval.gate.max_prompting_score.")
@click.option("--registry", help="Push OCI artifacts under this prefix, e.g. 127.0.0.1:5000/models "
              "(default: publish.oci_ref's).")
@click.option("--insecure", is_flag=True, help="The registry speaks plain HTTP (a local one).")
@click.option("--hub-repo", help="Hub repo for the merged model (default: publish.hub_repo).")
@click.option("--hub-push", is_flag=True, help="Really push to the Hub (default: write the dry-run plan).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="Sign with this private key.")
@click.option("--engine", type=click.Choice(["docker", "podman"]), help="Container engine to build with.")
@click.option("--no-build", is_flag=True, help="Render build contexts only.")
def deploy(config_path: Path, run_dir: Path | None, skip_train: bool, train_anyway: bool, registry: str | None,
           insecure: bool, hub_repo: str | None, hub_push: bool, key: Path | None, engine: str | None,
           no_build: bool) -> None:
    """Run every configured stage in order, refusing to push what failed a gate.

    Each stage is skipped when what it recorded still holds, so a second
    deploy does no work and pushes nothing new.

    \b
    Example:
      packager deploy -c packager.yaml --registry 127.0.0.1:5000/models --insecure --key keys/signing-key.pem
    """
    from packager.pipeline.deploy import DeployOptions, deploy as run_deploy

    options = DeployOptions(run_dir=run_dir, skip_train=skip_train, train_anyway=train_anyway, registry=registry,
                            insecure=insecure,
                            hub_repo=hub_repo, hub_dry_run=not hub_push, key=key, engine=engine,
                            build=False if no_build else None)
    click.echo(run_deploy(config_path, options).summary())


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="Where the base model, data, config, keys, run and report go.")
def demo(workdir: Path) -> None:
    """The whole job on the embedded default model (SmolLM2-135M-Instruct), on a CPU, in minutes.

    Data check, the base on the task, LoRA training, fine-tune vs base (it must win), verified merge,
    safetensors + GGUF with parity, vLLM and Ollama contexts, smoke tests on local servers, sign, verify,
    report.html. A second run reuses every stage whose record still verifies.

    \b
    Example:
      packager demo --workdir demo
    """
    from packager.pipeline.demo import run_demo, where_everything_is

    click.echo(where_everything_is(run_demo(workdir, say=click.echo)))
