"""``packager containerize`` and ``packager smoke``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["vllm", "ollama"]), required=True)
@click.option("--build", is_flag=True, help="Build the image with the container engine.")
@click.option("--engine", type=click.Choice(["docker", "podman"]),
              help="Container engine (default: containers.engine, else whichever works).")
@click.option("--tag", help="Image tag (default: packager/<run>-<target>:<manifest digest>).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Take the containers: section from this config instead of the one the run recorded.")
def containerize(run_dir: Path, target: str, build: bool, engine: str | None, tag: str | None,
                 config_path: Path | None) -> None:
    """Render a vLLM or Ollama serving build context from the run (and build it).

    The context lands in RUN/containers/<target>/: Dockerfile, the model files, compose.yaml,
    kubernetes.yaml, provenance.json (and the Modelfile for Ollama), all recorded in the manifest.

    \b
    Example:
      packager containerize runs/example --target vllm --build
    """
    from packager.serve.containerize import containerize_run

    result = containerize_run(run_dir, target=target, build=build, engine=engine, tag=tag, config_path=config_path)
    click.echo(result.summary())


@click.command()
@click.argument("run_dir", metavar="RUN", required=False, type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["vllm", "ollama"]), help="Which of the run's images (or servers).")
@click.option("--url", help="A running OpenAI-compatible endpoint instead of the built image.")
@click.option("--local", is_flag=True, help="No image: serve the model with a local CPU server (llama.cpp's for "
              "Ollama's GGUF, transformers serve for vLLM's merged checkpoint).")
@click.option("--model", "model_name", help="Served model name at --url (default: the run name).")
@click.option("--engine", type=click.Choice(["docker", "podman"]), help="Engine to start the image with.")
@click.option("--host-network", is_flag=True, help="Run the container with --network host (serves on 127.0.0.1).")
@click.option("--gpus/--no-gpus", default=None, help="Give the container the GPUs (default: when nvidia-smi exists).")
@click.option("--run-arg", "run_args", multiple=True, help="Extra argument for `<engine> run`, repeatable.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Take the smoke: section from this config instead of the one the run recorded.")
def smoke(run_dir: Path | None, target: str | None, url: str | None, local: bool, model_name: str | None,
          engine: str | None, host_network: bool, gpus: bool | None, run_args: tuple[str, ...],
          config_path: Path | None) -> None:
    """Start the image (or use an endpoint) and check it generates the golden answers.

    \b
    Checks: the model is listed; answers are non-empty and stop (finish_reason
    "stop", no stop-token text); the served name; greedy answers match the golden
    answers recorded at merge/export; concurrent requests all succeed; for Ollama,
    its native /api/chat. The container is always removed afterwards.

    \b
    Example:
      packager smoke runs/example --target vllm
      packager smoke runs/example --target ollama --local
      packager smoke runs/example --target ollama --url http://127.0.0.1:11434
      packager smoke --url http://127.0.0.1:8000 --model my-model
    """
    from packager.serve.endpoint import smoke_url
    from packager.serve.smoke import ContainerOptions, smoke_run

    if run_dir is None:
        if url is None or model_name is None:
            raise click.UsageError("give RUN --target vllm|ollama, or --url URL --model NAME")
        smoke_url(url, model_name, target=target)
        return
    if target is None:
        raise click.UsageError("--target vllm|ollama is required with RUN")
    options = ContainerOptions(engine=engine, host_network=host_network, gpus=gpus, run_args=run_args)
    smoke_run(run_dir, target=target, url=url, model=model_name, options=options, config_path=config_path,
              local=local)
