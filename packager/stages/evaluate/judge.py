"""Is it right, beyond the format? An LLM judge scores each held-out answer against its reference.

Any OpenAI-compatible chat endpoint serves as the judge (a local llama.cpp server, vLLM, a hosted API with
its key in an environment variable). The judge sees the rubric and the scale as its system message, and the
request, the reference and the answer to grade; it must reply with the score alone (``4``, ``Score: 4``,
``4/5``). Anything else is recorded as unparsed with the judge's reply, never guessed into a score. Scores
are reported as a distribution, for the fine-tune and for the base when it was evaluated, with the judge's
identity (URL, configured model, the model the server says answered, the rubric's digest).

By default the score is asked for as ``{"score": N}`` under a JSON schema (OpenAI's structured outputs:
``response_format`` ``json_schema``, which vLLM and llama.cpp's server enforce by constrained decoding), so even
a weak judge answers on the scale; ``eval.judge.structured: false`` for an endpoint that refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter

from packager.config.evaluation import JudgeConfig
from packager.errors import StageError


_SCORE = re.compile(r"\s*(?:score\s*[:=]?\s*)?(\d+)\s*(?:/\s*\d+)?\s*[.!]?\s*", re.IGNORECASE)


def judge_instructions(cfg: JudgeConfig) -> str:
    low, high = cfg.scale
    if cfg.structured:
        return f"{cfg.rubric}\nReply with JSON: {{\"score\": N}}, N an integer from {low} to {high}."
    return f"{cfg.rubric}\nReply with one integer from {low} to {high} and nothing else."


def parse_score(reply: str, scale: tuple[int, int]) -> int | None:
    """The score a judge's reply gives (``{"score": N}``, or the number alone as text), or None when the reply
    is not a score on the scale."""
    try:
        value = json.loads(reply)
    except ValueError:
        value = None
    if isinstance(value, dict) and set(value) == {"score"}:
        value = value["score"]
        if isinstance(value, bool) or not isinstance(value, int):
            return None
    else:
        match = _SCORE.fullmatch(reply or "")
        if match is None:
            return None
        value = int(match.group(1))
    return value if scale[0] <= value <= scale[1] else None


def response_format(scale: tuple[int, int]) -> dict:
    """OpenAI's structured-output request for ``{"score": N}`` with N on the scale."""
    score = {"type": "integer", "enum": list(range(scale[0], scale[1] + 1))}
    schema = {"type": "object", "properties": {"score": score}, "required": ["score"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": schema}}


def _client(cfg: JudgeConfig):
    from openai import OpenAI

    key = "not-needed"
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise StageError("eval judge", f"eval.judge.api_key_env names {cfg.api_key_env}, which is not set",
                             hint=f"export {cfg.api_key_env}=... before packager eval")
    return OpenAI(base_url=cfg.url, api_key=key, timeout=cfg.timeout_s, max_retries=1)


def _ask(client, cfg: JudgeConfig, prompt: str, reference: str, answer: str) -> tuple[str, str]:
    """The judge's reply and the model the server says answered."""
    import openai

    user = f"Request:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}"
    try:
        extra = {"response_format": response_format(cfg.scale)} if cfg.structured else {}
        response = client.chat.completions.create(
            model=cfg.model, temperature=0, max_tokens=16, **extra,
            messages=[{"role": "system", "content": judge_instructions(cfg)}, {"role": "user", "content": user}])
    except openai.APIError as exc:
        raise StageError("eval judge", f"the judge at {cfg.url} (model {cfg.model}) failed: {exc}",
                         hint="check eval.judge.url and eval.judge.model, or remove eval.judge") from None
    return (response.choices[0].message.content or ""), response.model


def distribution(scores: list[int | None], scale: tuple[int, int]) -> dict:
    scored = [s for s in scores if s is not None]
    counts = Counter(scored)
    return {"scored": len(scored), "unparsed": len(scores) - len(scored),
            "counts": {str(v): counts.get(v, 0) for v in range(scale[0], scale[1] + 1)},
            "mean": sum(scored) / len(scored) if scored else None}


def judge_answers(cfg: JudgeConfig, rows: list[dict], *, columns: tuple[str, ...]) -> tuple[dict, list[dict]]:
    """Each row's ``columns`` (finetuned, base) graded; returns (the summary, one record per row)."""
    client = _client(cfg)
    rows = rows[: cfg.limit or None]
    records, served = [], set()
    for i, row in enumerate(rows):
        record = {"row": i}
        for column in columns:
            reply, model = _ask(client, cfg, row["prompt"], row["reference"], row[column])
            served.add(model)
            record[column] = {"score": parse_score(reply, cfg.scale), "reply": reply}
        records.append(record)
    summary = {"judge": {"url": cfg.url, "model": cfg.model, "served_model": sorted(served),
                         "rubric_sha256": hashlib.sha256(judge_instructions(cfg).encode()).hexdigest(),
                         "scale": list(cfg.scale)}, "rows": len(records)}
    for column in columns:
        summary[column] = distribution([r[column]["score"] for r in records], cfg.scale)
    return summary, records


def describe(judged: dict | None) -> str | None:
    if judged is None:
        return None
    parts = []
    for column in ("finetuned", "base"):
        if column in judged:
            d = judged[column]
            mean = "-" if d["mean"] is None else f"{d['mean']:.2f}"
            parts.append(f"{column} mean {mean} ({d['scored']} scored, {d['unparsed']} unparsed)")
    return f"judge {judged['judge']['model']} at {judged['judge']['url']}: " + "; ".join(parts)
