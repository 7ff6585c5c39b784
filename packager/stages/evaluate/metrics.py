"""Evaluation on the held-out split: task metrics with greedy decoding, fine-tune vs base, and the release gate.

Metrics: exact match; format adherence (``eval.format_regex`` or
``eval.json_schema``); field accuracy when references are JSON objects (the
share of fields reproduced exactly); call accuracy where rows call tools
(:mod:`packager.stages.evaluate.calls`); eval loss and perplexity on assistant
tokens. The task metric the gate compares is call argument accuracy where rows
call tools (the share of the reference calls' arguments reproduced: a call right
but for one free-text field is not scored as no call at all), else field accuracy
when references are JSON objects, else exact match.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from packager.config import EvalConfig


METRICS = ("exact_match", "format_adherence", "field_accuracy", "call_accuracy", "call_argument_accuracy",
           "call_name_accuracy", "calls_parsed", "eval_loss", "perplexity")


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


def task_metric_name(metrics: dict) -> str:
    """What the gate compares: call argument accuracy where rows call tools (call accuracy in a record made
    before it existed), else field accuracy for JSON answers, else exact match."""
    for name in ("call_argument_accuracy", "call_accuracy"):
        if metrics.get(name) is not None:
            return name
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


def format_table(finetuned: dict, base: dict | None, task_metric: str, *, title: str = "metric") -> str:
    """The metrics of the fine-tune and the base side by side, the task metric marked."""
    width = max(18, len(title) + 2)
    lines = [f"{title:<{width}}{'fine-tune':>12}{'base':>12}"]
    for name in METRICS:
        ft, b = finetuned.get(name), (base or {}).get(name)
        if ft is None and b is None:
            continue
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        marker = "  <- task metric" if name == task_metric else ""
        lines.append(f"{name:<{width}}{fmt(ft):>12}{fmt(b):>12}{marker}")
    return "\n".join(lines)
