"""Evaluation on the held-out split: task metrics with greedy decoding, fine-tune vs base, and the release gate.

Metrics: exact match; format adherence (``eval.format_regex`` or
``eval.json_schema``); field accuracy when references are JSON objects (the
share of fields reproduced exactly); eval loss and perplexity on assistant
tokens. The task metric the gate compares is field accuracy when references
are JSON objects, else exact match.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from packager.models.checkpoint import resolve_base
from packager.config import EvalConfig, PackagerConfig
from packager.run.settings import recorded_config
from packager.data import read_split, tokenize_with_assistant_mask
from packager.errors import StageError
from packager.models.inference import greedy_answers, load_causal_lm, teacher_forced_logits
from packager.run.directory import Run
from packager.run.manifest import read_manifest
from packager.models.tokenizer import load_tokenizer

METRICS = ("exact_match", "format_adherence", "field_accuracy", "eval_loss", "perplexity")


@dataclass
class EvalResult:
    run_dir: Path
    finetuned: dict
    base: dict | None
    gate: dict
    task_metric: str


# ---------------------------------------------------------------- scoring

def adheres(answer: str, cfg: EvalConfig) -> bool | None:
    """Whether an answer has the configured format; None when no format is configured."""
    if cfg.format_regex is None and cfg.json_schema is None:
        return None
    if cfg.format_regex is not None and not re.fullmatch(cfg.format_regex, answer.strip(), flags=re.DOTALL):
        return False
    if cfg.json_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(json.loads(answer), json.loads(Path(cfg.json_schema).read_text()))
        except (ValueError, jsonschema.ValidationError):
            return False
    return True


def field_score(answer: str, reference: str) -> float | None:
    """Share of the reference JSON object's fields the answer reproduces exactly; None if not JSON objects."""
    try:
        ref = json.loads(reference)
    except ValueError:
        return None
    if not isinstance(ref, dict) or not ref:
        return None
    try:
        got = json.loads(answer)
    except ValueError:
        return 0.0
    if not isinstance(got, dict):
        return 0.0
    return sum(got.get(k) == v for k, v in ref.items()) / len(ref)


def score(answers: list[str], references: list[str], cfg: EvalConfig) -> dict:
    n = len(references)
    formats = [adheres(a, cfg) for a in answers]
    fields = [field_score(a, r) for a, r in zip(answers, references)]
    return {
        "rows": n,
        "exact_match": sum(a.strip() == r.strip() for a, r in zip(answers, references)) / n,
        "format_adherence": None if formats[0] is None else sum(bool(f) for f in formats) / n,
        "field_accuracy": None if any(f is None for f in fields) else sum(fields) / n,
    }


def assistant_loss(model, tokenizer, conversations: list[list[dict]]) -> float:
    """Mean cross-entropy over assistant tokens (teacher forcing), the same tokens training learns."""
    import torch

    total, count = 0.0, 0
    for conv in conversations:
        enc = tokenize_with_assistant_mask(tokenizer, conv)
        (logits,) = teacher_forced_logits(model, [enc["input_ids"]])
        target = torch.tensor(enc["input_ids"][1:], device=logits.device)
        keep = torch.tensor(enc["assistant_masks"][1:], device=logits.device) == 1
        total += torch.nn.functional.cross_entropy(logits[:-1][keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return total / max(1, count)


def evaluate_model(model, tokenizer, conversations: list[list[dict]], cfg: EvalConfig, *,
                   label: str = "answering") -> tuple[dict, list[str]]:
    prompts = [c[:-1] for c in conversations]
    references = [c[-1]["content"] for c in conversations]
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, progress=label)
    metrics = score(answers, references, cfg)
    metrics["eval_loss"] = assistant_loss(model, tokenizer, conversations)
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    return metrics, answers


# ---------------------------------------------------------------- gate

def task_metric_name(metrics: dict) -> str:
    return "field_accuracy" if metrics.get("field_accuracy") is not None else "exact_match"


def check_gate(cfg: EvalConfig, finetuned: dict, base: dict | None) -> dict:
    """The release gate: what deploy will refuse to pass. Returns {passed, failures}."""
    failures = []
    gate = cfg.gate
    if gate.min_format_adherence is not None:
        got = finetuned.get("format_adherence")
        if got is None:
            failures.append("eval.gate.min_format_adherence is set but no eval.format_regex/json_schema is")
        elif got < gate.min_format_adherence:
            failures.append(f"format adherence {got:.3f} < required {gate.min_format_adherence}")
    if gate.must_beat_base:
        metric = task_metric_name(finetuned)
        if base is None:
            failures.append("eval.gate.must_beat_base needs the base model evaluated (--against-base)")
        elif finetuned[metric] <= base[metric]:
            failures.append(f"{metric} {finetuned[metric]:.3f} does not beat the base model's {base[metric]:.3f}")
    return {"passed": not failures, "failures": failures}


# ---------------------------------------------------------------- the fine-tune

def load_finetuned(run: Run, cfg: PackagerConfig, *, base_path: Path):
    model_dir, adapter_dir = run.path / "train" / "model", run.path / "train" / "adapter"
    if model_dir.is_dir():
        return load_causal_lm(model_dir)
    return load_causal_lm(base_path, adapter_dir=adapter_dir, trust_remote_code=cfg.base.trust_remote_code)


# ---------------------------------------------------------------- the base, once

BASE_STAGE = "eval-base"


def _base_eval_parameters(run: Run, ckpt, ecfg: EvalConfig, *, chat_template: str, rows: int) -> dict:
    """What the base's answers depend on: its files, the prompts, the template and the decoding settings."""
    import hashlib

    return {"base_files": {f.name: run.digest(f).sha256 for f in ckpt.files},
            "eval_split": run.digest(run.path / "data" / "eval.jsonl").sha256, "rows": rows,
            "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest(),
            "max_new_tokens": ecfg.max_new_tokens, "format_regex": ecfg.format_regex,
            "json_schema": run.digest(Path(ecfg.json_schema)).sha256 if ecfg.json_schema else None,
            "decoding": "greedy"}


def _recorded_base_eval(run: Run, parameters: dict) -> tuple[dict, list[str]] | None:
    stage = run.manifest.stages.get(BASE_STAGE)
    if stage is None or stage.parameters != parameters or not run.outputs_intact(BASE_STAGE):
        return None
    predictions = run.path / BASE_STAGE / "predictions.jsonl"
    answers = [json.loads(line)["base"] for line in predictions.read_text(encoding="utf-8").splitlines() if line]
    return stage.metrics["base"], answers


def evaluate_base(run: Run, ckpt, ecfg: EvalConfig, *, tokenizer, conversations: list[list[dict]],
                  trust_remote_code: bool = False) -> tuple[dict, list[str], bool]:
    """The base model's metrics and answers on the held-out split, recorded as stage ``eval-base``.

    Reused while the base files, the split, the chat template and the decoding settings are the same, so
    the base is evaluated once per run: before training (``packager demo``) or at the first ``eval``.
    Returns (metrics, answers, reused).
    """
    parameters = _base_eval_parameters(run, ckpt, ecfg, chat_template=tokenizer.chat_template,
                                       rows=len(conversations))
    recorded = _recorded_base_eval(run, parameters)
    if recorded is not None:
        return (*recorded, True)
    model = load_causal_lm(ckpt.path, trust_remote_code=trust_remote_code)
    metrics, answers = evaluate_model(model, tokenizer, conversations, ecfg, label="the base answers")
    del model
    with run.stage(BASE_STAGE, parameters=parameters) as st:
        st.add_input(run.path / "data" / "eval.jsonl")
        for file in ckpt.files:
            st.add_input(file)
        out = st.output_dir(BASE_STAGE)
        rows = [{"prompt": c[-2]["content"], "reference": c[-1]["content"], "base": a}
                for c, a in zip(conversations, answers)]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
        st.metrics.update({"base": metrics, "task_metric": task_metric_name(metrics)})
    return metrics, answers, False


def evaluate_base_run(run_dir: Path | str, cfg: PackagerConfig) -> tuple[dict, list[str]]:
    """Evaluate the base on a run's held-out split before any training (the data stage must be recorded)."""
    run = Run.open(run_dir)
    if "data" not in run.manifest.stages:
        raise StageError("eval", f"{run.path} has no data split yet",
                         hint="check and split the data first (packager train does it before training)")
    conversations = read_split(run.path / "data" / "eval.jsonl")[: cfg.eval.limit or None]
    ckpt = resolve_base(cfg.base)
    tokenizer = load_tokenizer(ckpt.path, chat_template=cfg.base.chat_template,
                               trust_remote_code=cfg.base.trust_remote_code).tokenizer
    metrics, answers, _ = evaluate_base(run, ckpt, cfg.eval, tokenizer=tokenizer, conversations=conversations,
                                        trust_remote_code=cfg.base.trust_remote_code)
    return metrics, answers


# ---------------------------------------------------------------- the stage

def evaluate_run(run_dir: Path | str, *, against_base: bool = False, limit: int | None = None,
                 eval_config: EvalConfig | None = None) -> EvalResult:
    """Evaluate the run's fine-tune (and the base) on its held-out split; record stage ``eval``.

    ``eval_config`` replaces the eval section the run was trained with (a release's gate may be stricter).
    """
    from packager.report import write_eval_report

    run = Run.open(run_dir)
    cfg = recorded_config(run)
    ecfg = eval_config or cfg.eval
    against_base = against_base or ecfg.gate.must_beat_base
    conversations = read_split(run.path / "data" / "eval.jsonl")[: limit or ecfg.limit or None]
    if not conversations:
        raise StageError("eval", f"{run.path / 'data' / 'eval.jsonl'} holds no rows to evaluate on")
    ckpt = resolve_base(cfg.base)
    weights = "model" if (run.path / "train" / "model").is_dir() else "adapter"
    tokenizer = load_tokenizer(run.path / "train" / weights).tokenizer  # the template used in training

    model = load_finetuned(run, cfg, base_path=ckpt.path)
    finetuned, ft_answers = evaluate_model(model, tokenizer, conversations, ecfg, label="the fine-tune answers")
    del model
    base, base_answers = None, None
    if against_base:
        base, base_answers, _ = evaluate_base(run, ckpt, ecfg, tokenizer=tokenizer, conversations=conversations,
                                              trust_remote_code=cfg.base.trust_remote_code)
        run = Run.open(run.path)
    gate = check_gate(ecfg, finetuned, base)
    metric = task_metric_name(finetuned)

    with run.stage("eval", parameters={"against_base": against_base, "limit": limit or ecfg.limit,
                                       "max_new_tokens": ecfg.max_new_tokens, "format_regex": ecfg.format_regex,
                                       "task_metric": metric, "decoding": "greedy",
                                       "eval_config": ecfg.model_dump(mode="json")}) as st:
        st.add_input(run.path / "data" / "eval.jsonl")
        for file in sorted((run.path / "train" / weights).iterdir()):
            st.add_input(file)
        if against_base:
            st.add_input(run.path / BASE_STAGE / "predictions.jsonl")
        out = st.output_dir("eval")
        rows = []
        for i, conv in enumerate(conversations):
            row = {"prompt": conv[-2]["content"], "reference": conv[-1]["content"], "finetuned": ft_answers[i]}
            if base_answers is not None:
                row["base"] = base_answers[i]
            rows.append(row)
        (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        summary = {"finetuned": finetuned, "base": base, "gate": gate, "task_metric": metric}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        write_eval_report(out, run_name=cfg.run.name, summary=summary, rows=rows)
        st.metrics.update(summary)
    return EvalResult(run.path, finetuned, base, gate, metric)


def gate_status(run_dir: Path) -> dict | None:
    """The recorded gate of a run's last evaluation, for later stages (deploy) to enforce."""
    stage = read_manifest(run_dir).stages.get("eval")
    return None if stage is None else stage.metrics.get("gate")


def format_table(result: EvalResult) -> str:
    lines = [f"{'metric':<18}{'fine-tune':>12}{'base':>12}"]
    for name in METRICS:
        ft = result.finetuned.get(name)
        base = (result.base or {}).get(name)
        if ft is None and base is None:
            continue
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        marker = "  <- task metric" if name == result.task_metric else ""
        lines.append(f"{name:<18}{fmt(ft):>12}{fmt(base):>12}{marker}")
    return "\n".join(lines)
