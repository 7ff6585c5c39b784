"""``packager data check``: validate, de-duplicate and split a dataset, and with a tokenizer render and measure
every row, all before any model loads. Every problem is reported at once."""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packager.config import BaseModelConfig
from packager.errors import StageError
from packager.models.checkpoint import read_context_limit, resolve_base
from packager.models.system_policy import system_refusal
from packager.models.tokenizer import load_tokenizer
from packager.stages.data.masks import tokenize_with_assistant_mask
from packager.stages.data.rows import Problem, Row, read_rows
from packager.stages.data.sources import DataSpec, Source, open_source
from packager.stages.data.tools import read_tools_file


MIN_ROWS = 200


@dataclass
class DataReport:
    train_rows: list[Row]
    eval_rows: list[Row]
    problems: list[Problem] = field(default_factory=list)
    token_stats: dict[str, int] | None = None
    sample: str | None = None
    notes: list[str] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)
    """What "train" and "eval" were read from: their files, and a Hub dataset's pinned commit."""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_json(self) -> dict[str, Any]:
        return {"train_rows": len(self.train_rows), "eval_rows": len(self.eval_rows),
                "errors": [asdict(p) for p in self.errors], "warnings": [asdict(p) for p in self.warnings],
                "token_stats": self.token_stats, "sample": self.sample, "notes": self.notes,
                "sources": {k: {"name": v.name, "pinned": v.pinned} for k, v in self.sources.items()}}

    def summary(self) -> str:
        """The human-readable report of ``packager data check``."""
        report = self
        lines = [f"{len(report.train_rows)} train rows, {len(report.eval_rows)} eval rows usable"]
        if report.token_stats:
            t = report.token_stats
            lines.append(f"tokens per row: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']} "
                         f"-> suggested max_seq_length {t['suggested_max_seq_length']}")
        lines += [f"note: {note}" for note in report.notes]
        if report.sample:
            lines.append("sample, rendered by the model's chat template:")
            lines += [f"  | {line}" for line in report.sample.splitlines()]
        lines += [f"warning: {p}" for p in report.warnings]
        lines += [f"error: {p}" for p in report.errors]
        if report.errors:
            lines.append(f"{len(report.errors)} error(s): fix them before training")
        return "\n".join(lines)


def find_duplicates(rows: list[Row]) -> list[Problem]:
    seen: dict[str, Row] = {}
    problems = []
    for row in rows:
        first = seen.setdefault(row.key, row)
        if first is not row:
            problems.append(Problem(row.path, row.line, None, f"exact duplicate of {first.unit} {first.line}",
                                    unit=row.unit))
    return problems


def find_leakage(train: list[Row], eval_rows: list[Row]) -> list[Problem]:
    train_keys = {row.key: row for row in train}
    return [Problem(row.path, row.line, None, f"also in the training data ({train_keys[row.key].location}): eval "
                                                "would measure memorization", unit=row.unit)
            for row in eval_rows if row.key in train_keys]


def split_rows(rows: list[Row], *, eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Deterministic split by a seeded hash of each conversation: independent of file order and machine."""
    def rank(row: Row) -> str:
        return hashlib.sha256(f"{seed}\n{row.key}".encode()).hexdigest()

    n_eval = max(1, math.ceil(len(rows) * eval_fraction)) if len(rows) > 1 else 0
    eval_keys = {row.key for row in sorted(rows, key=rank)[:n_eval]}
    train = [r for r in rows if r.key not in eval_keys]
    eval_rows = [r for r in rows if r.key in eval_keys]
    return train, eval_rows


def token_lengths(tokenizer, rows: list[Row], *, max_seq_length: int) -> tuple[list[int], list[Problem]]:
    lengths, problems = [], []
    for row in rows:
        try:
            encoded = tokenize_with_assistant_mask(tokenizer, row.messages, row.tools)
        except StageError as exc:  # no assistant text to learn from can be found in the rendering
            problems.append(Problem(row.path, row.line, "messages", str(exc).removeprefix("data: "), unit=row.unit))
            continue
        except Exception as exc:  # the template's own raise_exception(), or a Jinja error  # noqa: BLE001
            problems.append(Problem(row.path, row.line, "messages", f"the chat template cannot render this row: {exc}",
                                    unit=row.unit))
            continue
        ids = encoded["input_ids"]
        lengths.append(len(ids))
        if len(ids) > max_seq_length:
            problems.append(Problem(row.path, row.line, "messages",
                                    f"{len(ids)} tokens, longer than max_seq_length {max_seq_length}; "
                                    "shorten the row or raise data.max_seq_length", unit=row.unit))
    return lengths, problems


def refuse_system_messages(tokenizer, rows: list[Row], *, system_prompt: str | None = None) -> list[Problem]:
    """A problem for each row with a system message, when the chat template raises on one or leaves it out and
    no ``data.system_policy`` says what becomes of it (:mod:`packager.models.system_policy`)."""
    with_system = [row for row in rows if row.messages[0]["role"] == "system"]
    refusal = system_refusal(tokenizer) if with_system else None
    if refusal is None:
        return []
    origin = " (added by data.system_prompt)" if system_prompt else ""
    return [Problem(row.path, row.line, "messages[0]" if row.source_format == "chat" else "system",
                    f"a system message{origin}, and the chat template {refusal}: set data.system_policy to "
                    "merge_into_first_user or drop (packager data check --system-policy) to say what becomes of it",
                    unit=row.unit) for row in with_system]


PROBE_TOOL = {"type": "function", "function": {
    "name": "packager_probe_tool", "description": "Looks up a value.",
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}
PROBE_CALL = [
    {"role": "user", "content": "Look it up."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "packager_probe_tool", "arguments": {"key": "probe-argument"}}}]},
    {"role": "tool", "content": "probe-result"},
    {"role": "assistant", "content": "Found it."}]


def tool_support_refusal(tokenizer) -> str | None:
    """Why the chat template cannot train function calling (it raises on tools, or leaves out the tools, the
    calls' names and arguments, or the tool results), or None when it renders all of them."""
    try:
        rendered = tokenizer.apply_chat_template(PROBE_CALL, tools=[PROBE_TOOL], tokenize=False)
    except Exception as exc:  # the template's raise_exception(), or a Jinja error  # noqa: BLE001
        return f"raises on a conversation with tools and tool calls ({exc})"
    plain = tokenizer.apply_chat_template(PROBE_CALL[:1] + PROBE_CALL[-1:], tools=[PROBE_TOOL], tokenize=False)
    missing = [what for what, there in (("the declared tools", "Looks up a value." in plain),
                                        ("the assistant's tool calls", rendered.count("packager_probe_tool") >= 2
                                         and "probe-argument" in rendered),
                                        ("the tool results", "probe-result" in rendered)) if not there]
    return f"leaves out {' and '.join(missing)}" if missing else None


def refuse_tool_rows(tokenizer, rows: list[Row]) -> list[Problem]:
    """A problem for each function-calling row when the chat template cannot render tools."""
    calling = [row for row in rows if row.tools or any(m["role"] == "tool" for m in row.messages)]
    refusal = tool_support_refusal(tokenizer) if calling else None
    if refusal is None:
        return []
    name = getattr(tokenizer, "name_or_path", "") or "the model"
    return [Problem(row.path, row.line, "tools", f"a function-calling conversation, and the chat template of "
                                                 f"{name} {refusal}: it cannot train or serve tool calls; give "
                                                 "base.chat_template (--chat-template) a template that renders "
                                                 "tools", unit=row.unit)
            for row in calling]


def length_stats(lengths: list[int], *, model_max: int | None = None) -> dict[str, int]:
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    suggested = 64 * math.ceil(ordered[-1] / 64)
    if model_max:
        suggested = min(suggested, model_max)
    return {"min": ordered[0], "median": int(statistics.median(ordered)), "p95": p95, "max": ordered[-1],
            "suggested_max_seq_length": suggested}


def check_dataset(train_path: DataSpec, *, eval_path: DataSpec | None = None, eval_fraction: float = 0.1,
                  seed: int = 42, max_seq_length: int = 1024, system_prompt: str | None = None,
                  columns: dict[str, str] | None = None, tokenizer=None, model_max: int | None = None,
                  tools: list[dict] | None = None) -> DataReport:
    """Read, validate, de-duplicate and split; with a tokenizer, also render and measure every row. ``tools``:
    what rows declaring none may call (``data.tools``)."""
    sources = {"train": open_source(train_path)}
    train_rows, problems = read_rows(sources["train"], system_prompt=system_prompt, columns=columns, tools=tools)
    problems += find_duplicates(train_rows)
    if eval_path is not None:
        sources["eval"] = open_source(eval_path)
        eval_rows, eval_problems = read_rows(sources["eval"], system_prompt=system_prompt, columns=columns,
                                             tools=tools)
        problems += eval_problems + find_duplicates(eval_rows) + find_leakage(train_rows, eval_rows)
    else:
        unique = list({row.key: row for row in train_rows}.values())
        train_rows, eval_rows = split_rows(unique, eval_fraction=eval_fraction, seed=seed)
    report = DataReport(train_rows, eval_rows, problems, sources=sources)
    usable = len(train_rows)
    if usable < MIN_ROWS:
        report.problems.append(Problem(sources["train"].name, None, None,
                                       f"only {usable} usable training rows (fewer than {MIN_ROWS}): the model "
                                       "will likely memorize them rather than learn the task", severity="warning"))
    if tokenizer is not None and (train_rows or eval_rows):
        system_problems = refuse_system_messages(tokenizer, train_rows + eval_rows, system_prompt=system_prompt)
        system_problems += refuse_tool_rows(tokenizer, train_rows + eval_rows)
        refused = {(p.path, p.line) for p in system_problems}
        measured = [row for row in train_rows + eval_rows if (row.path, row.line) not in refused]
        lengths, length_problems = token_lengths(tokenizer, measured, max_seq_length=max_seq_length)
        report.problems.extend(system_problems + length_problems)
        if lengths:
            report.token_stats = length_stats(lengths, model_max=model_max)
        report.problems.sort(key=lambda p: (p.severity != "error", p.path, p.line or 0))
        rows = train_rows + eval_rows  # a function-calling row where there is one: its tools may render wrong
        sample_row = next((row for row in rows if row.tools), rows[0])
        try:
            report.sample = tokenizer.apply_chat_template(sample_row.messages, tools=sample_row.tools, tokenize=False)
        except Exception:  # already reported per row above  # noqa: BLE001
            report.sample = None
    return report


def tokenizer_for_model(model: str, chat_template: Path | None = None, system_policy: str = "error"):
    """(tokenizer, notes, model's max positions) for a base model given as a directory or Hub id."""
    ckpt = resolve_base(BaseModelConfig(model=model))
    prepared = load_tokenizer(ckpt.path, chat_template=chat_template, system_policy=system_policy)
    return prepared.tokenizer, prepared.notes, read_context_limit(ckpt.path)


def check_data(dataset: DataSpec, *, eval_path: DataSpec | None = None, model: str | None = None,
               chat_template: Path | None = None, max_seq_length: int = 1024, eval_fraction: float = 0.1,
               seed: int = 42, columns: dict[str, str] | None = None, system_policy: str = "error",
               tools: Path | None = None) -> DataReport:
    """``packager data check``: :func:`check_dataset`, rendering with ``model``'s tokenizer when one is given."""
    tokenizer, notes, model_max = tokenizer_for_model(model, chat_template, system_policy) if model else \
        (None, [], None)
    report = check_dataset(dataset, eval_path=eval_path, eval_fraction=eval_fraction, seed=seed,
                           max_seq_length=max_seq_length, columns=columns, tokenizer=tokenizer, model_max=model_max,
                           tools=read_tools_file(tools) if tools else None)
    report.notes.extend(notes)
    return report
