"""`packager base import-gguf` on base models: a GGUF without a chat template imports (recorded as such),
`--chat-template FILE` attaches one, and what can be refused is refused before the dequantizing."""

import json
from pathlib import Path

import pytest

from packager.cli import cli
from packager.errors import InputFileError
from packager.models.gguf_import import import_gguf
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run

from support.checkpoints import ARCHITECTURES, build_checkpoint


def gguf_of(tmp_path, name: str, *, template: bool):
    """A tiny checkpoint of ``name`` converted by llama.cpp's converter; without ``template`` it is a base
    model's GGUF: no tokenizer.chat_template."""
    from packager.stages.export.convert import convert_to_gguf

    checkpoint = build_checkpoint(name, tmp_path / f"{name}-checkpoint")
    if not template:
        (checkpoint / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((checkpoint / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (checkpoint / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / f"{name}.gguf"
    convert_to_gguf(checkpoint, out, outtype="f32", metadata={})
    return out


def test_a_base_model_gguf_imports_and_a_template_file_attaches(runner, tmp_path):
    gguf = gguf_of(tmp_path, "llama3", template=False)

    bare = runner.invoke(cli, ["base", "import-gguf", str(gguf), str(tmp_path / "bare")])
    assert bare.exit_code == 0, bare.output
    assert "no chat template" in bare.output and "--chat-template" in bare.output
    stage = read_manifest(tmp_path / "bare").stages["import-gguf"]
    assert stage.parameters["chat_template"] is None and stage.metrics["chat_template"] is None
    assert verify_run(tmp_path / "bare").ok

    template = tmp_path / "llama3.jinja"
    template.write_text(ARCHITECTURES["llama3"].chat_template())
    attached = runner.invoke(cli, ["base", "import-gguf", str(gguf), str(tmp_path / "chat"),
                                   "--chat-template", str(template)])
    assert attached.exit_code == 0, attached.output
    assert "no chat template" not in attached.output
    out = tmp_path / "chat"
    stage = read_manifest(out).stages["import-gguf"]
    assert stage.parameters["chat_template"] == "the file llama3.jinja"
    assert {i.path for i in stage.inputs} >= {str(template.resolve())}
    assert (out / "chat_template.jinja").read_text() == template.read_text()
    vocab = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    eot = next(t["id"] for t in vocab if t["content"] == "<|eot_id|>")
    assert eot in json.loads((out / "generation_config.json").read_text())["eos_token_id"], \
        "the token that closes a turn stops generation"
    # the same inputs again: reused; another template: not this import
    assert import_gguf(gguf, out, chat_template=template) == out
    other = tmp_path / "other.jinja"
    other.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(Exception, match="not an intact import of this GGUF"):
        import_gguf(gguf, out, chat_template=other)


def test_a_broken_template_file_or_an_unreadable_architecture_is_refused_before_dequantizing(tmp_path,
                                                                                               monkeypatch):
    import packager.models.gguf_import as gguf_import

    def never(*args, **kwargs):
        raise AssertionError("dequantized before refusing")

    monkeypatch.setattr(gguf_import, "_convert_gguf", never)
    gguf = gguf_of(tmp_path, "llama3", template=False)
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}")
    with pytest.raises(InputFileError, match="line 2: not a valid Jinja chat template") as info:
        import_gguf(gguf, tmp_path / "out", chat_template=broken)
    assert str(broken) in str(info.value)
    with pytest.raises(Exception, match="chat template file does not exist"):
        import_gguf(gguf, tmp_path / "out", chat_template=tmp_path / "missing.jinja")

    neox = gguf_of(tmp_path, "gptneox", template=True)  # transformers has no GGUF loader for GPT-NeoX
    with pytest.raises(InputFileError, match="transformers cannot load GGUF architecture 'gptneox'"):
        import_gguf(neox, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_a_shipped_chat_template_is_named_without_a_path(tmp_path, monkeypatch):
    from packager.models.gguf_import import SHIPPED_CHAT_TEMPLATES, chat_template_file, read_template_file

    monkeypatch.chdir(tmp_path)
    assert chat_template_file("gemma3") == SHIPPED_CHAT_TEMPLATES / "gemma3.jinja"
    assert "<start_of_turn>" in read_template_file(chat_template_file("gemma3"))
    (tmp_path / "gemma3").write_text("{{ messages[0]['content'] }}")  # a file of that name wins
    assert chat_template_file("gemma3") == Path("gemma3")
    with pytest.raises(Exception, match=r"does not exist \(packager ships: gemma3\)"):
        read_template_file(chat_template_file("llama9"))
