"""The Ollama TEMPLATE writes function calling as the Jinja chat template does: tool definitions, calls and tool
results, checked with Ollama's template execution (go/render_template.go over Go's text/template) against
transformers' rendering with ``tools=``; and Ollama's parser finds the calls' tag in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packager.errors import StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.chat_format import infer_chat_format
from packager.serve.go_template import go_available, ollama_tool_call_tag
from packager.serve.tool_parity import TOOL_PARITY_CONVERSATIONS, check_tool_parity, run_tool_conversations

from support.families import TOOL_FAMILIES

pytestmark = pytest.mark.skipif(not go_available(), reason="go is not installed (apt install golang-go)")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMOLLM2_TOOLS = (EXAMPLES / "chat_templates" / "smollm2-tools.jinja").read_text()
QWEN25 = next(f for f in TOOL_FAMILIES if f.name == "qwen2.5")
TOOLS = json.loads((EXAMPLES / "data" / "tickets_tools.json").read_text())


def chat(source: str) -> ChatTemplate:
    return ChatTemplate(source, "<|im_start|>", "<|im_end|>", {})


def example_split(tmp_path: Path, tools: list[dict] = TOOLS, rows: int = 5) -> Path:
    lines = (EXAMPLES / "data" / "tickets_tools.jsonl").read_text().splitlines()[:rows]
    split = tmp_path / "train.jsonl"
    split.write_text("".join(json.dumps({**json.loads(line), "tools": tools}) + "\n" for line in lines))
    return split


@pytest.mark.parametrize("source", [SMOLLM2_TOOLS, QWEN25.chat_template()], ids=["smollm2-tools", "qwen2.5"])
def test_the_inferred_template_writes_tools_calls_and_results_as_jinja_does(source, tmp_path):
    template = chat(source)
    fmt = infer_chat_format(template)
    assert fmt.tools is not None and fmt.tools_refused is None
    own = run_tool_conversations(example_split(tmp_path))
    assert len(own) == 3 and own[0][0][-1]["role"] == "tool", "the run's rows end before the answer"
    result = check_tool_parity(template, fmt.go_template(), own=own)
    assert result == {"tool_conversations": len(TOOL_PARITY_CONVERSATIONS) + 3, "run_tool_rows": 3,
                      "tool_call_tag": "<tool_call>", "call_format": "hermes"}


def test_what_the_conversations_exercise():
    """Each part of the layout appears: with and without a system message, content beside calls, two calls in a
    turn, two results in a row, a conversation ending on a result, arguments of every JSON type."""
    shapes = [[m["role"] for m in messages] for messages, _ in TOOL_PARITY_CONVERSATIONS]
    assert ["user"] in shapes and ["system", "user"] in shapes and ["user", "assistant", "tool", "tool"] in shapes
    calls = [m for messages, _ in TOOL_PARITY_CONVERSATIONS for m in messages if m.get("tool_calls")]
    assert any(m["content"] and len(m["tool_calls"]) == 2 for m in calls)
    values = json.dumps([c["function"]["arguments"] for m in calls for c in m["tool_calls"]])
    assert all(text in values for text in ("null", "true", "2.5", "1000000", "{}", '\\"', "Z\\u00fcrich"))


def test_a_difference_in_the_json_is_found_and_shown():
    template = chat(SMOLLM2_TOOLS)
    go = infer_chat_format(template).go_template()
    compact = go.replace('{{ if not $first }}, {{ end }}', '{{ if not $first }},{{ end }}')
    assert compact != go
    with pytest.raises(StageError, match=r"renders conversation \d with tools differently .*Jinja has"):
        check_tool_parity(template, compact)


def test_a_tag_hidden_behind_an_if_is_refused_as_calls_coming_back_as_text():
    """Ollama's parser gives up at an {{ if }} before the first text inside {{ if .ToolCalls }}: it would wait for
    "{" and return the model's <tool_call> as content. The render is the same; the tag check is what fails."""
    template = chat(SMOLLM2_TOOLS)
    go = infer_chat_format(template).go_template()
    hidden = go.replace("{{ if .ToolCalls }}", "{{ if .ToolCalls }}{{ if $m.Content }}{{ end }}")
    assert hidden != go and ollama_tool_call_tag(hidden) == "{"
    with pytest.raises(StageError, match="would wait for '{' before a call, and the model writes '<tool_call>'"):
        check_tool_parity(template, hidden)


# (template, the tag Ollama reads off it): the cases of Ollama's tools/template_test.go TestParseTag (v0.33.0-rc2)
PARSE_TAG_CASES = [
    ("", "{"),
    ("{{if .ToolCalls}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "{"),
    ("{{if .ToolCalls}} {{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ('{{if .ToolCalls}}{{range .ToolCalls}}\r\n{"name": "{{ .Function.Name }}"}{{end}}{{end}}', "{"),
    ("{{- range .Messages }}{{- if .ToolCalls }}\n<tool_call>\n{{ range .ToolCalls }}{\"name\": "
     "\"{{ .Function.Name }}\"}{{ end }}\n</tool_call>{{ end }}{{ end }}", "<tool_call>"),
    ('{{ range .Messages }}{{ if .ToolCalls }}[TOOL_CALLS][{{ range .ToolCalls }}{"name": "{{ .Function.Name }}"}'
     "{{ end }}]{{ end }}{{ end }}", "[TOOL_CALLS]["),
    ("{{ range $m := .Messages }}{{ if $m.ToolCalls }}<x>{{ end }}{{ end }}", "{"),  # a variable, not a field
]


@pytest.mark.parametrize("template, tag", PARSE_TAG_CASES)
def test_ollamas_tag_rule(template, tag):
    assert ollama_tool_call_tag(template) == tag


def test_tools_the_run_writes_in_a_way_ollama_cannot_pass_on_are_named(tmp_path):
    """Ollama keeps only some fields of a tool (no additionalProperties) and hands properties over sorted: the
    run's own rows are checked as they are, and a difference names the row and what to change."""
    template = chat(SMOLLM2_TOOLS)
    go = infer_chat_format(template).go_template()
    parameters = TOOLS[0]["function"]["parameters"]
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"],
                                        "parameters": {**parameters, "additionalProperties": False}}}]
    with pytest.raises(StageError, match=r"the run's tool row 1 \(data/train.jsonl\).*additionalProperties") as err:
        check_tool_parity(template, go, own=run_tool_conversations(example_split(tmp_path, strict)))
    assert "properties in alphabetical order" in err.value.hint
    unsorted = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "parameters": {
        **parameters, "properties": dict(reversed(parameters["properties"].items()))}}}]
    with pytest.raises(StageError, match="the run's tool row 1"):
        check_tool_parity(template, go, own=run_tool_conversations(example_split(tmp_path, unsorted)))


@pytest.mark.parametrize("family", [f for f in TOOL_FAMILIES if f.name in ("llama3.1",)], ids=lambda f: f.name)
def test_a_tool_layout_a_template_cannot_follow_is_named_and_refused_for_a_tool_run(family, tmp_path):
    """Llama 3.1 writes the tools into the first user turn: its TEMPLATE is written without them (and says why),
    and a run that trains on tool rows is refused, pointing to containers.ollama.template."""
    from packager.config.serving import OllamaConfig
    from packager.serve.ollama import ollama_template

    fmt = infer_chat_format(ChatTemplate(family.chat_template(), family.bos, family.eos, {}, adds_bos=True))
    assert fmt.tools is None and "function calling" in fmt.tools_refused
    assert ".Tools" not in fmt.go_template()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "chat_template.jinja").write_text(family.chat_template())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": family.bos, "eos_token": family.eos,
                                                                 "add_bos_token": True}))
    (model_dir / "tokenizer.json").write_text(json.dumps({"added_tokens": []}))
    with pytest.raises(StageError, match="trains on function calling") as err:
        ollama_template(model_dir, OllamaConfig(), tool_rows=run_tool_conversations(example_split(tmp_path)))
    assert "containers.ollama.template" in err.value.hint
