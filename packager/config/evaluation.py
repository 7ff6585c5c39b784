"""The ``eval`` section: what the held-out evaluation scores, the baselines, and the release gate."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from packager.config.fields import ConfigPath, Section


class RegressionGate(Section):
    perplexity_increase: float | None = Field(None, ge=0)
    """Largest relative rise of the perplexity on general text allowed (0.2: 20 % above the base's)."""
    accuracy_drop: float | None = Field(None, ge=0, le=1)
    """Largest drop in accuracy on the general questions (and each lm-eval task) allowed, e.g. 0.1."""


class GeneralConfig(Section):
    enabled: bool = True
    """Check, beside the task, that the fine-tune did not forget what the base knew (eval stage)."""
    text: ConfigPath | None = None
    """General text (UTF-8) whose perplexity and KL from the base are measured; default: a sample packager ships."""
    questions: ConfigPath | None = None
    """JSONL of {question, answers: [accepted short answers]}; default: a set packager ships."""
    max_tokens: int = Field(2048, ge=16)
    """Tokens of the text scored, in windows of `window` tokens."""
    window: int = Field(512, ge=16)
    max_new_tokens: int = Field(16, ge=1)
    """Longest answer generated per general question (they ask for a few words)."""
    lm_eval_tasks: list[str] = []
    """lm-evaluation-harness tasks run on base and fine-tune (needs `pip install lm-eval` and the tasks' data
    available locally; `lm_eval_include` names a folder of task YAMLs of your own)."""
    lm_eval_include: ConfigPath | None = None
    lm_eval_limit: int | None = Field(None, ge=1)
    """Score at most this many documents per lm-eval task."""


DEFAULT_RUBRIC = ("You grade answers to a task. Compare the answer with the reference answer: the highest score "
                  "means it is as correct and complete as the reference, the lowest that it is wrong or unusable.")


class JudgeConfig(Section):
    url: str
    """Base URL of an OpenAI-compatible API (with /v1): a local llama.cpp server, vLLM, or a hosted API."""
    model: str
    """The judge model's name at that endpoint."""
    api_key_env: str | None = None
    """Name of the environment variable that holds the API key (the key itself never goes in the config)."""
    rubric: str = DEFAULT_RUBRIC
    """What the judge is told a good answer is; it is also told the scale and to reply with the score only."""
    scale: tuple[int, int] = (1, 5)
    structured: bool = True
    """Ask for {"score": N} under a JSON schema (OpenAI's response_format json_schema, which vLLM and llama.cpp's
    server enforce too); false for an endpoint that refuses response_format: the score is then read off text."""
    limit: int | None = Field(None, ge=1)
    """Judge at most this many held-out rows."""
    timeout_s: float = Field(120, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"https?://", value):
            raise ValueError("expected an http:// or https:// URL, e.g. http://127.0.0.1:8080/v1")
        return value.rstrip("/")

    @field_validator("scale")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] >= value[1]:
            raise ValueError("expected [lowest, highest] with lowest < highest")
        return value


class PromptingConfig(Section):
    enabled: bool = True
    """Evaluate the base prompted well too (eval-base), beside the bare base: would prompting do?"""
    shots: int = Field(3, ge=0, le=32)
    """Examples from the training split given as conversation turns before each held-out prompt; chosen
    deterministically, never from the eval split."""
    system_prompt: str | None = None
    """The task's system prompt for the prompted base; default: each row's own system message."""


class GateConfig(Section):
    min_format_adherence: float | None = Field(None, ge=0, le=1)
    """Refuse to deploy when format adherence on the eval split is below this."""
    must_beat_base: bool = False
    """Refuse to deploy unless the fine-tune beats the base model on the task metric: the better of the bare
    base and the prompted base (eval.prompting) when both were evaluated."""
    max_prompting_score: float | None = Field(None, ge=0, le=1)
    """Stop before training when the prompted base already reaches this on the task metric (e.g. 0.8):
    fine-tuning is not justified by this eval. `packager deploy --train-anyway` overrides it."""
    max_general_regression: RegressionGate = {}
    """How much worse than the base the fine-tune may do on the general check (eval.general)."""
    min_fields: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    """Refuse to deploy unless each named field (declared in eval.fields) scores at least this."""


class EvalConfig(Section):
    max_new_tokens: int = Field(128, ge=1)
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many held-out rows."""
    format_regex: str | None = None
    """An answer adheres to the format when this regex matches it fully."""
    json_schema: ConfigPath | None = None
    """An answer adheres to the format when it is JSON valid against this schema."""
    fields: dict[str, Literal["exact", "similarity"]] = {}
    """Score JSON answers field by field: exact, or similarity (ROUGE-L F1 on words, no download); each field
    is reported as field:NAME and their mean, field_score, becomes the task metric."""
    prompting: PromptingConfig = {}
    general: GeneralConfig = {}
    judge: JudgeConfig | None = None
    """Optional: an LLM judge scores each held-out answer against its reference (never required)."""
    gate: GateConfig = {}

    @model_validator(mode="after")
    def _gated_fields_are_declared(self) -> "EvalConfig":
        unknown = sorted(set(self.gate.min_fields) - set(self.fields))
        if unknown:
            raise ValueError(f"gate.min_fields names {', '.join(unknown)}, not declared in eval.fields "
                             f"(declared: {', '.join(self.fields) or 'none'})")
        return self

    @field_validator("format_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value
