"""Modelfile text as Ollama reads it: packager's model of Ollama's parser, the quoting packager writes with it,
and the check that refuses a Modelfile Ollama would read differently. Ollama's own binary reading the same
Modelfiles is in tests/serve/test_ollama_itself.py."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from packager.errors import StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.chat_format import infer_chat_format
from packager.serve.ollama_parity import check_parity, check_user_template
from packager.serve.parity import PARITY_CONVERSATIONS
from packager.serve.go_template import go_available, render_as_ollama
from packager.serve.modelfile import (ModelfileSyntaxError, check_modelfile, check_ollama_name, go_string_constant,
                                      modelfile_string, parse_modelfile)

from support.modelfiles import NASTY, READ_AS_OLLAMA_DOES


@pytest.mark.parametrize("text, commands", READ_AS_OLLAMA_DOES, ids=range(len(READ_AS_OLLAMA_DOES)))
def test_the_parser_reads_as_ollama_does(text, commands):
    assert parse_modelfile(text) == commands


@pytest.mark.parametrize("text, line", [("FROM ./m.gguf\nPARAMETR stop x\n", 2), ("FROM\n", 2),
                                        ("FROM ./m.gguf\nMESSAGE robot hi\n", 2),
                                        ('FROM ./m.gguf\nSYSTEM """never closed\n', 0), ("SYSTEM x\n", 0)])
def test_the_parser_refuses_what_ollama_refuses(text, line):
    with pytest.raises(ModelfileSyntaxError) as refused:
        parse_modelfile(text)
    assert refused.value.line == line


@pytest.mark.parametrize("value", NASTY, ids=range(len(NASTY)))
def test_every_value_is_written_so_that_ollama_reads_it_back(value):
    written = modelfile_string(value, what="the value")
    text = f"FROM ./m.gguf\nPARAMETER stop {written}\nSYSTEM {written}\nTEMPLATE {written}\nLICENSE x\n"
    assert parse_modelfile(text) == [("model", "./m.gguf"), ("stop", value), ("system", value),
                                     ("template", value), ("license", "x")]


def test_random_values_read_back_or_are_refused_by_name():
    """Values drawn from the characters that matter to the parser: each reads back exactly, or is refused."""
    alphabet = ['"', '"', "\\", " ", "\t", "\n", "\r", "a", "#", "{", "}", "<", "|"]
    rng = random.Random(0)
    refused = 0
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        try:
            written = modelfile_string(value, what="the value")
        except StageError as e:
            refused += 1
            assert "cannot be written in a Modelfile" in str(e)
            continue
        assert parse_modelfile(f"FROM ./m.gguf\nSYSTEM {written}\nLICENSE x\n") == \
            [("model", "./m.gguf"), ("system", value), ("license", "x")], repr(value)
    assert refused < 200  # only values Ollama's strings cannot hold at all ('"""' with '"' at both ends...)


@pytest.mark.parametrize("value, named", [("a\u00a0b", "U+00A0"), ("x\u200b", "U+200B"), ("\x1b[0m", "U+001B"),
                                          ("line\u2028sep", "U+2028")])
def test_characters_ollama_deletes_are_refused_by_name(value, named):
    with pytest.raises(StageError, match=f"the stop token .* has characters that Ollama's Modelfile parser "
                                         f"deletes \\({re.escape(named)}\\)"):
        modelfile_string(value, what=f"the stop token {value!r}")


def test_a_planted_difference_is_caught_by_the_round_trip():
    """The Modelfile as packager wrote it before: stop tokens as JSON strings. Ollama reads a different stop."""
    meant = [("model", "./m.gguf"), ("template", "{{ .Prompt }}"), ("stop", '"')]
    stop = modelfile_string(chr(34), what="s")
    check_modelfile(f'FROM ./m.gguf\nTEMPLATE """{{{{ .Prompt }}}}"""\nPARAMETER stop {stop}\n', meant,
                    context_files={"m.gguf"})
    with pytest.raises(StageError, match=r"the Modelfile's STOP would reach Ollama as '\\\\\"', not '\"'"):
        check_modelfile('FROM ./m.gguf\nTEMPLATE """{{ .Prompt }}"""\nPARAMETER stop "\\""\n', meant,
                        context_files={"m.gguf"})
    with pytest.raises(StageError, match=r"the Modelfile's TEMPLATE would reach Ollama as '\{\{ .Prompt \}\}x'"):
        check_modelfile('FROM ./m.gguf\nTEMPLATE """{{ .Prompt }}\u00a0x"""\nPARAMETER stop """\""""\n',
                        [("model", "./m.gguf"), ("template", "{{ .Prompt }}\u00a0x"), ("stop", '"')],
                        context_files={"m.gguf"})


def test_from_must_name_a_file_of_the_context():
    """A FROM that is not a file becomes a model name for Ollama to pull (parser.go CreateRequest)."""
    meant = [("model", "./m.gguf"), ("template", "t")]
    with pytest.raises(StageError, match="FROM './m.gguf' is not a file of the build context: Ollama would take "
                                         "it for a model to pull"):
        check_modelfile('FROM ./m.gguf\nTEMPLATE "t"\n', meant, context_files={"other.gguf"})


@pytest.mark.parametrize("name, ok", [("smol", True), ("a" * 80, True), ("a" * 81, False), ("_x.y-z", True),
                                      ("-x", False), ("a:b", False), ("a/b", False)])
def test_served_names_follow_ollamas_rules(name, ok):
    if ok:
        assert check_ollama_name(name, what="name") == name
    else:
        with pytest.raises(StageError, match="is not a name Ollama accepts: at most 80 characters"):
            check_ollama_name(name, what="name")


@pytest.mark.skipif(not go_available(), reason="go is not installed (apt install golang-go)")
def test_a_template_with_a_no_break_space_survives_the_modelfile_as_a_go_constant():
    """A chat template whose turns carry a no-break space: the derived TEMPLATE spells it as a Go escape, so the
    Modelfile carries it, Ollama's parser keeps it, and Go renders it where the Jinja template does."""
    source = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\u00a0\n' + m['content'] + '<|im_end|>\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\u00a0\n' }}{% endif %}")
    chat = ChatTemplate(source, "<|im_start|>", "<|im_end|>", {})
    fmt = infer_chat_format(chat)
    go = fmt.go_template()
    assert "\u00a0" not in go and "\\u00a0" in go
    read = dict(parse_modelfile(f"FROM ./m.gguf\nTEMPLATE {modelfile_string(go, what='the TEMPLATE')}\n"))["template"]
    assert read == go
    assert check_parity(chat, fmt, go_template=read, use_go=True)["checked_with"] == "go text/template"
    messages = [{"role": "user", "content": "hi"}]
    assert render_as_ollama(read, messages) == chat.render(messages, add_generation_prompt=True)


def test_go_string_constants_escape_what_the_parser_would_delete():
    assert go_string_constant('a\u00a0"\\\n\t\u200b\U000f0000ü') == '"a\\u00a0\\"\\\\\\n\\t\\u200b\\U000f0000ü"'


CHAT_TEMPLATES = Path(__file__).parent.parent / "support" / "chat_templates"


@pytest.mark.skipif(not go_available(), reason="go is not installed (apt install golang-go)")
def test_the_escape_hatch_takes_a_hand_written_gemma3_template():
    """Gemma 3 folds the system prompt into the first user turn, which inference now reads; a user may still
    write the TEMPLATE (containers.ollama.template). That file is checked on its own, against the Jinja
    template, with Go; a planted one-character difference is caught, naming where."""
    gemma3 = ChatTemplate((CHAT_TEMPLATES / "gemma3.jinja").read_text(), "<bos>", "<eos>", {}, adds_bos=True)
    assert infer_chat_format(gemma3).system == "first_user"
    hand_written = (CHAT_TEMPLATES / "gemma3.ollama.gotmpl").read_text()
    result = check_user_template(gemma3, hand_written)
    assert result["conversations"] == len(PARITY_CONVERSATIONS)
    assert result["checked_with"] == "go text/template (containers.ollama.template)"
    assert result["trimmed_roles"] == ["user", "assistant"] and "Go templates have no trim" in result["caveat"]
    planted = hand_written.replace("<start_of_turn>model\n{{ .Content }}", "<start_of_turn>model {{ .Content }}")
    with pytest.raises(StageError, match=r"renders conversation 3 differently from the Jinja chat template: at "
                                         r"character \d+, Jinja has '\\n\{"):
        check_user_template(gemma3, planted)
