"""The Ollama TEMPLATE's function calling checked against the Jinja chat template: on conversations that declare
tools, call them and answer with their results (and on the run's own tool rows), transformers' rendering with
``tools=`` equals the TEMPLATE as Ollama executes it with the request's tools; and the tag Ollama's parser reads
off the TEMPLATE is the one the model writes before a call, so calls come back as ``tool_calls``."""

from __future__ import annotations

import json
from pathlib import Path

from packager.errors import DependencyMissingError, StageError
from packager.models.chat_template import ChatTemplate
from packager.models.tool_calls import tool_call_format
from packager.serve.go_template import go_available, ollama_tool_call_tag, render_as_ollama
from packager.serve.parity import PARITY_DATE, as_ollama_sends, first_difference, jinja_prompt, trimmed_roles


def _function(name: str, description: str | None, properties: dict, required: list[str]) -> dict:
    function = {"name": name, **({"description": description} if description else {}),
                "parameters": {"type": "object", "properties": properties, **({"required": required} if required
                                                                              else {})}}
    return {"type": "function", "function": function}


_TICKET = _function("create_ticket", "File a support ticket.", {
    "category": {"type": "string", "enum": ["billing", "bug"]},
    "priority": {"type": "integer", "description": "1 (low) to 3 (high)."},
    "tags": {"type": "array", "items": {"type": "string"}, "description": 'Labels: "quoted" & <bracketed>, naïve'}},
    ["category"])
_WEATHER = _function("get_weather", "Weather for a city.", {
    "city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f", None]}}, ["city"])
_LIST = _function("list_tickets", None, {}, [])


def _call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# Written with the fields in the order Ollama's TEMPLATE writes them (see packager/serve/tool_format.py): what a
# TEMPLATE can match. The run's own tool rows are checked beside them, as they are.
TOOL_PARITY_CONVERSATIONS: list[tuple[list[dict], list[dict]]] = [
    ([{"role": "system", "content": "You triage tickets."}, {"role": "user", "content": "The printer is jammed."}],
     [_TICKET, _WEATHER]),
    ([{"role": "user", "content": "Weather in Paris?"}], [_WEATHER, _LIST]),
    ([{"role": "system", "content": "You triage tickets."}, {"role": "user", "content": "Printer on floor 3 jammed"},
      {"role": "assistant", "content": "", "tool_calls": [
          _call("create_ticket", {"category": "bug", "priority": 3, "tags": ["printer", 'floor "3"']})]},
      {"role": "tool", "content": '{"id": "T-1", "status": "open"}'},
      {"role": "assistant", "content": "Filed T-1."}, {"role": "user", "content": "Thanks! And in Zürich?"}],
     [_TICKET, _WEATHER]),
    ([{"role": "user", "content": "Paris or Zürich, which is warmer?"},
      {"role": "assistant", "content": "Checking both.", "tool_calls": [
          _call("get_weather", {"city": "Paris", "unit": None}),
          _call("get_weather", {"city": "Zürich", "unit": "c"})]},
      {"role": "tool", "content": "12 C"}, {"role": "tool", "content": "9 C"}], [_WEATHER]),
    ([{"role": "user", "content": "File it with details."},
      {"role": "assistant", "content": "", "tool_calls": [_call("create_ticket", {
          "category": "bug", "details": {"a": "x\ty", "b": [1, 2.5, 1000000, True, None], "c": {}}})]},
      {"role": "tool", "content": "T-2"}, {"role": "assistant", "content": "Filed T-2."}], [_TICKET, _LIST]),
]


def run_tool_conversations(split: Path, *, limit: int = 3) -> list[tuple[list[dict], list[dict]]]:
    """The first ``limit`` rows of a training split that declare tools, each cut after its last message that is
    not the assistant's (so the render ends with the generation prompt, as a request does)."""
    out = []
    for line in split.read_text(encoding="utf-8").splitlines() if split.is_file() else []:
        row = json.loads(line)
        if not row.get("tools"):
            continue
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] != "assistant"), default=-1)
        out.append(([{**m, "content": m.get("content") or ""} for m in messages[:last + 1]], row["tools"]))
        if len(out) == limit:
            break
    return out


_CALL_STARTS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS][", "llama3_json": "{"}
"""How a model's output starts where it makes a call, in each call format: Ollama's tag must be a start of it."""


def check_tool_parity(template: ChatTemplate, go_template: str, *, whose: str = "the TEMPLATE",
                      conversations: list[tuple[list[dict], list[dict]]] = TOOL_PARITY_CONVERSATIONS,
                      own: list[tuple[list[dict], list[dict]]] = ()) -> dict:
    """Compare the Jinja template (transformers, with ``tools=``) and ``go_template`` as Ollama executes it on
    each conversation with tools, then the tag Ollama's parser reads off ``go_template`` with the text the
    model writes before a call.

    Raises:
        StageError: a conversation renders differently (which one, where), or Ollama would not find the calls.
        DependencyMissingError: there is no Go toolchain.
    """
    if not go_available():
        raise DependencyMissingError("go", "to check the Ollama TEMPLATE's function calling with Go's "
                                           "text/template", install="apt install golang-go")
    trimmed, bos = trimmed_roles(template), template.bos_token if template.adds_bos else ""
    for n, (messages, tools) in enumerate([*conversations, *own], 1):
        which = f"conversation {n} with tools" if n <= len(conversations) else \
            f"the run's tool row {n - len(conversations)} (data/train.jsonl)"
        sent = as_ollama_sends(messages, trimmed)
        want = jinja_prompt(template, sent, tools=tools)
        want = want[len(bos):] if bos and want.startswith(bos) else want
        got = render_as_ollama(go_template, sent, tools=tools, date=PARITY_DATE.isoformat())
        if got != want:
            raise StageError("ollama template", f"{whose} renders {which} differently from the Jinja chat template: "
                                                f"{first_difference(want, got, theirs=whose)}",
                             hint=_field_hint(tools) if n > len(conversations) else None)
    fmt = tool_call_format(template.source)
    tag = ollama_tool_call_tag(go_template)
    if fmt is not None and not _CALL_STARTS[fmt.name].startswith(tag):
        raise StageError("ollama template", f"Ollama would wait for {tag!r} before a call, and the model writes "
                                            f"{_CALL_STARTS[fmt.name]!r}: its calls would come back as text",
                         hint="the first text inside {{ if .ToolCalls }} must be the call's opening tag")
    return {"tool_conversations": len(conversations) + len(own), "run_tool_rows": len(own),
            "tool_call_tag": tag, "call_format": fmt.name if fmt else None}


def _field_hint(tools: list[dict]) -> str:
    return ("Ollama hands its TEMPLATE each tool as the fields it keeps (type; function: name, description, "
            "parameters: type, properties, required; a property's type, items, description, enum), properties in "
            "alphabetical order; write the dataset's tools that way (fields such as additionalProperties or default "
            f"cannot reach an Ollama prompt). The first tool: {json.dumps(tools[0], ensure_ascii=False)[:300]}")
