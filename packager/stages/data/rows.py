"""Reading a dataset: every record normalized to one chat form, every problem kept with its file, line and field.

Records (from any source: :mod:`packager.stages.data.sources`) are in chat form (``messages: [{role,
content}]``, optional ``system``) or instruction form (``instruction``, ``input``, ``output``, optional
``system``), under these names or the ones ``data.columns`` maps them to. ``messages`` may be JSON text (a
CSV cell). Message content may be a list of OpenAI-style text parts (``[{"type": "text", "text": ...}]``),
joined with a newline as vLLM joins them for a string template (its ``renderers/chat_utils/chat_message.py``).
Image, audio and other parts are refused: packager trains text models. Function-calling conversations (a
``tools`` list, assistant ``tool_calls``, ``tool`` messages) are checked by :mod:`packager.stages.data.tools`;
a row without its own ``tools`` takes the dataset's (``data.tools``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packager.config import HubDataset
from packager.stages.data.sources import Source, open_source
from packager.stages.data.tools import PendingCalls, check_tools, normalize_calls


ROLES = ("system", "user", "assistant", "tool")


def where(path: str, number: int | None, unit: str = "line") -> str:
    """``file:12`` for a line, ``file, row 12`` for a row of a table or a Hub dataset."""
    if number is None:
        return path
    return f"{path}:{number}" if unit == "line" else f"{path}, row {number}"


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    field: str | None
    message: str
    severity: str = "error"  # "error" blocks training; "warning" is said and let through
    unit: str = "line"  # what ``line`` counts: "line" or "row"

    def __str__(self) -> str:
        return where(self.path, self.line, self.unit) + (f" [{self.field}]" if self.field else "") + \
            f": {self.message}"


@dataclass
class Row:
    path: str
    line: int
    messages: list[dict[str, Any]]
    source_format: str
    unit: str = "line"
    tools: list[dict] | None = None
    """The functions the assistant may call in this conversation (JSON schema), when it calls any."""

    @property
    def location(self) -> str:
        return where(self.path, self.line, self.unit)

    @property
    def key(self) -> str:
        """Canonical identity of a conversation: duplicates and leakage compare this."""
        if self.tools:
            return json.dumps({"messages": self.messages, "tools": self.tools}, sort_keys=True, ensure_ascii=False)
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


def _normalize(record: Any, path: str, line: int,
               system_prompt: str | None) -> tuple[list[dict] | None, str | None, list[Problem]]:
    """One record to (chat messages, source format, problems); fields are named as in the file."""
    if not isinstance(record, dict):
        return None, None, [Problem(path, line, None, f"expected an object with 'messages' (or 'instruction' and "
                                                      f"'output'), got {json_kind(record)}")]
    system = record.get("system") or system_prompt
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list):
            return None, "chat", [Problem(path, line, "messages", "must be a list of {role, content} objects")]
        messages, problems = _conversation(messages, record.get("tools"), path, line)
        if problems:
            return None, "chat", problems
        fmt = "chat"
    elif "instruction" in record or "output" in record:
        problems = [Problem(path, line, k, "missing") for k in ("instruction", "output") if record.get(k) is None]
        problems += [Problem(path, line, k, f"must be a string, got {json_kind(record[k])}")
                     for k in ("instruction", "input", "output", "system")
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
                                                      "(chat form) or 'instruction'/'output' (instruction form), "
                                                      "or name the columns that hold them with data.columns")]
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages, fmt, []


def json_kind(value: Any) -> str:
    """A value as JSON names it: null, true, a number, a string, an array, an object."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    for kind, name in ((int | float, "a number"), (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _conversation(messages: list, tools: Any, path: str, line: int) -> tuple[list[dict], list[Problem]]:
    """One conversation normalized (content as text, tool calls' arguments as objects), and every problem with
    its roles, order, content and tool calls, fields named ``messages[i]...`` as in the file."""
    declared, tool_problems = check_tools(tools) if tools is not None else ({}, [])
    problems = [Problem(path, line, at, why) for at, why in tool_problems]
    normalized, previous, pending = [], None, PendingCalls()
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            problems.append(Problem(path, line, at, "expected an object with 'role' and 'content'"))
            continue
        role = m.get("role")
        if role not in ROLES:
            problems.append(Problem(path, line, f"{at}.role", f"unknown role {role!r}; use one of {', '.join(ROLES)}"))
            previous = role
            continue
        message, found = _message(m, role, at, declared)
        problems += [Problem(path, line, where_, why) for where_, why in found]
        if role == "tool":
            problems += [Problem(path, line, where_, why) for where_, why in pending.answer(m, at)]
        else:
            problems += [Problem(path, line, where_, why) for where_, why in pending.unanswered(at)]
            pending.called(at, message.get("tool_calls", []))
        problems += _order(role, previous, i, path, line)
        previous = "assistant-calling" if message.get("tool_calls") else role
        normalized.append(message)
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append(Problem(path, line, "messages", "no assistant turn: nothing to learn from this row"))
    elif roles[-1] != "assistant":
        problems.append(Problem(path, line, f"messages[{len(messages) - 1}].role",
                                f"the conversation ends with a {roles[-1]} turn: it must end with an assistant turn"))
    return normalized, problems


def _message(m: dict, role: str, at: str, declared: dict[str, dict]) -> tuple[dict, list[tuple[str, str]]]:
    """One message as training renders it, and (field, message) for its content and tool calls."""
    content, problems = m.get("content"), []
    calls = None
    if role == "assistant" and m.get("tool_calls") is not None:
        calls, problems = normalize_calls(m["tool_calls"], declared, f"{at}.tool_calls")
    may_be_empty = role == "tool" or calls is not None
    if isinstance(content, list):
        part_problems = _check_parts(content, f"{at}.content", may_be_empty=may_be_empty)
        problems += part_problems
        if not part_problems and not _text(content).strip() and not may_be_empty:
            problems.append((f"{at}.content", "empty content"))
    elif content is None or (isinstance(content, str) and not content.strip()):
        if not may_be_empty:
            problems.append((f"{at}.content", "empty content"))
    elif not isinstance(content, str):
        problems.append((f"{at}.content", f"must be a string or a list of text parts, got {json_kind(content)}"))
    if role != "assistant" and m.get("tool_calls") is not None:
        problems.append((f"{at}.tool_calls", f"a {role} message makes no tool calls: only an assistant turn does"))
    message = {"role": role, "content": _text(content) if isinstance(content, list | str) and not problems else ""}
    if calls:
        message["tool_calls"] = calls
    if role == "tool":
        message.update({k: m[k] for k in ("tool_call_id", "name") if isinstance(m.get(k), str)})
    return message, problems


def _order(role: str, previous: str | None, i: int, path: str, line: int) -> list[Problem]:
    """Turn order: system first; then user and assistant alternate, starting with user, and an assistant turn
    that calls tools is followed by the tool messages that answer it, then the assistant again."""
    at = f"messages[{i}]"
    if role == "system":
        return [] if i == 0 else [Problem(path, line, f"{at}.role", "a system message must come first")]
    if previous == "assistant-calling":
        return [] if role == "tool" else [Problem(path, line, f"{at}.role", f"{role} turn right after an assistant "
                                                  "turn with tool_calls: the tool messages answering them come next")]
    if previous == "tool":
        return [] if role in ("tool", "assistant") else [Problem(
            path, line, f"{at}.role", f"{role} turn after a tool message: the assistant turn that reads the "
                                      "tool results comes next")]
    if role == "tool":
        return [Problem(path, line, f"{at}.role", "a tool message must answer the tool_calls of the assistant "
                                                  "turn before it")]
    expected = "user" if previous in (None, "system", "assistant") else "assistant"
    if role == expected:
        return []
    what = f"two {role} turns in a row (messages[{i - 1}] and {at})" if previous == role else \
        f"{role} turn where a {expected} turn must come"
    return [Problem(path, line, f"{at}.role", f"{what}; turns must alternate user/assistant, starting with user")]


def _check_parts(parts: list, at: str, *, may_be_empty: bool = False) -> list[tuple[str, str]]:
    """OpenAI-style content parts: text parts are taken; anything else is named and refused."""
    problems = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            what = f"a part of type {kind!r}" if kind else \
                f"{json_kind(part)} where a {{type, text}} part belongs"
            problems.append((f"{at}[{j}]", f"{what}: packager trains text models, so content parts must be text "
                                           "parts"))
        elif not isinstance(part.get("text"), str):
            problems.append((f"{at}[{j}].text", "a text part needs a string 'text'"))
    if not parts and not may_be_empty:
        problems.append((at, "empty content"))
    return problems


def _text(content: str | list) -> str:
    """Message content as one string: text parts joined with a newline (as vLLM joins them)."""
    return content if isinstance(content, str) else "\n".join(part["text"] for part in content)


def read_rows(source: Source | Path | str | HubDataset, *, system_prompt: str | None = None,
              columns: dict[str, str] | None = None,
              tools: list[dict] | None = None) -> tuple[list[Row], list[Problem]]:
    """Read one dataset (a file, a directory, a Hub dataset); return the usable rows and every problem found.
    ``tools`` is what rows that declare none may call."""
    if not isinstance(source, Source):
        source = open_source(source if isinstance(source, HubDataset) else Path(source))
    rows, problems, first_format = [], [], None
    name, unit = source.name, source.unit
    for line, record, read_error in source.records:
        if read_error:
            problems.append(Problem(name, line, None, read_error, unit=unit))
            continue
        record, field_problems = _named_fields(record, columns or {})
        if tools and isinstance(record, dict) and record.get("tools") is None and "messages" in record:
            record = {**record, "tools": tools}
        if field_problems:
            messages, fmt, row_problems = None, None, [Problem(name, line, at, why) for at, why in field_problems]
        else:
            messages, fmt, row_problems = _normalize(record, name, line, system_prompt)
        if fmt is not None:
            if first_format is None:
                first_format = (fmt, line)
            elif fmt != first_format[0]:
                row_problems.append(Problem(name, line, None, f"{fmt} form, but {unit} {first_format[1]} is "
                                                              f"{first_format[0]} form: one format per file"))
        problems.extend(replace(p, unit=unit, field=_their_name(p.field, columns or {})) for p in row_problems)
        if not row_problems and messages is not None:
            rows.append(Row(name, line, messages, fmt, unit, tools=record.get("tools") or None))
    if not rows and not problems:
        problems.append(Problem(name, None, None, "the dataset is empty"))
    return rows, problems


def _named_fields(record: Any, columns: dict[str, str]) -> tuple[Any, list[tuple[str, str]]]:
    """The record under packager's field names (``data.columns`` maps ours to the data's), with ``messages``
    given as JSON text (a CSV cell) decoded; and (field, message) for what is wrong with them."""
    if not isinstance(record, dict):
        return record, []
    problems = []
    if columns:
        record = {**{k: v for k, v in record.items() if k not in columns.values()},
                  **{ours: record[theirs] for ours, theirs in columns.items() if theirs in record}}
    for key in ("messages", "tools"):
        value = record.get(key)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                record = {**record, key: json.loads(value)}
            except ValueError as exc:
                problems.append((key, f"JSON text that does not parse: {exc}"))
    return record, problems


def _their_name(at: str | None, columns: dict[str, str]) -> str | None:
    """A problem's field in the data's own words: ``messages[2].role`` is ``conversation[2].role`` when
    data.columns maps messages to conversation."""
    if not at:
        return at
    root = re.split(r"[\[.]", at, maxsplit=1)[0]
    return columns[root] + at[len(root):] if root in columns else at
