"""Function-calling conversations: data check validates tools, calls and results with file:line:field errors;
the published templates that render tools (Qwen 2.5, Qwen 3, Llama 3.1, Mistral Nemo) train on the
assistant's calls as each writes them, never on tool results; a template that cannot render tools is refused."""

from __future__ import annotations

import json

import pytest

from packager.stages.data.check import check_dataset
from packager.stages.data.masks import tokenize_with_assistant_mask
from packager.stages.data.rows import read_rows

from support.families import FAMILIES, TOOL_FAMILIES, family_tokenizer

CREATE_TICKET = {"type": "function", "function": {
    "name": "create_ticket", "description": "File a support ticket.",
    "parameters": {"type": "object", "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account"]},
        "priority": {"type": "string", "enum": ["low", "high"]},
        "summary": {"type": "string"}},
        "required": ["category", "priority", "summary"], "additionalProperties": False}}}
ARGUMENTS = {"category": "billing", "priority": "high", "summary": "charged twice"}


def calling(arguments=None, *, call_id: str = "call00001", content: str = "") -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": "create_ticket", "arguments": ARGUMENTS if arguments is None else arguments}}]}


CONVERSATION = [
    {"role": "user", "content": "My invoice was charged twice."},
    calling(),
    {"role": "tool", "tool_call_id": "call00001", "content": '{"ticket": "T-1042"}'},
    {"role": "assistant", "content": "I filed ticket T-1042 for the double charge."},
]


def write_rows(tmp_path, rows: list[dict]):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def problems_by_line(tmp_path, rows, **kwargs) -> dict[tuple[int, str], str]:
    """Each (line, field)'s problems, one message per line of text."""
    _, problems = read_rows(write_rows(tmp_path, rows), **kwargs)
    found: dict[tuple[int, str], str] = {}
    for p in problems:
        found[(p.line, p.field)] = "\n".join(filter(None, [found.get((p.line, p.field)), p.message]))
    return found


def test_a_function_calling_row_is_read_with_arguments_as_an_object(tmp_path):
    as_openai_sends = [CONVERSATION[0], calling(json.dumps(ARGUMENTS)), *CONVERSATION[2:]]
    rows, problems = read_rows(write_rows(tmp_path, [{"messages": as_openai_sends, "tools": [CREATE_TICKET]}]))
    assert problems == []
    (row,) = rows
    assert row.tools == [CREATE_TICKET]
    assert row.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "create_ticket", "arguments": ARGUMENTS}, "id": "call00001"}]}
    assert row.messages[2] == {"role": "tool", "content": '{"ticket": "T-1042"}', "tool_call_id": "call00001"}


def test_every_wrong_call_and_result_is_named_at_its_line_and_field(tmp_path):
    tools = {"tools": [CREATE_TICKET]}
    user, answer = CONVERSATION[0], CONVERSATION[3]
    result = CONVERSATION[2]
    rows = [
        {"messages": CONVERSATION, **tools},                                                        # 1 fine
        {"messages": [user, calling({**ARGUMENTS, "priority": "urgent"}), result, answer], **tools},  # 2 enum
        {"messages": [user, calling({"category": "bug"}), result, answer], **tools},                # 3 required
        {"messages": [user, calling('{"category": '), result, answer], **tools},                   # 4 bad JSON
        {"messages": CONVERSATION},                                                                 # 5 undeclared
        {"messages": [user, calling(), {**result, "tool_call_id": "call99999"}, answer], **tools},  # 6 wrong id
        {"messages": [user, calling(), {"role": "user", "content": "and?"}, answer], **tools},      # 7 unanswered
        {"messages": [user, {"role": "tool", "content": "x"}, answer], **tools},                    # 8 stray tool
        {"messages": [user, {"role": "assistant", "content": ""}], **tools},                        # 9 empty answer
        {"messages": CONVERSATION, "tools": [{"type": "function", "function": {                    # 10 bad schema
            "name": "create_ticket", "parameters": {"type": "objekt"}}}]},
        {"messages": [user, calling(), result, result, answer], **tools},                           # 11 two results
    ]
    found = problems_by_line(tmp_path, rows)
    assert not [k for k in found if k[0] == 1]
    assert "'urgent' is not one of ['low', 'high'] (the schema of 'create_ticket')" in \
        found[(2, "messages[1].tool_calls[0].function.arguments.priority")]
    assert "'priority' is a required property" in found[(3, "messages[1].tool_calls[0].function.arguments")]
    assert "JSON text that does not parse" in found[(4, "messages[1].tool_calls[0].function.arguments")]
    assert "calls 'create_ticket', which is not a declared tool (none are declared" in \
        found[(5, "messages[1].tool_calls[0].function.name")]
    assert "'call99999' answers none of the calls of messages[1] still open ('call00001')" in \
        found[(6, "messages[2].tool_call_id")]
    assert "call(s) to create_ticket get no tool message before messages[2]" in found[(7, "messages[1].tool_calls")]
    assert "user turn right after an assistant turn with tool_calls" in found[(7, "messages[2].role")]
    assert "a tool message that answers no call" in found[(8, "messages[1].role")]
    assert found[(9, "messages[1].content")] == "empty content"
    assert "not a valid JSON schema" in found[(10, "tools[0].function.parameters")]
    assert "a tool message that answers no call" in found[(11, "messages[3].role")]


def test_a_conversation_may_end_with_the_call_itself(tmp_path):
    """The call is what the model learns to make: a row may stop there, its result unknown."""
    assert problems_by_line(tmp_path, [{"messages": CONVERSATION[:2], "tools": [CREATE_TICKET]}]) == {}


def test_the_datasets_tools_serve_rows_that_declare_none(tmp_path):
    from packager.errors import InputFileError
    from packager.stages.data.tools import read_tools_file

    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([CREATE_TICKET]))
    rows, problems = read_rows(write_rows(tmp_path, [{"messages": CONVERSATION}]), tools=read_tools_file(tools_file))
    assert problems == [] and rows[0].tools == [CREATE_TICKET]

    tools_file.write_text(json.dumps([{"type": "function", "function": {"description": "nameless"}}]))
    with pytest.raises(InputFileError, match=r"tools.json: \[0\].function.name: a tool needs a name"):
        read_tools_file(tools_file)


@pytest.mark.parametrize("family", TOOL_FAMILIES, ids=[f.name for f in TOOL_FAMILIES])
def test_the_mask_is_the_assistants_calls_and_answers_never_the_tool_results(family):
    tokenizer = family_tokenizer(family)
    encoded = tokenize_with_assistant_mask(tokenizer, CONVERSATION, [CREATE_TICKET])
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=[CREATE_TICKET], tokenize=False)
    assert encoded["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    learned = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    arguments = json.dumps(ARGUMENTS)
    call = {"qwen3": f'<tool_call>\n{{"name": "create_ticket", "arguments": {arguments}}}\n</tool_call>',
            "qwen2.5": f'<tool_call>\n{{"name": "create_ticket", "arguments": {arguments}}}\n</tool_call>',
            "llama3.1": f'{{"name": "create_ticket", "parameters": {arguments}}}',
            "mistral-nemo": f'[TOOL_CALLS][{{"name": "create_ticket", "arguments": {arguments}, '
                            f'"id": "call00001"}}]'}[family.name]
    assert learned == call + family.end_of_turn + CONVERSATION[3]["content"] + family.end_of_turn
    assert "T-1042\"}" not in learned.replace(CONVERSATION[3]["content"], "")


def test_a_call_with_words_before_it_learns_both(tmp_path):
    qwen25 = next(f for f in TOOL_FAMILIES if f.name == "qwen2.5")
    tokenizer = family_tokenizer(qwen25)
    messages = [CONVERSATION[0], calling(content="Filing it now."), *CONVERSATION[2:]]
    encoded = tokenize_with_assistant_mask(tokenizer, messages, [CREATE_TICKET])
    learned = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert learned.startswith("Filing it now.\n<tool_call>\n") and "T-1042\"}" not in learned.split("</tool_call>")[0]


def test_data_check_refuses_tool_rows_for_a_template_that_cannot_render_tools(tmp_path):
    chatml = FAMILIES[0]
    path = write_rows(tmp_path, [{"messages": CONVERSATION, "tools": [CREATE_TICKET]},
                                 {"messages": CONVERSATION[:1] + CONVERSATION[3:]}])
    report = check_dataset(path, max_seq_length=4096, tokenizer=family_tokenizer(chatml))
    (refused,) = [p for p in report.errors if p.field == "tools"]
    assert refused.line == 1
    assert "the chat template of" in refused.message and "leaves out the declared tools and the assistant's tool " \
        "calls" in refused.message and "base.chat_template" in refused.message

    qwen25 = next(f for f in TOOL_FAMILIES if f.name == "qwen2.5")
    report = check_dataset(path, max_seq_length=4096, tokenizer=family_tokenizer(qwen25))
    assert report.errors == []
    assert '<tool_call>\n{"name": "create_ticket"' in report.sample and '"name": "create_ticket", "description"' \
        in report.sample, "the sample is rendered with the row's tools"


def test_llama31_refuses_two_calls_in_one_turn_at_data_check(tmp_path):
    llama31 = next(f for f in TOOL_FAMILIES if f.name == "llama3.1")
    two = calling()
    two["tool_calls"] = two["tool_calls"] * 2
    path = write_rows(tmp_path, [{"messages": [CONVERSATION[0], two, CONVERSATION[2], CONVERSATION[2],
                                               CONVERSATION[3]], "tools": [CREATE_TICKET]}])
    report = check_dataset(path, max_seq_length=4096, tokenizer=family_tokenizer(llama31))
    assert any("only supports single tool-calls at once" in p.message for p in report.errors), report.errors
