"""``packager deploy``: every configured stage in order, each skipped when what it recorded still holds.

data check + train -> eval gate -> merge -> export -> containerize (+ build) -> smoke -> sign -> push.
A stage is skipped when the manifest records it with the same settings and its files verify (by the hash
cache: size and mtime, the full re-hash being ``packager verify``), so a second deploy of the same config
does no work and pushes nothing new. Nothing is pushed when the eval gate or a smoke test failed: deploy
stops there, naming the gate and its report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from packager.errors import StageError


@dataclass
class DeployOptions:
    run_dir: Path | None = None
    skip_train: bool = False
    registry: str | None = None  # OCI ref prefix, e.g. 127.0.0.1:5000/models; default publish.oci_ref
    insecure: bool = False
    hub_repo: str | None = None  # default publish.hub_repo
    hub_dry_run: bool = True
    key: Path | None = None
    engine: str | None = None
    build: bool | None = None  # None: when a container engine works


@dataclass
class Step:
    name: str
    status: str  # done, passed (a gate), skipped, planned (a dry run), refused
    detail: str = ""


@dataclass
class DeployResult:
    run_dir: Path
    steps: list[Step] = field(default_factory=list)

    def did_work(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "done"]


def _training_settings(cfg) -> dict:
    data = cfg.model_dump(mode="json")
    return {k: data[k] for k in ("base", "data", "train")}  # not run: where the run lives changes nothing


def deploy(config_path: Path | str, options: DeployOptions, *, say: Callable[[str], None] = click.echo
           ) -> DeployResult:
    from packager.config import load_config
    from packager.run.directory import Run
    from packager.run.manifest import read_manifest

    cfg = load_config(config_path)
    run_dir = Path(options.run_dir or cfg.run_dir)
    result = DeployResult(run_dir)

    def step(name: str, status: str, detail: str = "") -> None:
        result.steps.append(Step(name, status, detail))
        mark = {"done": "✓", "passed": "✓", "skipped": "·", "planned": "~"}.get(status, "✗")
        say(f"{mark} {name}: {status}"
            + (f" ({detail})" if detail else ""))

    # ---- data check + train
    trained = (run_dir / "manifest.json").is_file() and "train" in read_manifest(run_dir).stages
    if options.skip_train:
        if not trained:
            raise StageError("deploy", f"--skip-train: {run_dir} has no trained run")
        step("train", "skipped", "--skip-train")
    elif trained and _training_settings(_recorded(run_dir)) == _training_settings(cfg) \
            and Run.open(run_dir).outputs_intact("train"):
        step("train", "skipped", "recorded with the same data, base and settings; outputs verify")
    else:
        from packager.train import train_model

        metrics = train_model(cfg).metrics
        step("train", "done", f"{metrics['global_step']} steps, best eval loss {metrics['eval_loss_best']}")
    run = Run.open(run_dir)

    # ---- eval gate
    recorded_eval = run.manifest.stages.get("eval")
    if recorded_eval and recorded_eval.parameters.get("eval_config") == cfg.eval.model_dump(mode="json") \
            and run.outputs_intact("eval"):
        step("eval", "skipped", "recorded with the same eval settings; outputs verify")
    else:
        from packager.evaluate import evaluate_run

        evaluated = evaluate_run(run_dir, against_base=cfg.eval.gate.must_beat_base, eval_config=cfg.eval)
        step("eval", "done", f"{len(evaluated.finetuned)} metrics on the held-out split")
    run = Run.open(run_dir)
    gate = run.manifest.stages["eval"].metrics.get("gate") or {}
    if not gate.get("passed"):
        step("eval gate", "refused", "; ".join(gate.get("failures", [])))
        raise StageError("deploy", "the eval gate failed: " + "; ".join(gate.get("failures", ["no gate recorded"])),
                         hint=f"nothing was merged, built or pushed; the report is {run_dir / 'eval' / 'report.html'}")
    metrics = run.manifest.stages["eval"].metrics
    metric = metrics.get("task_metric")
    ft, base = (metrics.get("finetuned") or {}).get(metric), (metrics.get("base") or {}).get(metric)
    step("eval gate", "passed", f"{metric} {ft:.3f}" + (f" vs base {base:.3f}" if base is not None else "")
         if isinstance(ft, (int, float)) else "")

    # ---- merge
    if cfg.train.method == "full":
        step("merge", "skipped", "a full fine-tune has nothing to merge")
    elif "merge" in run.manifest.stages and run.outputs_intact("merge"):
        step("merge", "skipped", "merged checkpoint verifies")
    else:
        from packager.merge import merge_run

        v = merge_run(run_dir).verification
        step("merge", "done", f"verified: greedy agreement {v['greedy_agreement']:.3f}")

    # ---- export
    from packager.export import export_run
    from packager.models.gguf import canonical_quant

    run = Run.open(run_dir)
    if "safetensors" in cfg.export.formats:
        if "export-safetensors" in run.manifest.stages and run.outputs_intact("export-safetensors"):
            step("export safetensors", "skipped", "recorded and intact")
        else:
            export_run(run_dir, fmt="safetensors")
            step("export safetensors", "done")
    if "gguf" in cfg.export.formats:
        quants = [canonical_quant(q) for q in cfg.export.gguf_quants]
        recorded = run.manifest.stages.get("export-gguf")
        if recorded and recorded.parameters.get("quants") == quants and run.outputs_intact("export-gguf"):
            step("export gguf", "skipped", "recorded with the same quants and intact")
        else:
            exported = export_run(run_dir, fmt="gguf", quants=tuple(quants))
            rejected = f"; rejected by parity: {', '.join(exported.rejected)}" if exported.rejected else ""
            step("export gguf", "done", f"{len(exported.files)} file(s){rejected}")

    # ---- containers, smoke
    from packager.containerize import build_run_image, containerize_run

    engine = _engine_or_none(options.engine or cfg.containers.engine) if options.build is not False else None
    if options.build and engine is None:
        raise StageError("deploy", "--build: no working container engine")
    for target in cfg.containers.targets:
        rendered = containerize_run(run_dir, target=target, config_path=config_path)
        step(f"containerize {target}", "skipped" if rendered.unchanged else "done",
             f"context sha256:{rendered.context_digest[:12]}")
        if options.build is False:
            step(f"build {target}", "skipped", "--no-build")
        elif engine is None:
            step(f"build {target}", "skipped", "no working container engine (Docker or Podman): context rendered only")
        elif target not in _buildable(engine, cfg):
            step(f"build {target}", "skipped", f"base image {getattr(cfg.containers, target).image} is not here "
                                               "and containers.pull is false")
        else:
            run = Run.open(run_dir)
            image = run.manifest.stages.get(f"image-{target}")
            if image and image.metrics.get("context_digest") == rendered.context_digest and \
                    _image_present(engine, image.metrics.get("image_id")):
                step(f"build {target}", "skipped", f"image {image.metrics['tag']} is current")
            else:
                built = build_run_image(run, target=target, engine=engine.name)
                step(f"build {target}", "done", f"{built['tag']} {built['image_id'][:12]}")
    for target in cfg.containers.targets:
        _smoke(run_dir, cfg, target, config_path, step)

    # ---- sign
    if options.key is not None:
        from packager.signing import public_key_of, sign_run

        signed = sign_run(run_dir, key=options.key, public_key=public_key_of(options.key))
        step("sign", "skipped" if signed.already_signed else "done",
             "signature verifies" if signed.already_signed else f"{signed.files} files")

    # ---- push
    registry = options.registry or (cfg.publish.oci_ref.rsplit("/", 1)[0] if cfg.publish.oci_ref else None)
    if registry:
        from packager.oci import push_oci

        tag = _oci_tag(cfg)
        for what in cfg.publish.oci_what:
            ref = f"{registry}/{cfg.run.name.lower()}-{what}:{tag}"
            pushed = push_oci(run_dir, ref, what=what, insecure=options.insecure)
            step(f"push oci {what}", "skipped" if pushed.already_there else "done",
                 f"{ref}@{pushed.digest[:19]}" + (f", {pushed.uploaded_bytes:,} bytes" if pushed.uploaded_bytes else ""))
    hub_repo = options.hub_repo or cfg.publish.hub_repo
    if hub_repo:
        from packager.hub import push_hub

        for what in cfg.publish.hub_what:
            repo = hub_repo if what == "merged" else f"{hub_repo}-{'adapter' if what == 'adapter' else 'GGUF'}"
            hub = push_hub(run_dir, repo_id=repo, what=what, private=cfg.publish.private,
                           dry_run=options.hub_dry_run)
            if hub.dry_run_file:
                step(f"hub {what}", "planned", f"dry run, nothing sent: plan in {hub.dry_run_file}")
            else:
                step(f"hub {what}", "done" if hub.commit else "skipped",
                     hub.url or "the repo already holds these files")
    return result


def _recorded(run_dir: Path):
    from packager.run.settings import recorded_config
    from packager.run.directory import Run

    return recorded_config(Run.open(run_dir))


def _engine_or_none(preferred: str | None):
    from packager.engine import find_engine
    from packager.errors import PackagerError

    try:
        return find_engine(preferred)
    except PackagerError:
        return None


def _buildable(engine, cfg) -> list[str]:
    """Targets whose base image this engine has or can pull (a missing Ollama image is reported, not fatal)."""
    from packager.engine import image_exists, qualified

    return [t for t in cfg.containers.targets if image_exists(engine, qualified(getattr(cfg.containers, t).image))
            or cfg.containers.pull]


def _image_present(engine, image_id: str | None) -> bool:
    from packager.engine import image_exists

    return bool(image_id) and image_exists(engine, image_id)


def _oci_tag(cfg) -> str:
    ref = cfg.publish.oci_ref or ""
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _smoke(run_dir: Path, cfg, target: str, config_path, step) -> None:
    """Smoke the built image when it can run here (GPUs for vLLM), else the same model on a local CPU server."""
    import shutil

    from packager.run.directory import Run
    from packager.smoke import smoke_run

    run = Run.open(run_dir)
    recorded = run.manifest.stages.get(f"smoke-{target}")
    if recorded and recorded.metrics.get("passed") and run.outputs_intact(f"smoke-{target}"):
        step(f"smoke {target}", "skipped", "passed for these files")
        return
    image = (run_dir / "containers" / f"{target}-image.json").is_file()
    local = not (image and (target == "ollama" or shutil.which("nvidia-smi")))
    try:
        report = smoke_run(run_dir, target=target, config_path=config_path, local=local)
    except StageError as exc:
        step(f"smoke {target}", "refused", exc.message)
        raise StageError("deploy", f"the {target} smoke test failed: {exc.message}",
                         hint=f"nothing was pushed; the report is {run_dir / 'smoke' / f'{target}.json'}") from None
    where = report.timings.get("server", "the built image")
    step(f"smoke {target}", "done", f"{sum(c.passed for c in report.checks)} checks passed against {where}")


def format_summary(result: DeployResult) -> str:
    work = result.did_work()
    return (f"deploy of {result.run_dir}: " + (f"{len(work)} step(s) did work ({', '.join(work)})" if work
                                                else "nothing to do: every stage's record still holds"))


def steps_json(result: DeployResult) -> str:
    return json.dumps([s.__dict__ for s in result.steps], indent=2)
