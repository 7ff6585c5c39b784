"""``packager push``, ``packager sign`` and ``packager keygen``."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def push() -> None:
    """Publish a run's artifacts: Hugging Face Hub, OCI registry, container images.

    \b
    Example:
      packager push hub runs/example --repo-id me/model --dry-run
    """


@push.command("hub")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="The Hub repo, e.g. your-org/model (one repo per kind).")
@click.option("--what", type=click.Choice(["merged", "adapter", "gguf"]), default="merged", show_default=True)
@click.option("--private/--public", default=True, show_default=True, help="Visibility when the repo is created.")
@click.option("--revision", help="Branch to push to (created if missing).")
@click.option("--dry-run", is_flag=True, help="Write the exact commit plan (files, sizes, digests, card); no network.")
def push_hub(run_dir: Path, repo_id: str, what: str, private: bool, revision: str | None, dry_run: bool) -> None:
    """Push the merged model, adapter or GGUF to the Hugging Face Hub.

    Idempotent: files already in the repo are not uploaded again, and an
    unchanged run makes no commit. The token comes from HF_TOKEN or `hf auth
    login` and is never written anywhere.

    \b
    Example:
      packager push hub runs/example --repo-id me/model-GGUF --what gguf --dry-run
    """
    from packager.publish.hub import push_hub as push

    click.echo(push(run_dir, repo_id=repo_id, what=what, private=private, revision=revision,
                    dry_run=dry_run).summary())


@push.command("oci")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("ref")
@click.option("--what", type=click.Choice(["gguf", "merged", "adapter"]), default="gguf", show_default=True)
@click.option("--insecure", is_flag=True, help="Plain HTTP (a local registry).")
def push_oci(run_dir: Path, ref: str, what: str, insecure: bool) -> None:
    """Push model files as an OCI artifact (CNCF ModelPack media types).

    Credentials: PACKAGER_REGISTRY_USERNAME / PACKAGER_REGISTRY_PASSWORD, else
    the Podman or Docker auth file (podman login / docker login).

    \b
    Example:
      packager push oci runs/example 127.0.0.1:5000/models/example:v1 --insecure
    """
    from packager.publish.oci import push_oci as push

    click.echo(push(run_dir, ref, what=what, insecure=insecure).summary())


@push.command("image")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("ref")
@click.option("--target", type=click.Choice(["vllm", "ollama"]), required=True)
@click.option("--engine", type=click.Choice(["docker", "podman"]))
@click.option("--insecure", is_flag=True, help="Plain HTTP (a local registry).")
def push_image(run_dir: Path, ref: str, target: str, engine: str | None, insecure: bool) -> None:
    """Push the run's built serving image with the container engine; record its digest.

    \b
    Example:
      packager push image runs/example registry.example.com/team/example-vllm:v1 --target vllm
    """
    from packager.serve.images import push_run_image

    pushed = push_run_image(run_dir, ref, target=target, engine=engine, insecure=insecure)
    click.echo(f"{ref}@{pushed['digest']}")


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="EC private key (PEM). Make one with: packager keygen DIR")
def sign(run_dir: Path, key: Path) -> None:
    """Sign every artifact of the run (OpenSSF model-signing, offline, with a local key).

    Check with: packager verify RUN --key KEY.pub.pem

    \b
    Example:
      packager keygen keys/ && packager sign runs/example --key keys/signing-key.pem
    """
    from packager.publish.signing import sign_run

    click.echo(sign_run(run_dir, key=key).summary())


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def keygen(out_dir: Path) -> None:
    """Make an EC P-256 signing key pair: signing-key.pem (0600) and signing-key.pub.pem.

    \b
    Example:
      packager keygen keys/
    """
    from packager.publish.signing import generate_key

    private, public = generate_key(out_dir)
    click.echo(f"private key: {private} (keep it secret)\npublic key:  {public}")
