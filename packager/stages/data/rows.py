"""Reading a dataset: every record normalized to one chat form, every problem kept with its file, line and field.

Accepted inputs: JSONL in chat form (``messages: [{role, content}]``, optional
``system``) or instruction form (``instruction``, ``input``, ``output``,
optional ``system``), and Hugging Face ``datasets`` directories saved with
``save_to_disk``. JSONL as other tools write it loads too: a UTF-8 byte-order
mark (Windows tools), CRLF line endings, and message content as a list of
OpenAI-style text parts (``[{"type": "text", "text": ...}]``), joined with a
newline as vLLM joins them for a string template (its
``renderers/chat_utils/chat_message.py``). Image, audio and other parts are
refused: packager trains text models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from packager.errors import InputFileError, MissingPathError


ROLES = ("system", "user", "assistant")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


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


def _raw_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or row number, parsed record, JSON error) for every non-blank record."""
    if path.is_dir():
        yield from _dataset_records(path)
        return
    if not path.is_file():
        raise InputFileError(path, "not a file (a JSONL file or a `datasets` directory was expected)")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(_UTF16_BOMS):
                raise InputFileError(path, "UTF-16 text (a Windows \"Unicode\" save); save it as UTF-8")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                continue
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
        messages = [{"role": m["role"], "content": _text(m["content"])} for m in messages]
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
        if isinstance(content, list):
            part_problems = _check_parts(content, path, line, f"{at}.content")
            problems += part_problems
            if not part_problems and not _text(content).strip():
                problems.append(Problem(path, line, f"{at}.content", "empty content"))
        elif content is None or (isinstance(content, str) and not content.strip()):
            problems.append(Problem(path, line, f"{at}.content", "empty content"))
        elif not isinstance(content, str):
            problems.append(Problem(path, line, f"{at}.content", f"must be a string or a list of text parts, "
                                                                 f"got {type(content).__name__}"))
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


def _check_parts(parts: list, path: str, line: int, at: str) -> list[Problem]:
    """OpenAI-style content parts: text parts are taken; anything else is named and refused."""
    problems = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            what = f"a part of type {kind!r}" if kind else \
                f"a {type(part).__name__} where a {{type, text}} part belongs"
            problems.append(Problem(path, line, f"{at}[{j}]", f"{what}: packager trains text models, so content "
                                                              "parts must be text parts"))
        elif not isinstance(part.get("text"), str):
            problems.append(Problem(path, line, f"{at}[{j}].text", "a text part needs a string 'text'"))
    if not parts:
        problems.append(Problem(path, line, at, "empty content"))
    return problems


def _text(content: str | list) -> str:
    """Message content as one string: text parts joined with a newline (as vLLM joins them)."""
    return content if isinstance(content, str) else "\n".join(part["text"] for part in content)


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
