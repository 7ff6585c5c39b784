"""Per-field scores of JSON answers, as ``eval.fields`` declares them.

A triage answer ``{"category": ..., "priority": ..., "summary": ...}`` has fields that must be exactly right
(the category a ticket is routed by) and fields where wording may differ (a one-line summary). Field accuracy
counts an exact match of every field, so a perfect classifier with reworded summaries tops out at 2/3. With
``eval.fields: {category: exact, priority: exact, summary: similarity}`` each field is scored by its own rule
and reported on its own (``field:category``), and their mean (``field_score``) becomes the task metric.

``similarity`` is ROUGE-L F1 on lowercased words: the longest common subsequence of the two word lists,
as precision and recall of the answer against the reference. Deterministic and needs no download; it rewards
the same words in the same order, not paraphrase (configure ``eval.judge`` for meaning).
"""

from __future__ import annotations

import json
import re


RULES = ("exact", "similarity")
_WORD = re.compile(r"\w+")


def field_metric(name: str) -> str:
    """The metric name one declared field is reported under."""
    return f"field:{name}"


def similarity(answer: str, reference: str) -> float:
    """ROUGE-L F1 of two texts on lowercased words (1.0 for two texts with no words at all)."""
    a, r = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    if not a or not r:
        return float(a == r)
    common = _lcs_length(a, r)
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _value_score(rule: str, got, want) -> float:
    if rule == "similarity" and isinstance(got, str) and isinstance(want, str):
        return similarity(got, want)
    return float(got == want)


def _object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def field_scores(answers: list[str], references: list[str], fields: dict[str, str]) -> dict:
    """``field:NAME`` for each declared field (mean over rows whose reference has it) and ``field_score``, their
    mean. An answer that is not a JSON object scores 0 on every field; a field it lacks scores 0. A field no
    reference has is reported as None (a misnamed field is visible, not scored as perfect)."""
    if not fields:
        return {}
    totals = {name: [] for name in fields}
    for answer, reference in zip(answers, references):
        want = _object(reference)
        if want is None:
            continue
        got = _object(answer) or {}
        for name, rule in fields.items():
            if name in want:
                totals[name].append(_value_score(rule, got.get(name), want[name]) if name in got else 0.0)
    scores = {field_metric(name): (sum(v) / len(v) if v else None) for name, v in totals.items()}
    known = [s for s in scores.values() if s is not None]
    return {**scores, "field_score": sum(known) / len(known) if known else None}
