"""Streaming merge: equal to PEFT's merge_and_unload tensor for tensor, verified, and refusing bad inputs."""

import json
from pathlib import Path

import pytest

from packager.models.checkpoint import inspect_checkpoint
from packager.errors import InputFileError, StageError
from packager.stages.merge.stream import stream_merge
from packager.models.adapter import read_adapter
from packager.models.stop_tokens import chat_stop_token_ids

from support.merging import assert_equal_within_bf16, our_merged_state, peft_merged_state
from support.models import build_tiny_llama, lie_about_sizes, make_adapter
from support.runs import trained_run


@pytest.fixture(scope="module")
def untied_llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("untied") / "untied", tie_word_embeddings=False)


@pytest.mark.parametrize("variant", ["lora", "rslora", "alpha_pattern", "dora"])
def test_streaming_merge_equals_peft_merge_and_unload(tmp_path, tiny_llama_dir, variant):
    kwargs = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True},
              "alpha_pattern": {"alpha_pattern": {"q_proj": 32}, "rank_pattern": {"v_proj": 2}}}[variant]
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", **kwargs)
    assert_equal_within_bf16(our_merged_state(tiny_llama_dir, adapter, tmp_path / "merged"),
                             peft_merged_state(tiny_llama_dir, adapter))


def test_modules_to_save_and_lm_head_on_an_untied_model(tmp_path, untied_llama_dir):
    adapter = make_adapter(untied_llama_dir, tmp_path / "adapter", modules_to_save=["lm_head"])
    assert "lm_head.weight" in read_adapter(adapter).replacements
    assert_equal_within_bf16(our_merged_state(untied_llama_dir, adapter, tmp_path / "merged"),
                             peft_merged_state(untied_llama_dir, adapter))


def test_lora_on_embeddings_with_tied_weights_matches_the_trained_model(tmp_path, tiny_llama_dir):
    """PEFT trains embed_tokens' LoRA while the tied lm_head keeps the original weight. merge_and_unload then
    writes the delta into the shared tensor, changing lm_head too; packager unties and matches training."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter",
                           target_modules=["embed_tokens", "q_proj", "v_proj"])
    assert read_adapter(adapter).modules["model.embed_tokens.weight"].kind == "embedding"
    ours = our_merged_state(tiny_llama_dir, adapter, tmp_path / "merged")
    theirs = peft_merged_state(tiny_llama_dir, adapter)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).state_dict()
    assert_equal_within_bf16({k: v for k, v in ours.items() if k != "lm_head.weight"},
                             {k: v for k, v in theirs.items() if k != "lm_head.weight"})
    assert_equal_within_bf16({"lm_head.weight": ours["lm_head.weight"]},
                             {"lm_head.weight": original["model.embed_tokens.weight"]})
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False

    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                                        adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        reference = trained(input_ids=ids).logits
        assert (merged(input_ids=ids).logits - reference).abs().max() < 0.05
        assert (trained.merge_and_unload()(input_ids=ids).logits - reference).abs().max() > 1.0


def test_output_is_sharded_at_the_byte_budget_with_an_index(tmp_path, tiny_llama_dir):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    ours = our_merged_state(tiny_llama_dir, adapter, tmp_path / "merged", shard_bytes=20_000)
    shards = sorted((tmp_path / "merged").glob("model-*.safetensors"))
    assert len(shards) > 2 and all(p.stat().st_size < 20_000 + 30_000 for p in shards)
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert set(ours) - set(index["weight_map"]) == {"lm_head.weight"}, "tied: lm_head is not stored"
    assert_equal_within_bf16(ours, peft_merged_state(tiny_llama_dir, adapter))


def test_an_adapter_from_another_base_is_refused_naming_both(tmp_path, tiny_llama_dir):
    other = build_tiny_llama(tmp_path / "other", hidden_size=64)
    adapter = make_adapter(other, tmp_path / "adapter")
    out = tmp_path / "merged"
    out.mkdir()
    with pytest.raises(StageError) as info:
        stream_merge(inspect_checkpoint(tiny_llama_dir), read_adapter(adapter), out, dtype="bfloat16",
                     shard_bytes=10**9)
    message = str(info.value)
    assert str(other) in message and str(tiny_llama_dir) in message and "does not fit" in message


def test_an_adapter_whose_rank_differs_from_its_config_is_refused(tmp_path, tiny_llama_dir):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 8
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InputFileError, match="rank 4 in the weights but 8"):
        read_adapter(adapter)


@pytest.mark.parametrize("damage", ["truncated", "lying_header", "garbage"])
def test_corrupt_base_safetensors_are_named(tmp_path, tiny_llama_copy, damage):
    weights = tiny_llama_copy / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        lie_about_sizes(weights)
    adapter = make_adapter(tiny_llama_dir_of(tiny_llama_copy), tmp_path / "adapter")
    out = tmp_path / "merged"
    out.mkdir()
    with pytest.raises(InputFileError) as info:
        stream_merge(inspect_checkpoint(tiny_llama_copy), read_adapter(adapter), out, dtype="bfloat16",
                     shard_bytes=10**9)
    assert str(weights) in str(info.value)


def tiny_llama_dir_of(copy: Path) -> Path:
    """An intact sibling of a damaged copy, to make an adapter from."""
    intact = copy.parent / "intact"
    if not intact.exists():
        build_tiny_llama(intact)
    return intact


def test_stop_tokens_come_from_the_chat_template(tiny_llama_copy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_copy)
    assert chat_stop_token_ids(tiny_llama_copy) == [tok.convert_tokens_to_ids("<|im_end|>")]
    # A Llama-3-style template ends turns with <|eot_id|>, distinct from eos: both are stop tokens.
    config = json.loads((tiny_llama_copy / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (tiny_llama_copy / "tokenizer_config.json").write_text(json.dumps(config))
    (tiny_llama_copy / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}")
    assert chat_stop_token_ids(tiny_llama_copy) == sorted(
        [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")])


def test_merge_a_run_end_to_end(runner, tmp_path, tiny_llama_copy):
    from packager.cli import cli
    from packager.run.manifest import read_manifest
    from packager.run.verify import verify_run

    run_dir = trained_run(tmp_path, tiny_llama_copy, runner)
    result = runner.invoke(cli, ["merge", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "greedy agreement" in result.output
    merged = run_dir / "merged"
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "chat_template.jinja"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}, "no adapter files in a merged model"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    eos = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in ([eos] if isinstance(eos, int) else eos)
    stage = read_manifest(run_dir).stages["merge"]
    v = stage.metrics["verification"]
    assert v["greedy_agreement"] >= 0.95 and v["mean_abs_vs_base"] > 2 * v["mean_abs"]
    assert stage.parameters["scales"] == [1.0] and stage.parameters["base_weights"].startswith("original 16-bit")
    adapter_digests = {i.sha256 for i in stage.inputs if i.path.startswith("train/adapter/")}
    shard = next(o for o in stage.outputs if o.path == "merged/model.safetensors")
    assert adapter_digests <= set(shard.parents), "the merged shard names the adapter as a parent"
    assert verify_run(run_dir).ok


def test_merge_refuses_a_base_that_changed_since_training(runner, tmp_path, tiny_llama_copy):
    from packager.cli import cli

    run_dir = trained_run(tmp_path, tiny_llama_copy, runner)
    build_tiny_llama(tiny_llama_copy, seed=99)  # same architecture and shapes, different weights
    result = runner.invoke(cli, ["merge", str(run_dir)])
    assert result.exit_code == 1
    assert "not the one this adapter was trained on" in result.output and "model.safetensors" in result.output
    assert not (run_dir / "merged").exists()


def test_merge_refuses_an_untrained_adapter_as_behaving_like_the_base(runner, tmp_path, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from packager.cli import cli

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules="all-linear"))  # B = 0: changes nothing
    model.save_pretrained(tmp_path / "adapter")
    result = runner.invoke(cli, ["merge", "--adapter", str(tmp_path / "adapter"), "--base", str(tiny_llama_dir),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "changes nothing" in result.output
    assert not (tmp_path / "run" / "merged").exists()


def test_merge_an_external_adapter(runner, tmp_path, tiny_llama_dir):
    from packager.cli import cli
    from packager.run.verify import verify_run

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    result = runner.invoke(cli, ["merge", "--adapter", str(adapter), "--base", str(tiny_llama_dir),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "merged" / "model.safetensors").is_file()
    assert verify_run(tmp_path / "run").ok


def test_merge_usage_errors(runner, tmp_path):
    from packager.cli import cli

    assert runner.invoke(cli, ["merge"]).exit_code == 2
    assert runner.invoke(cli, ["merge", "--adapter", str(tmp_path)]).exit_code == 2


def test_qlora_adapters_merge_onto_the_original_16_bit_weights(runner, tmp_path, tiny_llama_64_dir):
    import bitsandbytes  # noqa: F401

    from packager.cli import cli
    from packager.config import load_config
    from packager.run.manifest import read_manifest
    from packager.run.verify import verify_run
    from support.runs import write_config

    config = write_config(tmp_path, tiny_llama_64_dir, method="qlora", learning_rate=0.05)
    assert runner.invoke(cli, ["train", "-c", str(config), "--dry-run"]).exit_code == 0
    run_dir = load_config(config).run_dir
    result = runner.invoke(cli, ["merge", str(run_dir)])
    assert result.exit_code == 0, result.output
    stage = read_manifest(run_dir).stages["merge"]
    assert stage.parameters["qlora"] is True
    assert stage.parameters["base_weights"] == "original 16-bit safetensors of the base (never dequantized 4-bit)"
    base_weights = {i.path for i in stage.inputs if i.path.endswith("/model.safetensors")}
    assert base_weights == {str((tiny_llama_64_dir / "model.safetensors").resolve())}
    assert verify_run(run_dir).ok


def test_added_tokens_travel_with_the_tokenizer_and_resized_embeddings(tmp_path, untied_llama_dir):
    """An adapter trained after adding tokens: PEFT saves the resized embed_tokens and lm_head in full."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(untied_llama_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<tool>", "</tool>"]})
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(untied_llama_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tok))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  modules_to_save=["embed_tokens", "lm_head"],
                                                  init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    info = read_adapter(adapter)
    assert info.shape(info.replacements["model.embed_tokens.weight"])[0] == len(tok)

    ours = our_merged_state(untied_llama_dir, adapter, tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(untied_llama_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(tok))
    theirs = PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()
    assert_equal_within_bf16(ours, theirs)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["vocab_size"] == len(tok)
    merged_tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert merged_tok.convert_tokens_to_ids("<tool>") == len(tok) - 2
