"""Evaluation on the held-out split: task metrics with greedy decoding, fine-tune vs base, and the release gate.

Metrics: exact match; format adherence (``eval.format_regex`` or
``eval.json_schema``); field accuracy when references are JSON objects (the
share of fields reproduced exactly); each field ``eval.fields`` declares, by its
own rule, and their mean (:mod:`packager.stages.evaluate.fields`); call accuracy
where rows call tools (:mod:`packager.stages.evaluate.calls`); eval loss and
perplexity on assistant tokens. The task metric the gate compares is call
argument accuracy where rows call tools (the share of the reference calls'
arguments reproduced: a call right but for one free-text field is not scored as
no call at all), else the declared fields' mean score, else field accuracy when
references are JSON objects, else exact match.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from packager.config import EvalConfig
from packager.stages.evaluate.fields import field_metric, field_scores
from packager.stages.evaluate.general import regression_failures


METRICS = ("exact_match", "format_adherence", "field_accuracy", "field_score", "call_accuracy",
           "call_argument_accuracy", "call_name_accuracy", "calls_parsed", "eval_loss", "perplexity")


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
        **field_scores(answers, references, cfg.fields),
    }


def task_metric_name(metrics: dict) -> str:
    """What the gate compares: call argument accuracy where rows call tools (call accuracy in a record made
    before it existed), else the declared fields' mean score, else field accuracy for JSON answers, else exact
    match."""
    for name in ("call_argument_accuracy", "call_accuracy", "field_score", "field_accuracy"):
        if metrics.get(name) is not None:
            return name
    return "exact_match"


def best_baseline(metric: str, baselines: dict[str, dict | None]) -> tuple[str, float] | None:
    """The baseline (by name: base, prompted base) scoring highest on ``metric``; None when none was scored."""
    scored = [(name, m[metric]) for name, m in baselines.items() if m and m.get(metric) is not None]
    return max(scored, key=lambda item: item[1]) if scored else None


PROMPTING_HINT = ("nothing was trained; improve the prompt and ship the base, or train anyway "
                  "(packager deploy --train-anyway)")


def prompting_verdict(cfg: EvalConfig, prompted: dict | None) -> str | None:
    """Why training is not justified (``eval.gate.max_prompting_score``), or None."""
    limit = cfg.gate.max_prompting_score
    if limit is None or prompted is None:
        return None
    metric = task_metric_name(prompted)
    if prompted[metric] >= limit:
        return (f"prompting already reaches {prompted[metric]:.3f} on the task ({metric}, eval.gate."
                f"max_prompting_score {limit}); fine-tuning is not justified by this eval")
    return None


def check_gate(cfg: EvalConfig, finetuned: dict, base: dict | None, prompted: dict | None = None,
               general: dict | None = None) -> dict:
    """The release gate: what deploy will refuse to pass. Returns {passed, failures}."""
    failures = regression_failures(cfg.gate.max_general_regression, general)
    gate = cfg.gate
    if gate.min_format_adherence is not None:
        got = finetuned.get("format_adherence")
        if got is None:
            failures.append("eval.gate.min_format_adherence is set but no eval.format_regex/json_schema is")
        elif got < gate.min_format_adherence:
            failures.append(f"format adherence {got:.3f} < required {gate.min_format_adherence}")
    for name, floor in gate.min_fields.items():
        got = finetuned.get(field_metric(name))
        if got is None:
            failures.append(f"eval.gate.min_fields: no reference answer has the field {name!r}")
        elif got < floor:
            failures.append(f"field {name} {got:.3f} < required {floor}")
    if gate.must_beat_base:
        metric = task_metric_name(finetuned)
        best = best_baseline(metric, {"base": base, "prompted base": prompted})
        if best is None:
            failures.append("eval.gate.must_beat_base needs the base model evaluated (--against-base)")
        elif finetuned[metric] <= best[1]:
            failures.append(f"{metric} {finetuned[metric]:.3f} does not beat the {best[0]} ({best[1]:.3f})")
    return {"passed": not failures, "failures": failures}


def metric_names(*scored: dict | None) -> list[str]:
    """The metrics to show, in :data:`METRICS` order, each declared field after ``field_score``."""
    fields = sorted({k for m in scored if m for k in m if k.startswith("field:")})
    names = []
    for name in METRICS:
        names.append(name)
        if name == "field_score":
            names += fields
    return names


def format_table(finetuned: dict | None, base: dict | None, task_metric: str, *, title: str = "metric",
                 prompted: dict | None = None) -> str:
    """The metrics of the fine-tune, the base and the prompted base side by side, the task metric marked; a
    column that was not evaluated (None) is left out, but for the base's."""
    width = max(18, len(title) + 2)
    columns = [(name, m) for name, m in (("fine-tune", finetuned), ("base", base), ("prompted base", prompted))
               if m is not None or name == "base"]
    lines = [f"{title:<{width}}" + "".join(f"{name:>15}" for name, _ in columns)]
    for name in metric_names(finetuned, base, prompted):
        values = [(m or {}).get(name) for _, m in columns]
        if all(v is None or not isinstance(v, (int, float)) for v in values):
            continue
        marker = "  <- task metric" if name == task_metric else ""
        lines.append(f"{name:<{width}}" + "".join(f"{'-' if v is None else f'{v:.3f}':>15}" for v in values)
                     + marker)
    return "\n".join(lines)
