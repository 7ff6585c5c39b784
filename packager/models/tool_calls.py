"""How a chat template writes tool calls, and reading calls back out of a model's raw output the same way.

A template that renders ``tool_calls`` teaches the model one call format; the serving engine must parse that
same format back into structured ``tool_calls``, or the client receives the call as text. The formats here are
the ones the published templates use, each with the name of vLLM's parser for it (``--tool-call-parser``;
vLLM 0.33 ``vllm/tool_parsers/__init__.py``); parsing follows what that parser accepts (read from its source,
written here independently), so evaluation scores calls as the server will return them:

- ``hermes``: ``<tool_call>{"name", "arguments"}</tool_call>``, repeated; a last call left unclosed at the end of
  the output counts (``hermes_tool_parser.py``). Qwen 2.5, Qwen 3, Hermes, packager's SmolLM2 tools template.
- ``llama3_json``: bare ``{"name", "parameters"}`` objects (``arguments`` also taken), optionally after
  ``<|python_tag|>``, separated by ``;`` (``llama_tool_parser.py``). Llama 3.1-3.3.
- ``mistral``: ``[TOOL_CALLS]`` and a JSON list of ``{"name", "arguments"}`` (``mistral_tool_parser.py``, for
  tokenizers before v11). Mistral 7B v0.3, Nemo.
"""

from __future__ import annotations

import json
from pathlib import Path
import re
from dataclasses import dataclass

from packager.run.jsonl import read_jsonl


@dataclass(frozen=True)
class ParsedCalls:
    calls: list[dict]  # {"name": str, "arguments": object}
    content: str | None  # the text before the calls, if any


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    vllm_parser: str  # vLLM's --tool-call-parser for it
    opening: str  # what starts a call in the model's output ("" for bare JSON)

    def parse(self, output: str) -> ParsedCalls | None:
        """The calls in ``output`` (raw, special tokens kept), or None when it makes no call or the call does not
        parse: then the server answers with text."""
        try:
            return {"hermes": _hermes, "llama3_json": _llama3_json, "mistral": _mistral}[self.name](output)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


FORMATS = {f.name: f for f in (ToolCallFormat("hermes", "hermes", "<tool_call>"),
                               ToolCallFormat("llama3_json", "llama3_json", ""),
                               ToolCallFormat("mistral", "mistral", "[TOOL_CALLS]"))}


def tool_call_format(chat_template: str | None) -> ToolCallFormat | None:
    """The call format ``chat_template`` writes, read off its text; None for a template that writes none of
    these (no tools, or a format packager cannot yet serve)."""
    text = chat_template or ""
    if "[TOOL_CALLS]" in text:
        return FORMATS["mistral"]
    if "<tool_call>" in text:
        return FORMATS["hermes"]
    if '"parameters": ' in text and "<|start_header_id|>" in text:
        return FORMATS["llama3_json"]
    return None


@dataclass(frozen=True)
class CallCase:
    row: int  # the conversation's index in the eval split
    prompt: list[dict]
    tools: list[dict]
    expected: list[dict]  # {"name", "arguments"}


def call_cases(conversations: list[list[dict]], tools: list[list[dict] | None]) -> list[CallCase]:
    """Each assistant turn that calls tools: the conversation before it, its tools, and its calls."""
    return [CallCase(row, messages[:k], row_tools, [c["function"] for c in message["tool_calls"]])
            for row, (messages, row_tools) in enumerate(zip(conversations, tools)) if row_tools
            for k, message in enumerate(messages) if message["role"] == "assistant" and message.get("tool_calls")]


def response_template(chat_template: str | None, end_of_turn: list[str], generation_prompt: str) -> dict | None:
    """A ``response_template`` for the tokenizer (transformers >= 5.24 ``tokenizer.parse_response``, which
    ``transformers serve`` uses to return tool calls as ``tool_calls``), for a template that writes calls as
    ``<tool_call>`` JSON; None for any other. Written from the template format transformers documents (fields
    with open and close markers, a JSON body turned into an OpenAI call); the answer starts after the generation
    prompt and its content ends at the end-of-turn text."""
    fmt = tool_call_format(chat_template or "")
    if fmt is None or fmt.name != "hermes" or not end_of_turn or not generation_prompt:
        return None
    ends = "|".join(re.escape(text) for text in end_of_turn)
    return {"defaults": {"role": "assistant"}, "start_anchor": generation_prompt, "fields": {
        # the whitespace before a call (after the content, between calls) belongs to no field
        "tool_calls": {"open_pattern": r"\s*<tool_call>", "close": "</tool_call>", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        # the whitespace around the end of the turn too: a trailing newline would open an empty content region
        "content": {"close_pattern": rf"\s*(?:{ends})\s*", "content": "text"}}}


def split_call_cases(split: Path) -> list[CallCase]:
    """The call cases of a split file (``data/eval.jsonl``: rows of messages and tools); [] where there is none."""
    rows = read_jsonl(split)
    return call_cases([row["messages"] for row in rows], [row.get("tools") for row in rows])


def openai_messages(messages: list[dict]) -> list[dict]:
    """Messages as an OpenAI-compatible request carries them: each call with an id and its arguments as JSON
    text, each tool result with the id of the call it answers (in order, where the data names none): servers
    that validate requests (llama-cpp-python's) refuse calls without ids."""
    out, open_ids, n = [], [], 0
    for message in messages:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                arguments = call["function"].get("arguments")
                text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
                call_id = call.get("id") or f"call_{n}"
                n += 1
                open_ids.append(call_id)
                calls.append({**call, "id": call_id, "type": "function", "function": {**call["function"],
                                                                                     "arguments": text}})
            message = {**message, "tool_calls": calls}
        elif message["role"] == "tool":
            answered = message.get("tool_call_id") or (open_ids[0] if open_ids else None)
            open_ids = [i for i in open_ids if i != answered]
            message = {**message, "tool_call_id": answered} if answered else message
        out.append(message)
    return out


def same_calls(got: list[dict], expected: list[dict]) -> bool:
    """Same functions, in order, with arguments equal as JSON (key order aside)."""
    return len(got) == len(expected) and all(
        g.get("name") == e["name"] and as_json(g.get("arguments")) == as_json(e["arguments"])
        for g, e in zip(got, expected))


def argument_score(got: list[dict] | None, expected: list[dict]) -> float:
    """Share of the expected calls' arguments reproduced exactly, call by call in order: a call to another
    function reproduces none of its arguments, a call without arguments counts as one field (made or not), and
    each call beyond the expected ones counts as one more field missed. 0.0 when nothing parsed as calls."""
    got = got or []
    fields = right = 0
    for k, want in enumerate(expected):
        made = k < len(got) and got[k].get("name") == want["name"]
        wanted = as_json(want["arguments"])
        given = as_json(got[k].get("arguments")) if made else None
        if not isinstance(wanted, dict) or not wanted:
            fields, right = fields + 1, right + (made and (given or {}) == (wanted or {}))
            continue
        given = given if isinstance(given, dict) else {}
        fields += len(wanted)
        right += sum(key in given and given[key] == value for key, value in wanted.items())
    fields += max(0, len(got) - len(expected))
    return right / fields if fields else 0.0


def as_json(arguments) -> object:
    """Arguments as an object: OpenAI sends them as JSON text."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


def _hermes(output: str) -> ParsedCalls | None:
    if "<tool_call>" not in output:
        return None
    calls = [_call(json.loads(closed or unclosed)) for closed, unclosed in _HERMES.findall(output)]
    return ParsedCalls(calls, output[:output.index("<tool_call>")] or None)


def _llama3_json(output: str) -> ParsedCalls | None:
    text = output.split("<|python_tag|>", 1)[-1]
    decoder, calls, at = json.JSONDecoder(), [], 0
    while (start := text.find("{", at)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            at = start + 1
            continue
        calls.append(_call(obj))
        at = end
    return ParsedCalls(calls, None) if calls else None


def _mistral(output: str) -> ParsedCalls | None:
    if "[TOOL_CALLS]" not in output:
        return None
    before, after = output.split("[TOOL_CALLS]", 1)
    listed, _ = json.JSONDecoder().raw_decode(after.lstrip())
    return ParsedCalls([_call(obj) for obj in listed], before or None)


def _call(obj: dict) -> dict:
    arguments = obj["arguments"] if "arguments" in obj else obj["parameters"]
    if not isinstance(obj["name"], str):
        raise ValueError("a call's name is not a string")
    return {"name": obj["name"], "arguments": arguments}
