"""``packager deploy``: every configured stage in order, each skipped when what it recorded still holds.

(prompting gate) -> data check + train -> eval -> eval gate -> merge -> export -> containerize (+ build) -> smoke
-> sign -> push.

The pipeline is a table (:func:`pipeline_stages`). A stage with a manifest record is skipped by one rule:
its record holds the same settings, its files verify (by the hash cache: size and mtime, the full re-hash
being ``packager verify``), and it did not fail. The others (containerize, sign, push) are idempotent in the
library: they compare what they would make with what is there, and report "skipped" themselves. So a second
deploy of the same config does no work and pushes nothing new. Nothing is pushed when the eval gate or a
smoke test failed: deploy stops there, naming the gate and its report.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from packager.config import PackagerConfig, load_config, parse_size
from packager.errors import PackagerError, StageError
from packager.models.gguf import canonical_quant
from packager.publish.hub import push_hub
from packager.publish.oci import push_oci
from packager.publish.signing import public_key_of, sign_run
from packager.run.directory import Run
from packager.run.manifest import read_manifest
from packager.serve.containerize import containerize_run
from packager.serve.engine import Engine, find_engine, image_exists, qualified
from packager.serve.images import build_run_image, image_file
from packager.serve.smoke import smoke_run
from packager.stages.evaluate.base import evaluate_base_run
from packager.stages.evaluate.metrics import PROMPTING_HINT, prompting_verdict, task_metric_name
from packager.stages.evaluate.stage import evaluate_run
from packager.stages.export.formats import export_run
from packager.stages.merge.stage import merge_run
from packager.stages.train.stage import train_model


@dataclass
class DeployOptions:
    run_dir: Path | None = None
    skip_train: bool = False
    train_anyway: bool = False  # train although eval.gate.max_prompting_score says prompting already does
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

    def line(self) -> str:
        mark = {"done": "✓", "passed": "✓", "skipped": "·", "planned": "~"}.get(self.status, "✗")
        return f"{mark} {self.name}: {self.status}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class DeployResult:
    run_dir: Path
    steps: list[Step] = field(default_factory=list)

    def did_work(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "done"]

    def summary(self) -> str:
        work = self.did_work()
        return (f"deploy of {self.run_dir}: " + (f"{len(work)} step(s) did work ({', '.join(work)})" if work
                                                  else "nothing to do: every stage's record still holds"))


class Refusal(StageError):
    """A gate that stops the pipeline before anything is pushed: its step is shown as refused."""

    def __init__(self, detail: str, message: str, *, hint: str):
        super().__init__("deploy", message, hint=hint)
        self.detail = detail


@dataclass
class Plan:
    """What every stage of one deploy sees."""

    cfg: PackagerConfig
    config_path: Path
    options: DeployOptions
    run_dir: Path
    engine: Engine | None = None  # the container engine builds use, when one works

    @property
    def run(self) -> Run:
        return Run.open(self.run_dir)  # re-read each time: the stage before recorded more


@dataclass(frozen=True)
class PipelineStage:
    """One row of the pipeline: ``run`` does the work and says what it did.

    With ``record``, the stage is skipped while that manifest record holds ``settings`` (the values its
    parameters must have, by dotted path), its outputs are intact and it did not fail. ``skip`` gives a
    reason not to run at all (a full fine-tune has nothing to merge), checked first.
    """

    name: str
    run: Callable[[Plan], tuple[str, str]]  # (status, detail)
    record: str | None = None
    settings: Callable[[Plan], dict] = lambda plan: {}
    skip: Callable[[Plan], str | None] = lambda plan: None


def record_holds(run_dir: Path, record: str, settings: dict) -> bool:
    """The uniform skip rule: recorded with these settings, outputs intact, and not recorded as failed."""
    if not (run_dir / "manifest.json").is_file():
        return False
    run = Run.open(run_dir)
    stage = run.manifest.stages.get(record)
    return stage is not None and all(_lookup(stage.parameters, key) == value for key, value in settings.items()) \
        and stage.metrics.get("passed", True) is not False and run.outputs_intact(record)


def _lookup(parameters: dict, dotted: str):
    value = parameters
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def deploy(config_path: Path | str, options: DeployOptions, *, say: Callable[[str], None] = click.echo,
           on_step: Callable[[Step], None] | None = None) -> DeployResult:
    """Run every stage of :func:`pipeline_stages` in order; ``on_step`` sees each step (default: print it)."""
    cfg = load_config(config_path)
    plan = Plan(cfg, Path(config_path), options, Path(options.run_dir or cfg.run_dir))
    result = DeployResult(plan.run_dir)
    report = on_step or (lambda step: say(step.line()))
    for stage in pipeline_stages(plan):
        try:
            step = _run_stage(stage, plan)
        except Refusal as refusal:
            step = Step(stage.name, "refused", refusal.detail)
            result.steps.append(step)
            report(step)
            raise
        result.steps.append(step)
        report(step)
    return result


def _run_stage(stage: PipelineStage, plan: Plan) -> Step:
    reason = stage.skip(plan)
    if reason:
        return Step(stage.name, "skipped", reason)
    if stage.record and record_holds(plan.run_dir, stage.record, stage.settings(plan)):
        return Step(stage.name, "skipped", "recorded with the same settings; outputs verify")
    status, detail = stage.run(plan)
    return Step(stage.name, status, detail)


def pipeline_stages(plan: Plan) -> list[PipelineStage]:
    """The release pipeline for this config, in order."""
    cfg = plan.cfg
    stages = [
        PipelineStage("prompting gate", _prompting_gate, skip=_skip_prompting_gate),
        PipelineStage("train", _train, record="train", settings=_training_settings, skip=_skip_train),
        PipelineStage("eval", _evaluate, record="eval",
                      settings=lambda p: {"eval_config": p.cfg.eval.model_dump(mode="json")}),
        PipelineStage("eval gate", _eval_gate),
        PipelineStage("merge", _merge, record="merge", skip=_skip_merge,
                      settings=lambda p: {"dtype": p.cfg.merge.dtype, "shard_bytes": parse_size(p.cfg.merge.shard_size)}),
    ]
    if "safetensors" in cfg.export.formats:
        stages.append(PipelineStage("export safetensors", _export_safetensors, record="export-safetensors",
                                    settings=lambda p: {"shard_size": None}))
    if "gguf" in cfg.export.formats:
        stages.append(PipelineStage("export gguf", _export_gguf, record="export-gguf",
                                    settings=lambda p: {"quants": [canonical_quant(q) for q in p.cfg.export.gguf_quants]}))
    for target in cfg.containers.targets:
        stages += [PipelineStage(f"containerize {target}", _containerize(target)),
                   PipelineStage(f"build {target}", _build(target), skip=_skip_build(target))]
    stages += [PipelineStage(f"smoke {target}", _smoke(target), record=f"smoke-{target}",
                             settings=lambda p, t=target: {"target": t}) for target in cfg.containers.targets]
    if plan.options.key is not None:
        stages.append(PipelineStage("sign", _sign))
    registry = plan.options.registry or (cfg.publish.oci_ref.rsplit("/", 1)[0] if cfg.publish.oci_ref else None)
    if registry:
        stages += [PipelineStage(f"push oci {what}", _push_oci(registry, what)) for what in cfg.publish.oci_what]
    if plan.options.hub_repo or cfg.publish.hub_repo:
        stages += [PipelineStage(f"hub {what}", _push_hub(what)) for what in cfg.publish.hub_what]
    return stages


# ---------------------------------------------------------------- the stages

def _training_settings(plan: Plan) -> dict:
    data = plan.cfg.model_dump(mode="json")  # not run: where the run lives changes nothing
    return {f"config.{k}": data[k] for k in ("base", "data", "train")}


def _skip_train(plan: Plan) -> str | None:
    if not plan.options.skip_train:
        return None
    if not record_holds(plan.run_dir, "train", {}):
        raise StageError("deploy", f"--skip-train: {plan.run_dir} has no trained run")
    return "--skip-train"


def _skip_prompting_gate(plan: Plan) -> str | None:
    if plan.cfg.eval.gate.max_prompting_score is None:
        return "eval.gate.max_prompting_score is not set"
    if plan.options.skip_train:
        return "--skip-train"
    return None if plan.cfg.eval.prompting.enabled else "eval.prompting.enabled is false"


def _prompting_gate(plan: Plan) -> tuple[str, str]:
    """Before any training: the base, prompted with examples, must not already do the task."""
    baselines = evaluate_base_run(plan.run_dir, plan.cfg)
    verdict = prompting_verdict(plan.cfg.eval, baselines.prompted)
    metric = task_metric_name(baselines.prompted)
    reached = f"prompted base {baselines.prompted[metric]:.3f}, base {baselines.bare[metric]:.3f} on {metric}"
    if verdict is None:
        return "passed", reached
    if plan.options.train_anyway:
        return "passed", f"{reached}; over eval.gate.max_prompting_score, overridden by --train-anyway"
    raise Refusal(reached, verdict, hint=PROMPTING_HINT)


def _train(plan: Plan) -> tuple[str, str]:
    metrics = train_model(plan.cfg).metrics
    return "done", f"{metrics['global_step']} steps, best eval loss {metrics['eval_loss_best']}"


def _evaluate(plan: Plan) -> tuple[str, str]:
    evaluated = evaluate_run(plan.run_dir, against_base=plan.cfg.eval.gate.must_beat_base, eval_config=plan.cfg.eval)
    general = evaluated.general
    forgot = "" if general is None else (f"; general text perplexity {general['perplexity_increase']:+.1%}, "
                                         f"questions {general['base']['question_accuracy']:.2f} -> "
                                         f"{general['finetuned']['question_accuracy']:.2f}")
    return "done", f"{evaluated.finetuned['rows']} held-out rows{forgot}"


def _eval_gate(plan: Plan) -> tuple[str, str]:
    metrics = read_manifest(plan.run_dir).stages["eval"].metrics
    gate = metrics.get("gate") or {}
    if not gate.get("passed"):
        failures = "; ".join(gate.get("failures", ["no gate recorded"]))
        raise Refusal(failures, f"the eval gate failed: {failures}", hint=f"nothing was merged, built or pushed; "
                                                                        f"the report is {plan.run_dir / 'eval' / 'report.html'}")
    metric = metrics.get("task_metric")
    ft = (metrics.get("finetuned") or {}).get(metric)
    if not isinstance(ft, (int, float)):
        return "passed", ""
    baselines = [f"{name} {m[metric]:.3f}" for name, m in (("base", metrics.get("base")),
                                                          ("prompted base", metrics.get("prompted")))
                 if m and m.get(metric) is not None]
    return "passed", f"{metric} {ft:.3f}" + (f" vs {', '.join(baselines)}" if baselines else "")


def _skip_merge(plan: Plan) -> str | None:
    return "a full fine-tune has nothing to merge" if plan.cfg.train.method == "full" else None


def _merge(plan: Plan) -> tuple[str, str]:
    v = merge_run(plan.run_dir).verification
    return "done", f"verified: greedy agreement {v['greedy_agreement']:.3f}"


def _export_safetensors(plan: Plan) -> tuple[str, str]:
    export_run(plan.run_dir, fmt="safetensors")
    return "done", ""


def _export_gguf(plan: Plan) -> tuple[str, str]:
    quants = tuple(canonical_quant(q) for q in plan.cfg.export.gguf_quants)
    exported = export_run(plan.run_dir, fmt="gguf", quants=quants)
    rejected = f"; rejected by parity: {', '.join(exported.rejected)}" if exported.rejected else ""
    return "done", f"{len(exported.files)} file(s){rejected}"


def _containerize(target: str) -> Callable[[Plan], tuple[str, str]]:
    def run(plan: Plan) -> tuple[str, str]:
        rendered = containerize_run(plan.run_dir, target=target, config_path=plan.config_path)
        return "skipped" if rendered.unchanged else "done", f"context sha256:{rendered.context_digest[:12]}"
    return run


def _engine(plan: Plan) -> Engine | None:
    """The container engine (flag, containers.engine, or whichever works), found once per deploy.

    Only "whichever works" may find none and skip the builds; an engine that was named (``--engine``,
    ``containers.engine``) or builds that were asked for (``--build``) and cannot run are a failure.
    """
    named = plan.options.engine or plan.cfg.containers.engine
    if plan.engine is None and plan.options.build is not False:
        try:
            plan.engine = find_engine(named)
        except PackagerError:
            if plan.options.build:
                raise StageError("deploy", "--build: no working container engine") from None
            if named != "auto":
                raise
    return plan.engine


def _skip_build(target: str) -> Callable[[Plan], str | None]:
    def skip(plan: Plan) -> str | None:
        if plan.options.build is False:
            return "--no-build"
        engine = _engine(plan)
        if engine is None:
            return "no working container engine (Docker or Podman): context rendered only"
        image = getattr(plan.cfg.containers, target).image
        if not plan.cfg.containers.pull and not image_exists(engine, qualified(image)):
            return f"base image {image} is not here and containers.pull is false"
        recorded = plan.run.manifest.stages.get(f"image-{target}")
        context = plan.run.manifest.stages[f"containerize-{target}"].metrics.get("context_digest")
        if recorded and recorded.metrics.get("context_digest") == context and \
                recorded.metrics.get("image_id") and image_exists(engine, recorded.metrics["image_id"]):
            return f"image {recorded.metrics['tag']} is current"
        return None
    return skip


def _build(target: str) -> Callable[[Plan], tuple[str, str]]:
    def run(plan: Plan) -> tuple[str, str]:
        built = build_run_image(plan.run, target=target, engine=_engine(plan).name,
                                timeout_s=plan.cfg.containers.timeout_s)
        return "done", f"{built['tag']} {built['image_id'].removeprefix('sha256:')[:12]}"
    return run


def _smoke(target: str) -> Callable[[Plan], tuple[str, str]]:
    """Smoke the built image when it can run here (GPUs for vLLM), else the same model on a local CPU server."""
    def run(plan: Plan) -> tuple[str, str]:
        image = image_file(plan.run, target).is_file()
        local = not (image and (target == "ollama" or shutil.which("nvidia-smi")))
        try:
            report = smoke_run(plan.run_dir, target=target, config_path=plan.config_path, local=local)
        except StageError as exc:
            raise Refusal(exc.message, f"the {target} smoke test failed: {exc.message}",
                          hint=f"nothing was pushed; the report is {plan.run_dir / 'smoke' / f'{target}.json'}") from None
        where = report.timings.get("server", "the built image")
        return "done", f"{sum(c.passed for c in report.checks)} checks passed against {where}"
    return run


def _sign(plan: Plan) -> tuple[str, str]:
    key = plan.options.key
    signed = sign_run(plan.run_dir, key=key, public_key=public_key_of(key))
    return ("skipped", "signature verifies") if signed.already_signed else ("done", f"{signed.files} files")


def _push_oci(registry: str, what: str) -> Callable[[Plan], tuple[str, str]]:
    def run(plan: Plan) -> tuple[str, str]:
        last = (plan.cfg.publish.oci_ref or "").rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else "latest"
        ref = f"{registry}/{plan.cfg.run.name.lower()}-{what}:{tag}"
        pushed = push_oci(plan.run_dir, ref, what=what, insecure=plan.options.insecure)
        size = f", {pushed.uploaded_bytes:,} bytes" if pushed.uploaded_bytes else ""
        return "skipped" if pushed.already_there else "done", f"{ref}@{pushed.digest[:19]}{size}"
    return run


def _push_hub(what: str) -> Callable[[Plan], tuple[str, str]]:
    def run(plan: Plan) -> tuple[str, str]:
        base = plan.options.hub_repo or plan.cfg.publish.hub_repo
        repo = base if what == "merged" else f"{base}-{'adapter' if what == 'adapter' else 'GGUF'}"
        hub = push_hub(plan.run_dir, repo_id=repo, what=what, private=plan.cfg.publish.private,
                       dry_run=plan.options.hub_dry_run)
        if hub.dry_run_file:
            return "planned", f"dry run, nothing sent: plan in {hub.dry_run_file}"
        return ("done", hub.url) if hub.commit else ("skipped", "the repo already holds these files")
    return run
