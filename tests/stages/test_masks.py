"""Loss masks from spans of the rendered conversation, on the published templates of the families users bring:
training learns from each assistant turn's text and the token that closes it, and from nothing else, also
where the rendering is not prefix-stable (Qwen 3, Mistral, Phi-3)."""

from __future__ import annotations

import pytest

from packager.errors import StageError
from packager.stages.data.masks import tokenize_with_assistant_mask

from support.families import FAMILIES, family_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Classify the support ticket."},
    {"role": "user", "content": "My invoice was charged twice."},
    {"role": "assistant", "content": '{"category": "billing"}'},
    {"role": "user", "content": "The app crashes on Android."},
    {"role": "assistant", "content": '{"category": "bug"}'},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


def learned_text(tokenizer, messages) -> str:
    encoded = tokenize_with_assistant_mask(tokenizer, messages)
    assert encoded["input_ids"] == list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    return tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_the_mask_is_exactly_the_assistant_turns_and_their_end_of_turn_token(family):
    tokenizer = family_tokenizer(family)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert learned_text(tokenizer, CONVERSATION) == "".join(a + family.end_of_turn for a in answers)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.name in ("llama3", "gemma3")], ids=["llama3", "gemma3"])
def test_templates_that_trim_content_are_followed(family):
    """Padded content is trimmed by these templates: the markers no longer rebuild the text, and each turn is
    found by search, trimmed."""
    padded = [{**m, "content": f"  {m['content']}\n"} if m["role"] != "system" else m for m in CONVERSATION]
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert learned_text(family_tokenizer(family), padded) == "".join(a + family.end_of_turn for a in answers)


def test_a_template_with_generation_markers_is_masked_by_its_own_markers():
    chatml = FAMILIES[0]
    marked = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
              "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
              "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
              "{% endfor %}")
    assert learned_text(family_tokenizer(chatml, chat_template=marked), CONVERSATION) == \
        '{"category": "billing"}<|im_end|>{"category": "bug"}<|im_end|>The capital of France is Paris.<|im_end|>'


def test_an_answer_the_template_rewrites_beyond_recognition_is_refused():
    chatml = FAMILIES[0]
    upper = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | upper"
             " + '<|im_end|>\n' }}{% endfor %}")
    with pytest.raises(StageError, match="assistant turn 3 is not in the conversation as the chat template renders"):
        tokenize_with_assistant_mask(family_tokenizer(chatml, chat_template=upper), CONVERSATION)


def test_data_check_names_the_row_whose_answer_cannot_be_found(tmp_path):
    import json

    from packager.stages.data.check import check_dataset

    chatml = FAMILIES[0]
    upper = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | upper"
             " + '<|im_end|>\n' }}{% endfor %}")
    data = tmp_path / "rows.jsonl"
    rows = [[{"role": "user", "content": f"Ticket {n}: my invoice was charged twice."},
             {"role": "assistant", "content": f'{{"category": "billing", "n": {n}}}'}] for n in range(3)]
    data.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in rows))
    report = check_dataset(data, max_seq_length=512, tokenizer=family_tokenizer(chatml, chat_template=upper))
    unfound = [p for p in report.problems if p.field == "messages"]
    assert [p.line for p in unfound] == [1, 2, 3]
    assert "assistant turn 2 is not in the conversation as the chat template renders it" in unfound[0].message
