"""Ollama's template execution as packager models it (packager/serve/go/render_template.go, from Ollama v0.32.15's
template/template.go and server/prompt.go): what a TEMPLATE turns a chat request into, beyond plain Go
text/template. Each case is a behaviour read in Ollama's source that a plain text/template run gets wrong."""

from __future__ import annotations

import pytest

from packager.errors import StageError
from packager.serve.go_template import go_available, render_as_ollama
from packager.serve.parity import PARITY_CONVERSATIONS

pytestmark = pytest.mark.skipif(not go_available(), reason="go is not installed (apt install golang-go)")

TURNS = "{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"


def test_consecutive_messages_of_a_role_are_collated_and_every_system_message_is_dot_system():
    messages = [{"role": "system", "content": "s1"}, {"role": "user", "content": "a"},
                {"role": "user", "content": "b"}, {"role": "system", "content": "s2"},
                {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"}]
    assert render_as_ollama(TURNS + "|{{ .System }}", messages) == \
        "[system:s1][user:a\n\nb][system:s2][tool:t1][tool:t2]|s1\n\ns2"


def test_the_data_is_a_map_so_a_missing_field_prints_no_value():
    """Plain text/template on a struct fails on an unknown field; Ollama's map prints "<no value>"."""
    assert render_as_ollama(TURNS + "{{ .Prompt }}|{{ .Suffix }}", [{"role": "user", "content": "x"}]) == \
        "[user:x]<no value>|<no value>"


def test_a_template_without_messages_runs_once_per_exchange_and_the_last_is_cut_at_the_response():
    template = "{{ if .System }}<s>{{ .System }}</s>{{ end }}U:{{ .Prompt }} A:{{ .Response }}END\n"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "r1"}, {"role": "user", "content": "q2"}]
    assert render_as_ollama(template, messages) == "<s>S</s>U:q1 A:r1END\nU:q2 A:"


def test_a_template_naming_neither_messages_nor_response_gets_the_response_appended():
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "r1"},
                {"role": "user", "content": "q2"}]
    assert render_as_ollama("<{{ .Prompt }}>", messages) == "<q1>r1<q2>"


def test_its_functions_and_think_fields():
    date = TURNS + "{{ currentDate }} {{ yesterdayDate }}"
    assert render_as_ollama(date, [{"role": "user", "content": "x"}], date="2026-03-01") == \
        "[user:x]2026-03-01 2026-02-28"
    think = TURNS + "{{ .Think }}/{{ .ThinkLevel }}/{{ .IsThinkSet }}"
    user = [{"role": "user", "content": "x"}]
    assert render_as_ollama(think, user) == "[user:x]false//false"
    assert render_as_ollama(think, user, think=True) == "[user:x]true/medium/true"
    assert render_as_ollama(think, user, think="high") == "[user:x]true/high/true"
    assert render_as_ollama(think, user, think=False) == "[user:x]false//true"


def test_tools_are_there_for_the_template_as_ollama_gives_them():
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find a ticket.", "parameters": {
        "type": "object", "required": ["id"],
        "properties": {"id": {"type": "integer"}, "tags": {"type": ["array", "null"]}}}}}]
    template = ("{{ range .Tools }}{{ .Function.Name }}({{ range $k, $v := .Function.Parameters.Properties }}"
                "{{ $k }}: {{ toTypeScriptType $v }}; {{ end }}){{ end }}|{{ json (index .Tools 0).Function.Name }}"
                + TURNS)
    assert render_as_ollama(template, [{"role": "user", "content": "x"}], tools=tools) == \
        'lookup(id: number; tags: any[] | null; )|"lookup"[user:x]'
    assert render_as_ollama("{{ .Tools }}|{{ if .Tools }}yes{{ end }}" + TURNS, [{"role": "user", "content": "x"}]) \
        == "null|[user:x]"
    calls = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "lookup",
                                                                               "arguments": {"id": 7}}}]}]
    assert render_as_ollama("{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }} "
                            "{{ .Function.Arguments }}{{ end }}{{ end }}", calls) == 'lookup {"id":7}'


def test_the_last_exchange_runs_without_ollamas_functions_as_in_ollama():
    """Ollama executes the cut tree of a .Prompt-style template on a bare template, which has no functions."""
    with pytest.raises(StageError, match="fails in Ollama's template execution"):
        render_as_ollama("{{ json .Prompt }}", [{"role": "user", "content": "x"}])


def test_an_empty_system_message_is_skipped_where_the_template_skips_it():
    """Phi-3.5 writes no system turn for an empty system message, and the EOS it writes after a conversation
    without a generation prompt never reaches a served prompt: its TEMPLATE is inferred, and Go renders the
    parity set (an empty system message included) as Jinja does. Without the skip, the same set catches it."""
    import dataclasses

    from packager.errors import StageError
    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.ollama_parity import check_parity
    from packager.serve.go_template import go_available

    from support.families import TEMPLATES

    if not go_available():
        pytest.skip("no Go toolchain (make system-tools installs it)")
    phi = ChatTemplate((TEMPLATES / "phi3.5.jinja").read_text(), "<s>", "<|endoftext|>", {}, adds_bos=True)
    fmt = infer_chat_format(phi)
    assert fmt.skip_empty_system and fmt.suffix["assistant"] == "<|end|>\n"
    assert check_parity(phi, fmt, use_go=True)["conversations"] == len(PARITY_CONVERSATIONS)
    with pytest.raises(StageError, match="conversation 5 renders differently"):
        check_parity(phi, dataclasses.replace(fmt, skip_empty_system=False), use_go=True)


def test_repeated_roles_are_compared_as_ollama_collates_them():
    """Ollama joins consecutive messages of one role with a blank line before its TEMPLATE runs: the Go rendering
    of two user messages equals Jinja's rendering of one user message holding both, and never Jinja's two turns."""
    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.parity import jinja_prompt, ollama_collated

    from support.models import CHATML_TEMPLATE

    chatml = ChatTemplate(CHATML_TEMPLATE, "<|endoftext|>", "<|im_end|>", {})
    twice = [{"role": "system", "content": "A."}, {"role": "system", "content": "B."},
             {"role": "user", "content": "One."}, {"role": "user", "content": "Two."}]
    assert ollama_collated(twice) == [{"role": "system", "content": "A.\n\nB."},
                                      {"role": "user", "content": "One.\n\nTwo."}]
    go = render_as_ollama(infer_chat_format(chatml).go_template(), twice)
    assert go == jinja_prompt(chatml, ollama_collated(twice)) != jinja_prompt(chatml, twice)


def test_trimmed_content_is_named_as_a_caveat_and_untrimmed_content_is_still_compared():
    """Gemma 3 trims user and assistant content (``| trim``), which no Go template can: the parity check compares
    the padded conversation as trimmed content and names the difference. A ChatML template trims nothing, so its
    padded conversation is compared as sent, padding and all, and a TEMPLATE that drops it is caught."""
    from packager.errors import StageError
    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.ollama_parity import check_parity
    from packager.serve.parity import trimmed_roles

    from support.models import CHATML_TEMPLATE

    from support.families import TEMPLATES

    gemma3 = ChatTemplate((TEMPLATES / "gemma3.jinja").read_text(), "<bos>", "<eos>", {}, adds_bos=True)
    assert trimmed_roles(gemma3) == ("user", "assistant")
    result = check_parity(gemma3, infer_chat_format(gemma3), use_go=True)
    assert result["trimmed_roles"] == ["user", "assistant"] and "user, assistant content" in result["caveat"]

    chatml = ChatTemplate(CHATML_TEMPLATE, "<|endoftext|>", "<|im_end|>", {})
    fmt = infer_chat_format(chatml)
    assert trimmed_roles(chatml) == () and check_parity(chatml, fmt, use_go=True)["caveat"] is None
    padded = [[{"role": "user", "content": " Padded?  "}]]
    with pytest.raises(StageError, match="renders conversation 1 differently"):
        check_parity(chatml, fmt, go_template=fmt.go_template().replace("{{ .Content }}", "{{ slice .Content 1 }}"),
                     conversations=padded, use_go=True)


# The date lines of Llama 3.1's template (meta-llama/Llama-3.1-8B-Instruct, tokenizer_config.json), its tool
# branches left out.
LLAMA31_DATES = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}{%- set date_string = \"26 Jul 2024\" %}"
    "{%- endif %}{%- endif %}{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def test_a_template_that_writes_todays_date_is_refused_naming_it():
    """transformers renders strftime_now with the real date, as training did; a TEMPLATE inferred from one
    rendering would have frozen that day into every later prompt. Rendered on two days, the date line shows."""
    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.parity import PARITY_DATE

    template = ChatTemplate(LLAMA31_DATES, "<|begin_of_text|>", "<|eot_id|>", {}, adds_bos=True)
    assert "Today Date: 31 Jan 2025" in template.render([{"role": "user", "content": "x"}],
                                                        add_generation_prompt=True, today=PARITY_DATE)
    with pytest.raises(StageError, match="it writes today's date into the prompt .*Ollama's currentDate"):
        infer_chat_format(template)


# Mistral Small 3's template (mistralai/Mistral-Small-24B-Instruct-2501, tokenizer_config.json), its default
# system prompt shortened: today's date, strftime_now("%Y-%m-%d"), in the system turn it adds when there is none.
MISTRAL_SMALL3_DATES = (
    "{%- set today = strftime_now(\"%Y-%m-%d\") %}"
    "{%- set default_system_message = \"You are Mistral Small 3.\\nThe current date is \" + today + \".\" %}"
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system_message = default_system_message %}"
    "{%- set loop_messages = messages %}{%- endif %}{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{{- '[INST]' + message['content'] + '[/INST]' }}{%- elif message['role'] == 'system' %}"
    "{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}{%- elif message['role'] == 'assistant' %}"
    "{{- message['content'] + eos_token }}{%- else %}"
    "{{- raise_exception('Only user, system and assistant roles are supported!') }}{%- endif %}{%- endfor %}")


def test_todays_iso_date_becomes_ollamas_current_date():
    """A template that writes today's date as YYYY-MM-DD gets a TEMPLATE with {{ currentDate }} there: Go renders
    the parity set as Jinja does on the parity day, and on any other day what Jinja renders on that day."""
    import datetime

    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.ollama_parity import check_parity

    template = ChatTemplate(MISTRAL_SMALL3_DATES, "<s>", "</s>", {}, adds_bos=True)
    fmt = infer_chat_format(template)
    go = fmt.go_template()
    assert go.count("{{ currentDate }}") == 1 and "2025" not in go
    assert check_parity(template, fmt, use_go=True)["conversations"] == len(PARITY_CONVERSATIONS)
    day, ask = datetime.date(2026, 12, 7), [{"role": "user", "content": "What day is it?"}]
    served = render_as_ollama(go, ask, date=day.isoformat())
    assert served == template.render(ask, add_generation_prompt=True, today=day)[len("<s>"):]
    assert "The current date is 2026-12-07." in served


def test_a_long_history_is_truncated_as_ollama_truncates_it():
    """Ollama drops the oldest messages until the prompt fits num_ctx, keeping the system messages among them and
    always the last message; what is left can start with an assistant turn, the shape the parity set renders."""
    from packager.serve.parity import PARITY_CONVERSATIONS, TRUNCATED, ollama_truncated

    history = [{"role": "system", "content": "You answer tickets."},
               {"role": "user", "content": "First question?"}, {"role": "assistant", "content": "First answer."},
               {"role": "user", "content": "Second question?"}, {"role": "assistant", "content": "Second answer."},
               {"role": "user", "content": "Third question?"}]
    budget = lambda kept: sum(len(m["content"]) for m in kept) <= 50  # noqa: E731
    assert ollama_truncated(history, budget) == PARITY_CONVERSATIONS[TRUNCATED - 1]
    assert ollama_truncated(history, lambda kept: True) == history
    assert ollama_truncated(history, lambda kept: False) == [history[0], history[-1]]


def test_a_truncated_history_renders_as_jinja_or_is_named_where_jinja_refuses_it():
    """After truncation the system message stands before an assistant turn. data.system_policy
    merge_into_first_user makes it a user turn of its own (turns keep alternating), and the TEMPLATE follows;
    Gemma 3's own template raises on a conversation that does not start with a user turn, which the parity
    result names as a caveat instead of a comparison."""
    from packager.models.chat_template import ChatTemplate
    from packager.models.system_policy import with_system_policy
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.ollama_parity import check_parity
    from packager.serve.parity import TRUNCATED

    from support.families import TEMPLATES

    gemma2 = ChatTemplate(with_system_policy((TEMPLATES / "gemma2.jinja").read_text(), "merge_into_first_user"),
                          "<bos>", "<eos>", {}, adds_bos=True)
    fmt = infer_chat_format(gemma2)
    assert fmt.system == "first_user" and fmt.lone_system_as_user
    assert check_parity(gemma2, fmt, use_go=True)["refused_by_jinja"] == []

    gemma3 = ChatTemplate((TEMPLATES / "gemma3.jinja").read_text(), "<bos>", "<eos>", {}, adds_bos=True)
    result = check_parity(gemma3, infer_chat_format(gemma3), use_go=True)
    assert result["refused_by_jinja"] == [TRUNCATED]
    assert f"refuses conversation {TRUNCATED} (a long history as Ollama truncates it" in result["caveat"]
    assert "roles must alternate" in result["caveat"]


# A constant preamble before every conversation, as GLM-4's templates write "[gMASK]<sop>" (the construct only;
# GLM-4.6's and GLM-4.7-Flash's published templates, in llama.cpp's models/templates, convert the same way)
PREAMBLE_TEMPLATE = ("[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_a_constant_preamble_is_written_once_before_every_conversation():
    """The preamble is not a BOS token and not part of any turn: the TEMPLATE writes it once at the start, and
    Go renders the parity set as Jinja does. Without it, the same set catches the difference."""
    import dataclasses

    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.ollama_parity import check_parity

    glm = ChatTemplate(PREAMBLE_TEMPLATE, "", "<|endoftext|>", {})
    fmt = infer_chat_format(glm)
    assert fmt.start == "[gMASK]<sop>" and fmt.prefix["user"] == "<|user|>\n" and fmt.prefix["system"] == "<|system|>\n"
    assert check_parity(glm, fmt, use_go=True)["conversations"] == len(PARITY_CONVERSATIONS)
    with pytest.raises(StageError, match="conversation 1 renders differently"):
        check_parity(glm, dataclasses.replace(fmt, start=""), use_go=True)
