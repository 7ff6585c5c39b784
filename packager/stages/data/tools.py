"""Function-calling rows: the ``tools`` a row declares, the assistant's ``tool_calls`` and the ``tool`` messages that
answer them, in the OpenAI / Hugging Face form that chat templates take (``apply_chat_template(tools=...)``).

A tool is ``{"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}``; a call is
``{"id"?, "type": "function", "function": {"name", "arguments"}}`` with arguments an object, or JSON text of one
as OpenAI writes them (decoded here: Hugging Face templates write ``arguments | tojson``). Every call names a
declared tool and its arguments satisfy that tool's schema; every tool message answers a call of the assistant
turn before it, by ``tool_call_id`` or, without ids, in order; every call before the conversation goes on is
answered. Problems name the field as the file does: ``messages[3].tool_calls[0].function.arguments.priority``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from packager.errors import InputFileError


def read_tools_file(path: Path) -> list[dict]:
    """``data.tools``: a JSON file holding the list of tools, checked as a row's own ``tools`` would be."""
    try:
        tools = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot read the tools: {exc}") from None
    _, problems = check_tools(tools, at="")
    if problems:
        at, why = problems[0]
        raise InputFileError(path, f"{at or 'the file'}: {why}" + (f" (and {len(problems) - 1} more)"
                                                                  if len(problems) > 1 else ""))
    return tools


def check_tools(tools: Any, at: str = "tools") -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """The declared tools by name (their ``function`` objects), and (field, message) for what is wrong."""
    if not isinstance(tools, list):
        return {}, [(at, "must be a list of {type: function, function: {name, description, parameters}} objects")]
    declared, problems = {}, []
    for k, tool in enumerate(tools):
        here = f"{at}[{k}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            problems.append((here, "expected {type: function, function: {name, description, parameters}}"))
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append((f"{here}.function.name", "a tool needs a name"))
            continue
        if name in declared:
            problems.append((f"{here}.function.name", f"tool {name!r} is declared twice"))
        parameters = function.get("parameters", {"type": "object"})
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            problems.append((f"{here}.function.parameters", f"not a valid JSON schema: {exc.message}"))
            continue
        declared[name] = function
    return declared, problems


def normalize_calls(calls: Any, declared: dict[str, dict], at: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """An assistant turn's calls with arguments as objects, each checked against its tool's schema."""
    if not isinstance(calls, list) or not calls:
        return [], [(at, "must be a non-empty list of {type: function, function: {name, arguments}} objects")]
    normalized, problems = [], []
    for j, call in enumerate(calls):
        here = f"{at}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            problems.append((here, "expected {type: function, function: {name, arguments}}"))
            continue
        name, arguments = function.get("name"), function.get("arguments", {})
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none are declared: give the row a 'tools' list"
            problems.append((f"{here}.function.name", f"calls {name!r}, which is not a declared tool ({known})"))
            continue
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                problems.append((f"{here}.function.arguments", f"JSON text that does not parse: {exc}"))
                continue
        if not isinstance(arguments, dict):
            problems.append((f"{here}.function.arguments", "must be an object (or JSON text of one)"))
            continue
        schema = declared[name].get("parameters", {"type": "object"})
        for error in sorted(Draft202012Validator(schema).iter_errors(arguments), key=lambda e: list(e.path)):
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
            problems.append((f"{here}.function.arguments{path}", f"{error.message} (the schema of {name!r})"))
        out = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            out["id"] = call["id"]
        normalized.append(out)
    return normalized, problems


class PendingCalls:
    """The calls of the last assistant turn that no tool message has answered yet."""

    def __init__(self) -> None:
        self.at, self.calls = "", []

    def called(self, at: str, calls: list[dict]) -> None:
        self.at, self.calls = at, list(calls)

    def answer(self, message: dict, at: str) -> list[tuple[str, str]]:
        """Match a tool message to the call it answers: by ``tool_call_id``, else the first one unanswered."""
        if not self.calls:
            return [(f"{at}.role", "a tool message that answers no call: the assistant turn before it makes "
                                   "no (more) tool_calls")]
        wanted = message.get("tool_call_id")
        if wanted is None:
            self.calls.pop(0)
            return []
        for k, call in enumerate(self.calls):
            if call.get("id") == wanted:
                del self.calls[k]
                return []
        ids = ", ".join(repr(c["id"]) for c in self.calls if "id" in c) or "none with an id"
        return [(f"{at}.tool_call_id", f"{wanted!r} answers none of the calls of {self.at} still open ({ids})")]

    def unanswered(self, before: str) -> list[tuple[str, str]]:
        if not self.calls:
            return []
        names = ", ".join(c["function"]["name"] for c in self.calls)
        return [(f"{self.at}.tool_calls", f"call(s) to {names} get no tool message before {before}: every call "
                                          "is answered before the conversation goes on")]
