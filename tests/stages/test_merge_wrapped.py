"""Merging onto a multimodal-wrapped checkpoint: Gemma 3 (4B and up) is stored as `language_model.model.*`
beside its vision tower, but loads (transformers 5) as `model.language_model.*`, the names PEFT gives the
adapter. The merge maps each module to the checkpoint's own tensor name, keeps the checkpoint's layout, reads
the nested text_config, and equals PEFT's merge_and_unload."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from support.families import FAMILIES, family_tokenizer
from support.merging import assert_equal_within_bf16, our_merged_state, peft_merged_state
from support.models import make_adapter

LANGUAGE_MODEL_ONLY = r".*language_model.*\.(q_proj|v_proj|o_proj|gate_proj|down_proj)"


@pytest.fixture(scope="module")
def gemma3_multimodal(tmp_path_factory):
    """A tiny Gemma3ForConditionalGeneration (SigLIP vision tower and all), saved by transformers itself."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    directory = tmp_path_factory.mktemp("gemma3-mm")
    tokenizer = family_tokenizer(next(f for f in FAMILIES if f.name == "gemma3"))
    vocab = len(tokenizer) + 3  # the image tokens last
    text = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 512,
            "sliding_window": 64, "query_pre_attn_scalar": 16}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=vocab - 3,
                          eoi_token_index=vocab - 2, image_token_index=vocab - 1)
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def stored_names(directory) -> set[str]:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_the_checkpoint_and_the_adapter_spell_the_language_model_differently(gemma3_multimodal, tmp_path):
    from packager.models.adapter import read_adapter

    adapter = read_adapter(make_adapter(gemma3_multimodal, tmp_path / "adapter", target_modules=LANGUAGE_MODEL_ONLY))
    stored = stored_names(gemma3_multimodal)
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in stored
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in adapter.modules
    assert not set(adapter.modules) & stored  # matched one-to-one, every module was "missing"


@pytest.mark.parametrize("targets", [LANGUAGE_MODEL_ONLY, "all-linear"], ids=["language-model", "all-linear"])
def test_a_lora_on_a_wrapped_checkpoint_merges_as_peft_does(gemma3_multimodal, tmp_path, targets):
    """all-linear also adapts the vision tower's layers (`vision_tower.*` stored, `model.vision_tower.*`
    loaded); the merged checkpoint keeps the stored names, so it loads like the original."""
    adapter = make_adapter(gemma3_multimodal, tmp_path / "adapter", target_modules=targets)
    ours = our_merged_state(gemma3_multimodal, adapter, tmp_path / "merged")
    assert_equal_within_bf16(ours, peft_merged_state(gemma3_multimodal, adapter))
    assert stored_names(tmp_path / "merged") == stored_names(gemma3_multimodal)


def resized_adapter(base, adapter, grown: int, modules_to_save: list[str]):
    """An adapter trained after the vocabulary grew to ``grown`` tokens, its embeddings saved whole by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(4)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(grown)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_ONLY,
                                                  modules_to_save=modules_to_save, init_lora_weights=False))
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    return adapter


def test_a_resized_vocabulary_is_written_into_text_config(gemma3_multimodal, tmp_path):
    """Added tokens resize the embeddings: the merged config says the new size where the language model's
    config lives, not in a top-level field transformers would not read."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    grown = json.loads((gemma3_multimodal / "config.json").read_text())["text_config"]["vocab_size"] + 2
    adapter = resized_adapter(gemma3_multimodal, tmp_path / "adapter", grown, ["embed_tokens", "lm_head"])
    ours = our_merged_state(gemma3_multimodal, adapter, tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(gemma3_multimodal, dtype=torch.float32)
    base.resize_token_embeddings(grown)
    assert_equal_within_bf16(ours, PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict())
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == grown and "vocab_size" not in config
    assert config["text_config"]["tie_word_embeddings"] is False and config["tie_word_embeddings"] is False


def test_resized_tied_embeddings_without_lm_head_are_refused_before_writing(gemma3_multimodal, tmp_path):
    """With tied weights and only embed_tokens saved, the added tokens' output rows exist nowhere: merging
    wrote an lm_head of the old size that no loader accepts. Refused, naming the way out, with nothing written."""
    from packager.errors import StageError

    grown = json.loads((gemma3_multimodal / "config.json").read_text())["text_config"]["vocab_size"] + 2
    adapter = resized_adapter(gemma3_multimodal, tmp_path / "adapter", grown, ["embed_tokens"])
    with pytest.raises(StageError, match=r"resizes the tied embeddings to \d+ tokens but carries no lm_head"):
        our_merged_state(gemma3_multimodal, adapter, tmp_path / "merged")
    assert not any((tmp_path / "merged").iterdir())


def test_packager_merge_verifies_a_wrapped_checkpoint_against_peft(gemma3_multimodal, tmp_path, runner):
    from packager.cli import cli
    from packager.run.manifest import read_manifest

    adapter = make_adapter(gemma3_multimodal, tmp_path / "adapter", target_modules=LANGUAGE_MODEL_ONLY)
    run_dir = tmp_path / "run"
    merged = runner.invoke(cli, ["merge", "--adapter", str(adapter), "--base", str(gemma3_multimodal),
                                 "--out", str(run_dir)])
    assert merged.exit_code == 0, merged.output
    verification = read_manifest(run_dir).stages["merge"].metrics["verification"]
    assert verification["greedy_agreement"] >= 0.98, verification


@pytest.mark.slow
def test_train_eval_and_merge_run_on_a_wrapped_checkpoint(gemma3_multimodal, tmp_path, runner):
    """The whole path a user takes with Gemma 3 4B, on its tiny twin: `packager train --dry-run` (the pad token
    set where the multimodal config keeps it, in text_config), eval, then merge verified against PEFT."""
    from packager.cli import cli
    from packager.run.manifest import read_manifest
    from packager.run.verify import verify_run

    from support.runs import dry_run_train

    run_dir = dry_run_train(runner, tmp_path, gemma3_multimodal, learning_rate=0.05)
    for args in (["eval", str(run_dir), "--limit", "2"], ["merge", str(run_dir)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert read_manifest(run_dir).stages["merge"].metrics["verification"]["greedy_agreement"] >= 0.98
    assert stored_names(run_dir / "merged") == stored_names(gemma3_multimodal)
    assert verify_run(run_dir).ok
