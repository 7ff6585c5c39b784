"""Tool-call formats: each published template's calls are read back by packager's parser for that format and by
vLLM 0.33's own parser class of the name packager gives vLLM (run in the vLLM venv), to the same calls."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from packager.models.tool_calls import FORMATS, same_calls, tool_call_format
from packager.stages.data.masks import tokenize_with_assistant_mask

from support.families import FAMILIES, TEMPLATES, TOOL_FAMILIES, family_tokenizer

EXAMPLE_TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "chat_templates" / "smollm2-tools.jinja"
CREATE_TICKET = {"type": "function", "function": {
    "name": "create_ticket", "description": "File a support ticket.",
    "parameters": {"type": "object", "properties": {"category": {"type": "string"}, "priority": {"type": "string"},
                                                    "tags": {"type": "array", "items": {"type": "string"}}}}}}
ARGUMENTS = {"category": "billing", "priority": "high", "tags": ["invoice", "ünïcode"]}
CALLING = [{"role": "user", "content": "My invoice was charged twice."},
           {"role": "assistant", "content": "", "tool_calls": [
               {"id": "call00001", "type": "function",
                "function": {"name": "create_ticket", "arguments": ARGUMENTS}}]}]
EXPECTED = [{"name": "create_ticket", "arguments": ARGUMENTS}]
WRITES = {"qwen3": "hermes", "qwen2.5": "hermes", "llama3.1": "llama3_json", "mistral-nemo": "mistral"}

VLLM_TOOL_PARSE = """
import json, sys
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.tool_parsers import ToolParserManager

found = []
for case in json.load(sys.stdin):
    tokenizer = AutoTokenizer.from_pretrained(case["tokenizer"])
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=case["tools"])
    parser = ToolParserManager.get_tool_parser(case["parser"])(tokenizer, request.tools)
    got = parser.extract_tool_calls(case["output"], request)
    found.append({"called": got.tools_called, "calls": [
        {"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in got.tool_calls]})
print(json.dumps(found))
"""


def written_call(family) -> str:
    """The calling turn as the family's template writes it: what training teaches the model to output."""
    tokenizer = family_tokenizer(family)
    encoded = tokenize_with_assistant_mask(tokenizer, CALLING, [CREATE_TICKET])
    learned = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert learned.endswith(family.end_of_turn)
    return learned[: -len(family.end_of_turn)]


def test_each_template_names_its_call_format():
    for family in TOOL_FAMILIES:
        assert tool_call_format(family.chat_template()).name == WRITES[family.name], family.name
    assert tool_call_format(EXAMPLE_TEMPLATE.read_text()).name == "hermes"
    for family in FAMILIES:
        if family.name not in WRITES:
            assert tool_call_format(family.chat_template()) is None, family.name
    assert tool_call_format((TEMPLATES / "mistral-v0.3.jinja").read_text()) is None, "its tool branches are cut"


@pytest.mark.parametrize("family", TOOL_FAMILIES, ids=[f.name for f in TOOL_FAMILIES])
def test_packagers_parser_reads_back_what_the_template_writes(family):
    fmt = tool_call_format(family.chat_template())
    parsed = fmt.parse(written_call(family))
    assert parsed is not None and same_calls(parsed.calls, EXPECTED), parsed
    assert fmt.parse("I cannot file that ticket.") is None, "text is not a call"


def test_outputs_that_are_not_calls_or_do_not_parse_are_not_calls():
    hermes, llama, mistral = FORMATS["hermes"], FORMATS["llama3_json"], FORMATS["mistral"]
    assert hermes.parse('<tool_call>\n{"name": "create_ticket", "arguments": {"a": 1}}') is not None, \
        "an unclosed last call at the end of the output counts, as in vLLM's hermes parser"
    assert hermes.parse('<tool_call>\n{"name": "create_ticket", "argu') is None
    assert hermes.parse('Sure.<tool_call>{"name": "x", "arguments": {}}</tool_call>').content == "Sure."
    assert llama.parse('{"name": "x", "parameters": {"a": 1}}; {"name": "y", "arguments": {}}').calls == \
        [{"name": "x", "arguments": {"a": 1}}, {"name": "y", "arguments": {}}]
    assert mistral.parse('[TOOL_CALLS][{"name": "x"}]') is None, "a call without arguments"
    assert not same_calls([{"name": "create_ticket", "arguments": {**ARGUMENTS, "priority": "low"}}], EXPECTED)
    assert same_calls([{"name": "create_ticket", "arguments": json.dumps(dict(reversed(ARGUMENTS.items())))}],
                      EXPECTED), "arguments compare as JSON, key order aside"


def test_vllms_own_parser_of_that_name_reads_the_same_calls(tmp_path):
    """vLLM 0.33's tool parser classes (hermes, llama3_json, mistral), constructed as `vllm serve
    --tool-call-parser NAME` constructs them, on each family's tokenizer and the call its template writes."""
    from support.containers import vllm_python

    cases = []
    for family in TOOL_FAMILIES:
        directory = tmp_path / family.name
        family_tokenizer(family).save_pretrained(directory)
        cases.append({"tokenizer": str(directory), "tools": [CREATE_TICKET], "output": written_call(family),
                      "parser": tool_call_format(family.chat_template()).vllm_parser})
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(vllm_python()), "-c", VLLM_TOOL_PARSE], input=json.dumps(cases), capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for family, got in zip(TOOL_FAMILIES, found):
        assert got["called"] and same_calls(got["calls"], EXPECTED), (family.name, got)


def test_argument_accuracy_counts_each_argument_of_the_right_call():
    from packager.models.tool_calls import argument_score

    want = [{"name": "create_ticket", "arguments": {"category": "billing", "priority": "high", "summary": "x"}}]
    right = [{"name": "create_ticket", "arguments": '{"summary": "x", "priority": "high", "category": "billing"}'}]
    assert argument_score(right, want) == 1.0
    one_wrong = [{"name": "create_ticket", "arguments": {"category": "billing", "priority": "high", "summary": "y"}}]
    assert argument_score(one_wrong, want) == pytest.approx(2 / 3)
    assert argument_score([{"name": "close_ticket", "arguments": {"category": "billing"}}], want) == 0.0
    assert argument_score(None, want) == 0.0 and argument_score([], want) == 0.0
    assert argument_score(right + right, want) == pytest.approx(3 / 4), "a call too many counts as a field missed"
    no_arguments = [{"name": "list_tickets", "arguments": {}}]
    assert argument_score(no_arguments, no_arguments) == 1.0
    assert argument_score([{"name": "list_tickets", "arguments": {"all": True}}], no_arguments) == 0.0
    two = want + no_arguments
    assert argument_score(one_wrong, two) == pytest.approx(2 / 4), "the missing second call is a field missed"


def test_the_response_template_lets_transformers_read_calls_back():
    """transformers' own parse_response (what `transformers serve` returns tool_calls with) reads the calls the
    Qwen 2.5 template writes with the response_template packager gives the merged tokenizer; none for other
    formats."""
    from packager.models.tool_calls import response_template

    family = next(f for f in TOOL_FAMILIES if f.name == "qwen2.5")
    tokenizer = family_tokenizer(family)
    asked = [{"role": "user", "content": "File it."}]
    prompt = tokenizer.apply_chat_template(asked, add_generation_prompt=True, tokenize=False)
    schema = response_template(tokenizer.chat_template, ["<|im_end|>", "<|endoftext|>"], "<|im_start|>assistant\n")
    calls = [{"type": "function", "function": {"name": "create_ticket", "arguments": ARGUMENTS}},
             {"type": "function", "function": {"name": "list_tickets", "arguments": {}}}]
    written = tokenizer.apply_chat_template(asked + [{"role": "assistant", "content": "Sure.", "tool_calls": calls}],
                                            tokenize=False)[len(prompt):]
    parse = lambda text: tokenizer.parse_response(  # noqa: E731
        tokenizer(text, add_special_tokens=False)["input_ids"], schema,
        prefix=tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert parse(written) == {"role": "assistant", "content": "Sure.", "tool_calls": calls}
    assert parse("No call needed.<|im_end|>") == {"role": "assistant", "content": "No call needed."}
    llama = next(f for f in TOOL_FAMILIES if f.name == "llama3.1")
    assert response_template(llama.chat_template(), ["<|eot_id|>"], "<|start_header_id|>assistant") is None


def test_requests_carry_calls_as_openai_servers_validate_them():
    """Data may leave out call ids and give arguments as objects; a request names each call and answers it by id,
    as llama-cpp-python's own request types require (they refuse the data as it is)."""
    import pydantic
    from llama_cpp.llama_types import ChatCompletionRequestMessage

    from packager.models.tool_calls import openai_messages

    data = [{"role": "user", "content": "File it."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "create_ticket", "arguments": ARGUMENTS}},
                {"type": "function", "function": {"name": "list_tickets", "arguments": "{}"}}]},
            {"role": "tool", "content": "T-1"}, {"role": "tool", "content": "[]"}]
    request = pydantic.TypeAdapter(list[ChatCompletionRequestMessage])
    with pytest.raises(pydantic.ValidationError):
        request.validate_python(data)
    sent = request.validate_python(openai_messages(data))
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_0", "call_1"]
    assert [m["tool_call_id"] for m in sent[2:]] == ["call_0", "call_1"]
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == ARGUMENTS
