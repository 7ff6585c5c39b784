"""llama.cpp's own template engine (llama-server's POST /apply-template) against transformers, on the parity
conversations: the third real engine a GGUF's chat template is checked with, besides Jinja and Ollama's Go."""

import dataclasses

import pytest

from packager.errors import DependencyMissingError, StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.llama_server import LLAMA_SERVER_ENV, check_llama_cpp_template, llama_server_binary
from packager.serve.parity import PARITY_CONVERSATIONS

from support.checkpoints import build_checkpoint

needs_llama_server = pytest.mark.skipif(llama_server_binary() is None,
                                        reason="no llama-server (make setup builds it)")


@pytest.fixture(scope="module")
def qwen3_gguf(tmp_path_factory):
    from packager.stages.export.convert import convert_to_gguf

    directory = build_checkpoint("qwen3", tmp_path_factory.mktemp("qwen3"))
    gguf = directory.parent / "qwen3.gguf"
    convert_to_gguf(directory, gguf, outtype="f16", metadata={"name": "tiny qwen3"})
    return directory, gguf


@needs_llama_server
def test_llama_cpp_renders_the_gguf_template_as_transformers_does(qwen3_gguf):
    """Qwen 3's template (thinking blocks on the last turn only, tojson, loop variables) through llama.cpp's own
    Jinja engine equals transformers' rendering on every parity conversation, prefill and repeated roles
    included."""
    directory, gguf = qwen3_gguf
    result = check_llama_cpp_template(gguf, ChatTemplate.from_model_dir(directory), PARITY_CONVERSATIONS)
    assert result["conversations"] == len(PARITY_CONVERSATIONS) >= 8
    assert result["engine"].startswith("version:") and "apply-template" in result["checked_with"]


@needs_llama_server
def test_a_one_character_difference_is_caught_by_llama_cpp(qwen3_gguf):
    """The reference template with one character more in the generation prompt: llama.cpp's rendering of the
    GGUF no longer matches, and the error names the conversation and shows both sides."""
    directory, gguf = qwen3_gguf
    template = ChatTemplate.from_model_dir(directory)
    planted = dataclasses.replace(template, source=template.source.replace("'<|im_start|>assistant\\n'",
                                                                           "'<|im_start|>assistant \\n'"))
    assert planted.source != template.source
    with pytest.raises(StageError, match=r"llama.cpp's template engine renders conversation 1 .* differently") as e:
        check_llama_cpp_template(gguf, planted, PARITY_CONVERSATIONS)
    assert "Jinja has ' \\n', llama.cpp has '\\n'" in str(e.value)


def test_a_named_binary_that_is_not_there_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path / "llama-server"))
    with pytest.raises(DependencyMissingError, match="PACKAGER_LLAMA_SERVER names .* not an executable file"):
        llama_server_binary()


def test_the_export_records_an_unchecked_template_where_there_is_no_llama_server(monkeypatch, tmp_path):
    from packager.stages.export import gguf

    # a machine without one: no PACKAGER_LLAMA_SERVER, an empty cache, a PATH without llama-server
    monkeypatch.delenv(LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert llama_server_binary() is None
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    result = gguf._llama_cpp_renders_template(tmp_path, tmp_path)
    assert result == {"checked": False, "why": "no llama-server here (make setup builds it; PACKAGER_LLAMA_SERVER "
                                               "names one)"}
