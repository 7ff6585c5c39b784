"""The Unsloth backend's CPU-checkable parts: what "all-linear" spells out for it, that it is imported before
transformers, TRL and PEFT, and that DoRA reaches it. Unsloth itself runs only on CUDA (the CUDA issue)."""

import json
import subprocess
import sys
import textwrap

import pytest

from support.checkpoints import build_checkpoint
from support.runs import write_config


@pytest.mark.parametrize("name", ["llama3", "phi3", "gptneox", "gpt2", "gemma3"])
def test_all_linear_is_spelled_out_as_peft_resolves_it(name, tmp_path):
    """Unsloth takes explicit names; the list was Llama's seven projections, missing Phi-3's fused
    qkv_proj and gate_up_proj (and every GPT-NeoX and GPT-2 layer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from packager.stages.train.model import linear_module_names

    directory = build_checkpoint(name, tmp_path / name)
    names = linear_module_names(AutoModelForCausalLM.from_pretrained(directory))
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(directory), LoraConfig(target_modules="all-linear"))
    assert set(names) == {m.rsplit(".", 1)[-1] for m in peft.peft_config["default"].target_modules}
    if name == "phi3":
        assert {"qkv_proj", "gate_up_proj"} <= set(names)


def test_unsloth_is_imported_before_transformers_trl_and_peft(tmp_path, tiny_llama_dir):
    """`packager train` with the Unsloth backend imports it first, as Unsloth requires. A stand-in
    `unsloth` package records which of transformers, TRL and PEFT were already imported, then stops the
    run (the backend's choice is forced: this machine has no CUDA)."""
    fake = tmp_path / "fake"
    (fake / "unsloth").mkdir(parents=True)
    seen = tmp_path / "seen.json"
    (fake / "unsloth" / "__init__.py").write_text(textwrap.dedent(f"""
        import json, sys
        with open({str(seen)!r}, "w") as f:
            json.dump([m for m in ("transformers", "trl", "peft") if m in sys.modules], f)
        raise SystemExit(0)
    """))
    config = write_config(tmp_path, tiny_llama_dir)
    driver = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(fake)!r})
        import packager.stages.train.stage as stage
        from packager.stages.train.backend import Backend
        stage.choose_backend = lambda requested: Backend("unsloth", "forced by the test", "cpu")
        from packager.cli import cli
        cli.main(["train", "-c", {str(config)!r}], standalone_mode=False)
    """)
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(seen.read_text()) == [], "imported before Unsloth"


def test_unsloth_gets_the_architectures_layers_and_dora(tmp_path, monkeypatch):
    """What packager hands Unsloth's FastLanguageModel (a stand-in recording its calls): every linear layer
    of a Phi-3 for "all-linear", and use_dora, which was dropped (Unsloth passes its keyword arguments on to
    LoraConfig: ``get_peft_model(**kwargs)`` in ``unsloth/models/llama.py``)."""
    import types

    from transformers import AutoModelForCausalLM

    from packager.config import load_config
    from packager.models.checkpoint import resolve_base
    from packager.stages.train.model import _load_unsloth

    directory = build_checkpoint("phi3", tmp_path / "phi3")
    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            return AutoModelForCausalLM.from_pretrained(kwargs["model_name"]), None

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    cfg = load_config(write_config(tmp_path, directory, lora={"use_dora": True}))
    _load_unsloth(resolve_base(cfg.base), cfg)
    peft_kwargs = calls["get_peft_model"]
    assert peft_kwargs["use_dora"] is True
    assert set(peft_kwargs["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert calls["from_pretrained"]["load_in_4bit"] is False
