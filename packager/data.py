"""Datasets: read, normalize to one chat form, check every row before any model loads, split.

Accepted inputs: JSONL in chat form (``messages: [{role, content}]``, optional
``system``) or instruction form (``instruction``, ``input``, ``output``,
optional ``system``), and Hugging Face ``datasets`` directories saved with
``save_to_disk``. Every problem is collected with its file, line and field and
reported at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from packager.errors import InputFileError, MissingPathError

ROLES = ("system", "user", "assistant")
MIN_ROWS = 200


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    field: str | None
    message: str
    severity: str = "error"  # "error" blocks training; "warning" is said and let through

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line is not None else "")
        where += f" [{self.field}]" if self.field else ""
        return f"{where}: {self.message}"


@dataclass
class Row:
    path: str
    line: int
    messages: list[dict[str, str]]
    source_format: str

    @property
    def key(self) -> str:
        """Canonical identity of a conversation: duplicates and leakage compare this."""
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


@dataclass
class DataReport:
    train_rows: list[Row]
    eval_rows: list[Row]
    problems: list[Problem] = field(default_factory=list)
    token_stats: dict[str, int] | None = None
    sample: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_json(self) -> dict[str, Any]:
        return {"train_rows": len(self.train_rows), "eval_rows": len(self.eval_rows),
                "errors": [asdict(p) for p in self.errors], "warnings": [asdict(p) for p in self.warnings],
                "token_stats": self.token_stats, "sample": self.sample, "notes": self.notes}


# ---------------------------------------------------------------- reading

def _raw_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or row number, parsed record, JSON error) for every non-blank record."""
    if path.is_dir():
        yield from _dataset_records(path)
        return
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except ValueError as exc:
                yield number, None, f"invalid JSON: {exc}"


def _dataset_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputFileError(path, f"not a JSONL file or a `datasets` directory saved with save_to_disk: {exc}") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise InputFileError(path, f"DatasetDict has splits {list(ds)}; expected a 'train' split")
        ds = ds["train"]
    for number, record in enumerate(ds, start=1):
        yield number, record, None


def _normalize(record: Any, path: str, line: int,
               system_prompt: str | None) -> tuple[list[dict] | None, str | None, list[Problem]]:
    """One record to (chat messages, source format, problems); fields are named as in the file."""
    if not isinstance(record, dict):
        return None, None, [Problem(path, line, None, f"expected a JSON object, got {type(record).__name__}")]
    system = record.get("system") or system_prompt
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list):
            return None, "chat", [Problem(path, line, "messages", "must be a list of {role, content} objects")]
        problems = _check_messages(messages, path, line)
        if problems:
            return None, "chat", problems
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        fmt = "chat"
    elif "instruction" in record or "output" in record:
        problems = [Problem(path, line, k, "missing") for k in ("instruction", "output") if k not in record]
        problems += [Problem(path, line, k, "must be a string") for k in ("instruction", "input", "output", "system")
                     if record.get(k) is not None and not isinstance(record[k], str)]
        problems += [Problem(path, line, k, "empty content") for k in ("instruction", "output")
                     if isinstance(record.get(k), str) and not record[k].strip()]
        if problems:
            return None, "instruction", problems
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        fmt = "instruction"
    else:
        keys = ", ".join(sorted(record)) or "none"
        return None, None, [Problem(path, line, None, f"unknown row format (keys: {keys}); expected 'messages' "
                                                      "(chat form) or 'instruction'/'output' (instruction form)")]
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages, fmt, []


def _check_messages(messages: list, path: str, line: int) -> list[Problem]:
    """Roles, order and content of one conversation, fields named ``messages[i]...`` as in the file."""
    problems = []
    previous = None
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            problems.append(Problem(path, line, at, "expected an object with 'role' and 'content'"))
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(Problem(path, line, f"{at}.role", f"unknown role {role!r}; use one of {', '.join(ROLES)}"))
            previous = role
            continue
        if content is None or (isinstance(content, str) and not content.strip()):
            problems.append(Problem(path, line, f"{at}.content", "empty content"))
        elif not isinstance(content, str):
            problems.append(Problem(path, line, f"{at}.content", f"must be a string, got {type(content).__name__}"))
        if role == "system":
            if i != 0:
                problems.append(Problem(path, line, f"{at}.role", "a system message must come first"))
        else:
            expected = "user" if previous in (None, "system", "assistant") else "assistant"
            if role != expected:
                what = f"two {role} turns in a row (messages[{i - 1}] and {at})" if previous == role else \
                    f"{role} turn where a {expected} turn must come"
                problems.append(Problem(path, line, f"{at}.role",
                                        f"{what}; turns must alternate user/assistant, starting with user"))
        previous = role
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append(Problem(path, line, "messages", "no assistant turn: nothing to learn from this row"))
    elif roles[-1] != "assistant":
        problems.append(Problem(path, line, f"messages[{len(messages) - 1}].role",
                                "the conversation ends with a user turn: it must end with an assistant turn"))
    return problems


def read_rows(path: Path | str, *, system_prompt: str | None = None) -> tuple[list[Row], list[Problem]]:
    """Read one dataset file or directory; return the usable rows and every problem found."""
    path = Path(path)
    if not path.exists():
        raise MissingPathError(path, "dataset not found")
    rows, problems, first_format = [], [], None
    name = str(path)
    for line, record, json_error in _raw_records(path):
        if json_error:
            problems.append(Problem(name, line, None, json_error))
            continue
        messages, fmt, row_problems = _normalize(record, name, line, system_prompt)
        if fmt is not None:
            if first_format is None:
                first_format = (fmt, line)
            elif fmt != first_format[0]:
                row_problems.append(Problem(name, line, None, f"{fmt} form, but line {first_format[1]} is "
                                                              f"{first_format[0]} form: one format per file"))
        problems.extend(row_problems)
        if not row_problems and messages is not None:
            rows.append(Row(name, line, messages, fmt))
    if not rows and not problems:
        problems.append(Problem(name, None, None, "the dataset is empty"))
    return rows, problems


def find_duplicates(rows: list[Row]) -> list[Problem]:
    seen: dict[str, Row] = {}
    problems = []
    for row in rows:
        first = seen.setdefault(row.key, row)
        if first is not row:
            problems.append(Problem(row.path, row.line, None, f"exact duplicate of line {first.line}"))
    return problems


def find_leakage(train: list[Row], eval_rows: list[Row]) -> list[Problem]:
    train_keys = {row.key: row for row in train}
    return [Problem(row.path, row.line, None, f"also in the training data ({train_keys[row.key].path}:"
                                                f"{train_keys[row.key].line}): eval would measure memorization")
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


# ---------------------------------------------------------------- tokenizer checks

def token_lengths(tokenizer, rows: list[Row], *, max_seq_length: int) -> tuple[list[int], list[Problem]]:
    lengths, problems = [], []
    for row in rows:
        try:
            ids = tokenizer.apply_chat_template(row.messages, tokenize=True, return_dict=False)
        except Exception as exc:  # the template's own raise_exception(), or a Jinja error  # noqa: BLE001
            problems.append(Problem(row.path, row.line, "messages", f"the chat template cannot render this row: {exc}"))
            continue
        ids = _as_ids(ids)
        lengths.append(len(ids))
        if len(ids) > max_seq_length:
            problems.append(Problem(row.path, row.line, "messages",
                                    f"{len(ids)} tokens, longer than max_seq_length {max_seq_length}; "
                                    "shorten the row or raise data.max_seq_length"))
    return lengths, problems


def _as_ids(encoded) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def length_stats(lengths: list[int], *, model_max: int | None = None) -> dict[str, int]:
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    suggested = 64 * math.ceil(ordered[-1] / 64)
    if model_max:
        suggested = min(suggested, model_max)
    return {"min": ordered[0], "median": int(statistics.median(ordered)), "p95": p95, "max": ordered[-1],
            "suggested_max_seq_length": suggested}


def tokenize_with_assistant_mask(tokenizer, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """input_ids and a mask that is 1 on assistant tokens (their content and end-of-turn token), else 0.

    Works with any chat template, including ones without ``{% generation %}``
    markers: each assistant turn spans from the rendered prefix with the
    generation prompt to the rendered prefix including that turn.
    """
    full = _as_ids(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_as_ids(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True,
                                                          return_dict=False)))
        end = len(_as_ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=False)))
        for j in range(start, min(end, len(full))):
            mask[j] = 1
    return {"input_ids": full, "assistant_masks": mask}


# ---------------------------------------------------------------- the check

def check_dataset(train_path: Path, *, eval_path: Path | None = None, eval_fraction: float = 0.1, seed: int = 42,
                  max_seq_length: int = 1024, system_prompt: str | None = None,
                  tokenizer=None, model_max: int | None = None) -> DataReport:
    """Read, validate, de-duplicate and split; with a tokenizer, also render and measure every row."""
    train_rows, problems = read_rows(train_path, system_prompt=system_prompt)
    problems += find_duplicates(train_rows)
    if eval_path is not None:
        eval_rows, eval_problems = read_rows(eval_path, system_prompt=system_prompt)
        problems += eval_problems + find_duplicates(eval_rows) + find_leakage(train_rows, eval_rows)
    else:
        unique = list({row.key: row for row in train_rows}.values())
        train_rows, eval_rows = split_rows(unique, eval_fraction=eval_fraction, seed=seed)
    report = DataReport(train_rows, eval_rows, problems)
    usable = len(train_rows)
    if usable < MIN_ROWS:
        report.problems.append(Problem(str(train_path), None, None,
                                       f"only {usable} usable training rows (fewer than {MIN_ROWS}): the model "
                                       "will likely memorize them rather than learn the task", severity="warning"))
    if tokenizer is not None and (train_rows or eval_rows):
        lengths, length_problems = token_lengths(tokenizer, train_rows + eval_rows, max_seq_length=max_seq_length)
        report.problems.extend(length_problems)
        if lengths:
            report.token_stats = length_stats(lengths, model_max=model_max)
        report.problems.sort(key=lambda p: (p.severity != "error", p.path, p.line or 0))
        sample_row = (train_rows or eval_rows)[0]
        try:
            report.sample = tokenizer.apply_chat_template(sample_row.messages, tokenize=False)
        except Exception:  # already reported per row above  # noqa: BLE001
            report.sample = None
    return report


def rows_to_jsonl(rows: list[Row]) -> str:
    return "".join(json.dumps({"messages": row.messages}, ensure_ascii=False) + "\n" for row in rows)


def read_split(path: Path) -> list[list[dict[str, str]]]:
    """Read a split file written by :func:`rows_to_jsonl` (already validated)."""
    return [json.loads(line)["messages"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def prepare_data(run, data_cfg, *, tokenizer, model_max: int | None = None) -> DataReport:
    """Check the configured data and record the split in the run (stage ``data``) before any training.

    Raises:
        DatasetError: any row has an error (warnings are let through and recorded).
    """
    from packager.errors import DatasetError

    report = check_dataset(data_cfg.train, eval_path=data_cfg.eval, eval_fraction=data_cfg.eval_fraction,
                           seed=data_cfg.seed, max_seq_length=data_cfg.max_seq_length,
                           system_prompt=data_cfg.system_prompt, tokenizer=tokenizer, model_max=model_max)
    if report.errors:
        raise DatasetError(report.errors)
    parameters = {"train": str(data_cfg.train), "eval": str(data_cfg.eval) if data_cfg.eval else None,
                  "eval_fraction": data_cfg.eval_fraction, "seed": data_cfg.seed,
                  "max_seq_length": data_cfg.max_seq_length, "system_prompt": data_cfg.system_prompt}
    texts = {"train.jsonl": rows_to_jsonl(report.train_rows), "eval.jsonl": rows_to_jsonl(report.eval_rows),
             "report.json": json.dumps(report.to_json(), indent=2)}
    if _split_recorded(run, parameters, texts):
        return report  # the same split from the same files: recording it again would only change timestamps
    with run.stage("data", parameters=parameters) as st:
        for source in filter(None, (data_cfg.train, data_cfg.eval)):
            if Path(source).is_dir():
                st.add_input_dir(source, patterns=("**/*",))
            else:
                st.add_input(source)
        out = st.output_dir("data")
        for name, text in texts.items():
            (out / name).write_text(text, encoding="utf-8")
        st.metrics.update({"train_rows": len(report.train_rows), "eval_rows": len(report.eval_rows),
                           "warnings": [str(w) for w in report.warnings], "token_stats": report.token_stats})
    return report


def _split_recorded(run, parameters: dict, texts: dict[str, str]) -> bool:
    """The run records this exact split: same parameters, inputs unchanged, the same files intact."""
    stage = run.manifest.stages.get("data")
    if stage is None or stage.parameters != parameters:
        return False
    if any(not run.resolve(i.path).is_file() or run.digest(run.resolve(i.path)).sha256 != i.sha256
           for i in stage.inputs):
        return False
    expected = {f"data/{name}": hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in texts.items()}
    return {o.path: o.sha256 for o in stage.outputs} == expected and run.outputs_intact("data")


def tokenizer_for_model(model: str, chat_template: Path | None = None):
    """(tokenizer, notes, model's max positions) for a base model given as a directory or Hub id."""
    from packager.models.checkpoint import resolve_base
    from packager.config import BaseModelConfig
    from packager.models.tokenizer import load_tokenizer

    ckpt = resolve_base(BaseModelConfig(model=model))
    prepared = load_tokenizer(ckpt.path, chat_template=chat_template)
    config = json.loads((ckpt.path / "config.json").read_text())
    return prepared.tokenizer, prepared.notes, config.get("max_position_embeddings")


def format_report(report: DataReport) -> str:
    """The human-readable report of ``packager data check``."""
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
