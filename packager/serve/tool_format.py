"""How a chat template writes function calling, as an Ollama TEMPLATE writes it: the tool definitions, the
assistant's calls and the tool results, read off renders with marker tools, calls and results.

Supported is the layout of Qwen 2.5 / Qwen 3 / Hermes templates (and the bundled SmolLM2 tools template): the
definitions inside the system turn, one JSON object each (``tool | tojson``); calls written in the assistant
turn after its content, each as text, the function's name, text, its arguments as JSON, text; tool results
written as turns of their own, or grouped into one turn per run of results. A template that writes tools
another way (Llama 3.1 into the first user turn, Mistral before the last one) is read as not supporting them.

Ollama hands its TEMPLATE the tools and calls as Go values, not as the request's JSON (v0.32.15
template/template.go ``convertToolsForTemplate``, ``convertMessagesForTemplate``): each tool is a struct
(``.Type``, ``.Function.Name``, ``.Function.Description``, ``.Function.Parameters`` with ``.Type``,
``.Required`` and ``.Properties``, a map of ``.Type``, ``.Items``, ``.Description``, ``.Enum``...), the call
arguments a map. Its own ``json`` function writes compact JSON, so the TEMPLATE writes the JSON itself, the
way Python's ``json.dumps`` does (", " and ": " between items, non-ASCII kept): fields in a fixed order (type,
function: name, description, parameters: type, properties, required; a property's type, items, description,
enum), maps in key order (Go ranges a map sorted), strings quoted with Go's ``%q`` (the same as JSON but for
control characters other than newline, tab and carriage return, and characters Go does not count as printable,
such as a no-break space). What no TEMPLATE can reproduce is named by the parity check: fields Ollama does not
keep (``additionalProperties``, ``default``), another order of fields or of properties.

Ollama returns a call as ``tool_calls`` only when its parser finds the call's opening tag, which it reads off
the TEMPLATE: the first text inside the first ``{{ if .ToolCalls }}`` (v0.32.15 tools/template.go ``parseTag``).
The TEMPLATE is written so that this text is the call's opening, and the parity check asks Ollama's own rule
(modelled in go/render_template.go) which tag it finds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from packager.errors import StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.modelfile import go_printable, go_string_constant


def _tool(name: str, argument: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"pkgdesc{name}", "parameters": {
        "type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]}}}


_TOOLS = [_tool("pkgtoolone", "pkgpropone"), _tool("pkgtooltwo", "pkgproptwo")]
_CALLS = [{"type": "function", "function": {"name": "pkgcallone", "arguments": {"pkgargone": 1}}},
          {"type": "function", "function": {"name": "pkgcalltwo", "arguments": {"pkgargtwo": 2}}}]
_S, _U, _U2, _A, _R1, _R2 = "pkgsystemtext", "pkgusertext", "pkgusertwo", "pkgassistanttext", "pkgresultone", \
    "pkgresulttwo"


def tojson(value) -> str:
    """What transformers' ``tojson`` writes by default: ``json.dumps`` with non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class ToolFormat:
    """The text around each part of function calling, as the template writes it."""

    system_open: str  # the system turn's opening, when tools are given
    head_with_system: str  # after the system content, before the first tool
    head_without_system: str  # the system turn's content and text before the first tool, with no system message
    tool_open: str
    tool_close: str
    tail: str  # after the last tool: the rest of the system turn
    content_close: str  # after the assistant's content, before its calls
    call_open: str  # before each call's function name
    call_mid: str  # between the name and the arguments
    call_close: str
    call_separator: str
    group_open: str  # before a run of tool results
    result_open: str
    result_close: str
    group_close: str


def cut_at_marks(rendered: str, marks: list[str]) -> list[str] | None:
    """The text between the marker contents, in order: len(marks) + 1 pieces; None where a marker is not written
    exactly once."""
    pieces, rest = [], rendered
    for mark in marks:
        if rest.count(mark) != 1:
            return None
        before, rest = rest.split(mark)
        pieces.append(before)
    return pieces + [rest]


def _cut(rendered: str, marks: list[str]) -> list[str]:
    pieces = cut_at_marks(rendered, marks)
    if pieces is None:
        raise _unsupported("it does not write each marker exactly once")
    return pieces


def _unsupported(why: str) -> StageError:
    return StageError("ollama template", f"packager cannot write this template's function calling as an Ollama "
                                         f"TEMPLATE: {why}")


def common_suffix(a: str, b: str) -> str:
    """The longest text both ``a`` and ``b`` end with."""
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]


def _strip(text: str, head: str = "", tail: str = "", *, what: str) -> str:
    if not (text.startswith(head) and text.endswith(tail)) or len(text) < len(head) + len(tail):
        raise _unsupported(what)
    return text[len(head): len(text) - len(tail)]


def _marker_renders(template: ChatTemplate, start: str) -> dict[str, list[str]] | None:
    """The template's renders of marker conversations with tools, cut at the markers; None where tools change
    nothing."""
    def render(messages: list[dict], tools: list[dict] | None) -> str:
        rendered = template.render(messages, add_generation_prompt=True, tools=tools)
        return _strip(rendered, start, what="conversations with tools do not start as those without")

    user = {"role": "user", "content": _U}
    system = [{"role": "system", "content": _S}, user]
    names = [c["function"]["name"] for c in _CALLS]
    arguments = [tojson(c["function"]["arguments"]) for c in _CALLS]
    asked = {"role": "assistant", "content": _A, "tool_calls": _CALLS}
    after = [user, asked, {"role": "user", "content": _U2}]
    answered = [user, {**asked, "content": "", "tool_calls": _CALLS[:1]}, {"role": "tool", "content": _R1},
                {"role": "tool", "content": _R2}, {"role": "assistant", "content": _A}]
    try:
        if render(system, _TOOLS[:1]) == render(system, None):
            return None
        return {
            "with_system": _cut(render(system, _TOOLS), [_S, tojson(_TOOLS[0]), tojson(_TOOLS[1]), _U]),
            "one_tool": _cut(render(system, _TOOLS[:1]), [_S, tojson(_TOOLS[0]), _U]),
            "without_system": _cut(render([user], _TOOLS), [tojson(_TOOLS[0]), tojson(_TOOLS[1]), _U]),
            "calls": _cut(render(after, _TOOLS[:1]), [_U, _A, names[0], arguments[0], names[1], arguments[1], _U2]),
            "calls_only": _cut(render([user, {**asked, "content": ""}, after[2]], _TOOLS[:1]),
                               [_U, names[0], arguments[0], names[1], arguments[1], _U2]),
            "results": _cut(render(answered, _TOOLS[:1]), [_U, names[0], arguments[0], _R1, _R2, _A])}
    except StageError:
        raise
    except Exception as exc:  # noqa: BLE001 - jinja2 errors, raise_exception() in the template
        raise _unsupported(f"rendering a conversation with tools failed: {exc}") from None


def infer_tool_format(template: ChatTemplate, *, start: str, prefix: dict[str, str],
                      suffix: dict[str, str]) -> ToolFormat | None:
    """The template's function-calling layout, given its turn structure (``start``: the text every render
    begins with); None where the template ignores tools.

    Raises:
        StageError: it writes tools, in a layout an Ollama TEMPLATE here cannot follow.
    """
    renders = _marker_renders(template, start)
    if renders is None:
        return None
    with_system, one_tool, without_system = renders["with_system"], renders["one_tool"], renders["without_system"]
    calls, calls_only, results = renders["calls"], renders["calls_only"], renders["results"]
    head, between, last, _ = with_system[1:]
    tool_open = common_suffix(head, between)
    tool_close = between[: len(between) - len(tool_open)]
    head_with = head[: len(head) - len(tool_open)]
    tail = _strip(last, tool_close, prefix["user"], what="the system turn with tools does not end before the user "
                                                         "turn")
    if one_tool[1:3] != [head, last] or without_system[1:3] != [between, last]:
        raise _unsupported("the tool definitions are not written one after another in the system turn")
    system_open = with_system[0]
    head_without = _strip(without_system[0], tail=tool_open, what="the tools are not written the same way without "
                                                                    "a system message")
    # calls: [.., user suffix + assistant prefix, content, content close + call open, name, mid, arguments, ...]
    opening = suffix["user"] + prefix["assistant"]
    call_open = _strip(calls_only[1], opening, what="a turn of calls does not start as an assistant turn")
    content_close = _strip(calls[2], tail=call_open, what="the calls do not follow the content")
    call_close = _strip(calls[6], tail=suffix["assistant"] + prefix["user"],
                        what="a turn of calls does not end as an assistant turn")
    call_separator = _strip(calls[4], call_close, call_open, what="calls are not written one after another")
    if calls[1] != opening or calls[3] != calls[5] or calls_only[2:6] != calls[3:7]:
        raise _unsupported("calls are not written the same way each time")
    call_mid = calls[3]
    # results: [.., call close + assistant suffix + group open + result open, result, between, result, ...]
    first = _strip(results[3], call_close + suffix["assistant"], what="tool results do not follow the calls' turn")
    result_open = common_suffix(first, results[4])
    group_open, result_close = first[: len(first) - len(result_open)], results[4][: len(results[4]) - len(result_open)]
    group_close = _strip(results[5], result_close, prefix["assistant"],
                         what="tool results are not followed by an assistant turn")
    return ToolFormat(system_open, head_with, head_without, tool_open, tool_close, tail, content_close, call_open,
                      call_mid, call_close, call_separator, group_open, result_open, result_close, group_close)


# Python's json.dumps in Go text/template, for the Go values Ollama hands its TEMPLATE: a string quoted, a map
# (its keys sorted, as Go ranges a map) and a list item by item, anything else (numbers, booleans, null) as Go's
# JSON writes it (1000000 for a number, never 1e+06).
_GO_DEFINITIONS = [
    '{{- define "pkg-json" }}{{ $t := printf "%T" . }}{{ if eq $t "string" }}{{ printf "%q" . }}'
    '{{ else if eq $t "map[string]interface {}" }}{{ template "pkg-object" . }}'
    '{{ else if or (eq $t "[]interface {}") (eq $t "[]string") }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}'
    '{{ template "pkg-json" $v }}{{ end }}]{{ else }}{{ json . }}{{ end }}{{ end }}',
    '{{- define "pkg-object" }}{{ "{" }}{{ $first := true }}{{ range $k, $v := . }}{{ if not $first }}, {{ end }}'
    '{{ $first = false }}{{ printf "%q" $k }}: {{ template "pkg-json" $v }}{{ end }}{{ "}" }}{{ end }}',
    '{{- define "pkg-property" }}{{ "{" }}{{ $sep := "" }}{{ with .Type }}"type": {{ if eq (len .) 1 }}'
    '{{ printf "%q" (index . 0) }}{{ else }}[{{ range $i, $t := . }}{{ if $i }}, {{ end }}{{ printf "%q" $t }}'
    '{{ end }}]{{ end }}{{ $sep = ", " }}{{ end }}{{ with .Items }}{{ $sep }}"items": {{ template "pkg-json" . }}'
    '{{ $sep = ", " }}{{ end }}{{ with .Description }}{{ $sep }}"description": {{ printf "%q" . }}{{ $sep = ", " }}'
    '{{ end }}{{ with .Enum }}{{ $sep }}"enum": {{ template "pkg-json" . }}{{ end }}{{ "}" }}{{ end }}',
    '{{- define "pkg-tool" }}{"type": {{ printf "%q" .Type }}, "function": {"name": {{ printf "%q" .Function.Name }}'
    '{{ with .Function.Description }}, "description": {{ printf "%q" . }}{{ end }}, "parameters": '
    '{"type": {{ printf "%q" .Function.Parameters.Type }}, "properties": {{ "{" }}{{ $first := true }}'
    '{{ range $k, $v := .Function.Parameters.Properties }}{{ if not $first }}, {{ end }}{{ $first = false }}'
    '{{ printf "%q" $k }}: {{ template "pkg-property" $v }}{{ end }}{{ "}" }}{{ with .Function.Parameters.Required }}'
    ', "required": {{ template "pkg-json" . }}{{ end }}{{ "}}}" }}{{ end }}',
]


def go_text(text: str) -> str:
    """Literal text inside one line of the TEMPLATE: raw where Go reads it back as written, else a string
    constant. Raw text matters where Ollama looks for it (the call's opening tag is a text node)."""
    raw = ("{{" not in text and "}}" not in text and not text.endswith("{") and not text.startswith("}")
           and all(go_printable(c) or c in "\n\t" for c in text))
    return text if raw else "{{ " + go_string_constant(text) + " }}"


@dataclass(frozen=True)
class GoTools:
    """The TEMPLATE's function-calling parts, for :meth:`packager.serve.chat_format.ChatFormat.go_template`."""

    definitions: list[str]  # lines that define the JSON writers, before everything else
    system: str  # the system turn with the tools, when a request has them (a line)
    assistant_calls: str  # after the assistant's content: its calls
    tool_result: str  # the body of the branch for a message of role tool


def go_tools(tf: ToolFormat) -> GoTools:
    system = ('{{- if .Tools }}{{ if and .Messages (eq (index .Messages 0).Role "system") }}' + go_text(tf.system_open)
              + "{{ (index .Messages 0).Content }}" + go_text(tf.head_with_system) + "{{ else }}"
              + go_text(tf.head_without_system) + "{{ end }}{{ range .Tools }}" + go_text(tf.tool_open)
              + '{{ template "pkg-tool" . }}' + go_text(tf.tool_close) + "{{ end }}" + go_text(tf.tail) + "{{ end }}")
    # The first text inside the first {{ if .ToolCalls }} must be the call's opening: Ollama's parser reads its
    # tag there, and stops at an if or a range before it (tools/template.go findTextNode).
    calls = ("{{ if and $m.Content $m.ToolCalls }}" + go_text(tf.content_close) + "{{ end }}"
             "{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}" + go_text(tf.call_open) + "{{ .Function.Name }}"
             + go_text(tf.call_mid) + '{{ template "pkg-object" .Function.Arguments }}' + go_text(tf.call_close)
             + "{{ if gt (len (slice $m.ToolCalls $j)) 1 }}" + go_text(tf.call_separator) + "{{ end }}{{ end }}"
             "{{ end }}")
    result = ('{{ if ne $prev "tool" }}' + go_text(tf.group_open) + "{{ end }}" + go_text(tf.result_open)
              + "{{ .Content }}" + go_text(tf.result_close)
              + '{{ if or $last (ne (index (slice $.Messages $i) 1).Role "tool") }}' + go_text(tf.group_close)
              + "{{ end }}")
    return GoTools(_GO_DEFINITIONS, system, calls, result)
