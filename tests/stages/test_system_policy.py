"""data.system_policy: a chat template that raises on a system message (Gemma 2) or leaves it out is caught per
row by data check, and the chosen policy is one prelude in the template itself, so training, eval and every
serving template (vLLM and llama.cpp render the saved Jinja; the Ollama TEMPLATE is inferred from it and
checked with Go) do the same thing."""

from __future__ import annotations

import json

import pytest

from packager.errors import InputFileError, StageError
from packager.models.chat_template import ChatTemplate
from packager.models.system_policy import policy_of, system_refusal, with_system_policy
from packager.serve.chat_format import infer_chat_format
from packager.serve.ollama_parity import check_parity
from packager.stages.data.check import check_dataset

from support.families import FAMILIES, TEMPLATES, family_tokenizer

GEMMA2 = next(f for f in FAMILIES if f.name == "gemma2")
SYSTEM = "Answer with JSON only."
WITH_SYSTEM = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "My invoice is wrong."},
               {"role": "assistant", "content": '{"category": "billing"}'}]
WITHOUT_SYSTEM = WITH_SYSTEM[1:]


def write_rows(path, conversations):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def test_gemma2_as_published_raises_and_the_prelude_is_removed_cleanly():
    published = (TEMPLATES / "gemma2.jinja").read_text()
    assert policy_of(published) == "error"
    merged = with_system_policy(published, "merge_into_first_user")
    assert policy_of(merged) == "merge_into_first_user" and merged.endswith(published)
    assert with_system_policy(merged, "merge_into_first_user") == merged  # applied once, whoever asks again
    with pytest.raises(ValueError, match="already applies data.system_policy merge_into_first_user"):
        with_system_policy(merged, "drop")


def test_data_check_refuses_each_row_with_a_system_message_and_names_the_policy(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", [WITH_SYSTEM, WITHOUT_SYSTEM, WITH_SYSTEM[:1] + [
        {"role": "user", "content": "The app crashes."}, {"role": "assistant", "content": '{"category": "bug"}'}]])
    tokenizer = family_tokenizer(GEMMA2, chat_template=(TEMPLATES / "gemma2.jinja").read_text())
    report = check_dataset(data, tokenizer=tokenizer)
    refused = [e for e in report.errors if "system" in e.message]
    assert {(e.path, e.line, e.field) for e in refused} == {(str(data), 1, "messages[0]"),
                                                            (str(data), 3, "messages[0]")}
    assert all("raises on a system message (System role not supported)" in e.message for e in refused)
    assert all("data.system_policy to merge_into_first_user or drop" in e.message for e in refused)


def test_a_template_that_silently_leaves_the_system_message_out_is_reported_too():
    chatml = next(f for f in FAMILIES if f.name == "chatml")
    skipping = ("{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert system_refusal(family_tokenizer(chatml, chat_template=skipping)) == \
        "leaves the system message out of what it renders"
    assert system_refusal(family_tokenizer(chatml)) is None  # ChatML takes a system turn: no policy needed


def test_merge_into_first_user_renders_as_gemma3_folds_its_system_prompt(tmp_path):
    """Gemma 3's own template puts the system text and a blank line before the first user message; Gemma 2 with
    merge_into_first_user renders every conversation identically, and the mask still learns only the answers."""
    from packager.stages.data.masks import tokenize_with_assistant_mask

    merged = family_tokenizer(GEMMA2, chat_template=with_system_policy(
        (TEMPLATES / "gemma2.jinja").read_text(), "merge_into_first_user"))
    gemma3 = family_tokenizer(GEMMA2, chat_template=(TEMPLATES / "gemma3.jinja").read_text())
    for messages in (WITH_SYSTEM, WITHOUT_SYSTEM, WITH_SYSTEM + [{"role": "user", "content": "And now?"}]):
        assert merged.apply_chat_template(messages, tokenize=False) == \
            gemma3.apply_chat_template(messages, tokenize=False)
    rendered = merged.apply_chat_template(WITH_SYSTEM, tokenize=False)
    assert f"<start_of_turn>user\n{SYSTEM}\n\nMy invoice is wrong.<end_of_turn>" in rendered
    encoded = tokenize_with_assistant_mask(merged, WITH_SYSTEM)
    learned = merged.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert learned == '{"category": "billing"}<end_of_turn>'
    data = write_rows(tmp_path / "train.jsonl", [WITH_SYSTEM, WITHOUT_SYSTEM])
    assert not check_dataset(data, tokenizer=merged).errors


def test_drop_renders_as_if_there_were_no_system_message():
    dropping = family_tokenizer(GEMMA2, chat_template=with_system_policy(
        (TEMPLATES / "gemma2.jinja").read_text(), "drop"))
    assert dropping.apply_chat_template(WITH_SYSTEM, tokenize=False) == \
        dropping.apply_chat_template(WITHOUT_SYSTEM, tokenize=False)
    assert system_refusal(dropping) is None  # the rows pass: the user chose what becomes of them


@pytest.mark.parametrize(("policy", "structure"), [("merge_into_first_user", "first_user"), ("drop", "drop")])
def test_the_ollama_template_follows_the_policy_checked_with_go(policy, structure):
    from packager.serve.go_template import go_available

    if not go_available():
        pytest.skip("no Go toolchain (make system-tools installs it)")
    source = with_system_policy((TEMPLATES / "gemma2.jinja").read_text(), policy)
    template = ChatTemplate(source, "<bos>", "<eos>", {}, adds_bos=False)
    fmt = infer_chat_format(template)
    assert fmt.system == structure
    assert check_parity(template, fmt, use_go=True)["checked_with"] == "go text/template"


def test_without_a_policy_the_ollama_template_is_refused_naming_it():
    template = ChatTemplate((TEMPLATES / "gemma2.jinja").read_text(), "<bos>", "<eos>", {})
    with pytest.raises(StageError, match="raises on a system message .*set data.system_policy"):
        infer_chat_format(template)


def test_the_saved_template_carries_the_policy_and_a_different_one_later_is_refused(tmp_path):
    """Training saves the tokenizer with the policy's prelude (eval, merge and serving read that file); loading
    it back keeps it, and a config that now names another policy is refused rather than mixing two."""
    from packager.models.tokenizer import load_tokenizer

    family_tokenizer(GEMMA2, chat_template=(TEMPLATES / "gemma2.jinja").read_text()).save_pretrained(tmp_path)
    prepared = load_tokenizer(tmp_path, system_policy="merge_into_first_user")
    assert any("merges a system message into the first user message" in n for n in prepared.notes)
    saved = tmp_path / "trained"
    prepared.tokenizer.save_pretrained(saved)
    assert policy_of(load_tokenizer(saved).tokenizer.chat_template) == "merge_into_first_user"
    with pytest.raises(InputFileError, match="already applies data.system_policy merge_into_first_user"):
        load_tokenizer(saved, system_policy="drop")
