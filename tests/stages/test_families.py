"""The model-family matrix: every architecture users bring, as a tiny random-weight checkpoint with its
family's tokenizer kind and chat template (tests/support/checkpoints.py), through the stages that depend on the
architecture. The fast suite keeps Qwen 3 (a real non-Llama vocabulary and template); the rest are slow."""

import pytest

from packager.models.stop_tokens import chat_stop_token_ids, generation_stop_ids

from support.checkpoints import ARCHITECTURES, build_checkpoint

FAST = {"qwen3"}
MATRIX = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in ARCHITECTURES]

CONVERSATIONS = [
    [{"role": "system", "content": "Classify the support ticket and answer with JSON only."},
     {"role": "user", "content": "My invoice was charged twice, please refund one of the payments."},
     {"role": "assistant", "content": '{"category": "billing", "priority": "high"}'}],
    [{"role": "user", "content": "The app crashes every time I open the settings page on Android."},
     {"role": "assistant", "content": '{"category": "bug", "priority": "medium"}'},
     {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
]


def renderable(name: str) -> list[list[dict]]:
    """CONVERSATIONS as the checkpoint's published template can render them: without the system message where
    the family's runs need a data.system_policy (Gemma 2's template raises on one). A run's merged model carries
    the policy in its template; these checkpoints are the bare base."""
    if ARCHITECTURES[name].system_policy == "error":
        return CONVERSATIONS
    return [c[1:] if c[0]["role"] == "system" else c for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    built = {}

    def checkpoint(name):
        if name not in built:
            built[name] = build_checkpoint(name, tmp_path_factory.mktemp(name))
        return built[name]

    return checkpoint


@pytest.mark.parametrize("name", MATRIX)
def test_the_end_of_turn_token_stops_generation(name, checkpoints):
    """The token that closes an assistant turn in the family's template is among the stop ids (Gemma's
    <end_of_turn>, Llama 3's <|eot_id|>, Phi-3's <|end|>), not only the tokenizer's eos."""
    from transformers import AutoTokenizer

    directory = checkpoints(name)
    end_of_turn = AutoTokenizer.from_pretrained(directory).convert_tokens_to_ids(ARCHITECTURES[name].end_of_turn)
    assert end_of_turn in chat_stop_token_ids(directory)
    assert end_of_turn in generation_stop_ids(directory)


@pytest.fixture(scope="module")
def f32_ggufs(checkpoints, tmp_path_factory):
    """Each family's checkpoint converted to an f32 GGUF by the pinned converter, once."""
    from packager.stages.export.convert import convert_to_gguf

    built = {}

    def gguf(name):
        if name not in built:
            built[name] = tmp_path_factory.mktemp(f"{name}-gguf") / f"{name}.gguf"
            convert_to_gguf(checkpoints(name), built[name], outtype="f32", metadata={"name": f"tiny {name}"})
        return built[name]

    return gguf


def parity_conversations(name: str) -> list[list[dict]]:
    """The parity conversations the bare base's template can render (see :func:`renderable`)."""
    from packager.serve.parity import PARITY_CONVERSATIONS

    if ARCHITECTURES[name].system_policy == "error":
        return PARITY_CONVERSATIONS
    return [[m for m in c if m["role"] != "system"] for c in PARITY_CONVERSATIONS]


@pytest.mark.parametrize("name", MATRIX)
def test_llama_cpp_renders_each_familys_gguf_template_as_transformers_does(name, checkpoints, f32_ggufs):
    """The template embedded in the GGUF, rendered by llama.cpp's own Jinja engine (llama-server's
    /apply-template), equals transformers' rendering on the parity conversations."""
    from packager.models.chat_template import ChatTemplate
    from packager.serve.llama_server import check_llama_cpp_template

    template = ChatTemplate.from_model_dir(checkpoints(name))
    result = check_llama_cpp_template(f32_ggufs(name), template, parity_conversations(name))
    assert result["conversations"] == len(parity_conversations(name))
    # Gemma and Mistral raise "roles must alternate", in transformers and in llama.cpp, on repeated roles (7) and
    # on a truncated history that starts with an assistant turn (9)
    assert result["refused_by_both"] == ([7, 9] if name in ("gemma2", "gemma3", "mistral") else [])
    # llama.cpp builds a prefill's prompt from two renders; Phi-3's EOS after a finished conversation, which
    # shares "<" with "<|assistant|>", leaves "</s>|assistant|>" (a llama.cpp finding, kept as a caveat)
    assert [c.split(":")[0] for c in result["caveats"]] == (
        ["llama-server renders a prefilled request (conversation 6) differently"] if name == "phi3" else [])


@pytest.mark.parametrize("name", MATRIX)
def test_gguf_export_keeps_the_chat_format_and_agrees_with_the_checkpoint(name, checkpoints, f32_ggufs):
    """llama.cpp's pinned converter writes the architecture, and llama.cpp computes what transformers does:
    teacher-forced top-1 and KL within the f16 thresholds export applies, and the logits of the decoding
    path (one token at a time, through llama.cpp's KV cache) along the reference's own greedy answers.

    Converted to f32, and the greedy answers compared logit by logit rather than token by token: on random
    weights a greedy answer hangs on near-ties (Phi-3: teacher-forced top-1 1.000 and KL 1e-8, yet greedy
    agreement 0.69 after one tie at a logit gap under 0.001), which says nothing about the architecture."""
    import numpy as np
    from llama_cpp import Llama

    from packager.models.tokenizer import read_chat_template
    from packager.stages.export.parity import (_log_softmax, check_gguf_carries_chat_format, gguf_parity,
                                               reference_outputs)
    from packager.models.inference import load_causal_lm, teacher_forced_logits

    directory = checkpoints(name)
    out = f32_ggufs(name)
    stops = generation_stop_ids(directory)
    meta = check_gguf_carries_chat_format(out, chat_template=read_chat_template(directory), stop_ids=stops)
    assert meta["architecture"] == {"llama3": "llama", "qwen2.5": "qwen2", "mistral": "llama"}.get(name, name)
    ref = reference_outputs(directory, renderable(name), stop_ids=stops)
    parity = gguf_parity(out, ref)
    assert parity["top1_agreement"] >= 0.98 and parity["mean_kl"] <= 0.01, parity

    answers = [prompt + answer for prompt, answer in zip(ref.prompts, ref.greedy)]
    expected = [_log_softmax(x.numpy()) for x in teacher_forced_logits(load_causal_lm(directory), answers)]
    llm = Llama(model_path=str(out), logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    for ids, prompt, want in zip(answers, ref.prompts, expected):
        llm.reset()
        llm.eval(prompt)
        for token in ids[len(prompt):]:
            llm.eval([token])
        got = _log_softmax(np.array(llm.scores[: len(ids)]))
        assert np.abs(got - want).max() < 0.01, (name, float(np.abs(got - want).max()))
    del llm


@pytest.mark.parametrize("name", MATRIX)
def test_merge_writes_what_peft_computes_unmerged(name, checkpoints, tmp_path):
    """packager's streaming merge, verified against PEFT's unmerged model (the merge stage's own check
    raises below its thresholds), on an adapter over every linear layer: fused projections (Phi-3's
    qkv_proj and gate_up_proj, GPT-NeoX's query_key_value) and GPT-2's Conv1D ([in, out], PEFT's
    fan_in_fan_out; refused by the shape check before)."""
    from packager.stages.merge.stage import merge_external

    from support.models import make_adapter

    base = checkpoints(name)
    adapter = make_adapter(base, tmp_path / "adapter")
    v = merge_external(adapter, str(base), tmp_path / "run", dtype="float16").verification
    assert v["greedy_agreement"] == 1.0 and v["mean_abs_vs_base"] > 100 * v["mean_abs"], v


@pytest.mark.slow
def test_a_dora_adapter_on_gpt2_conv1d_merges(checkpoints, tmp_path):
    """DoRA's magnitude is per output feature, which a Conv1D weight keeps in its columns."""
    from packager.stages.merge.stage import merge_external

    from support.models import make_adapter

    base = checkpoints("gpt2")
    adapter = make_adapter(base, tmp_path / "adapter", use_dora=True)
    v = merge_external(adapter, str(base), tmp_path / "run", dtype="float16").verification
    assert v["mean_abs_vs_base"] > 100 * v["mean_abs"], v


@pytest.mark.parametrize("name", MATRIX)
def test_a_lora_gguf_on_the_base_gguf_computes_base_plus_adapter(name, checkpoints, tmp_path):
    """packager's LoRA GGUF writer (tensor names from the architecture's own map, rows reordered as the
    converter reorders the base's: Llama's RoPE permutation, GPT-NeoX's fused q/k/v) applied by llama.cpp
    onto the converted base, against PEFT's base + adapter unmerged in float32."""
    import json

    from packager.models.adapter import read_adapter
    from packager.stages.export.convert import convert_to_gguf
    from packager.stages.export.lora_gguf import lora_architecture, write_lora_gguf
    from packager.stages.export.parity import gguf_parity, reference_outputs

    from support.models import make_adapter

    base = checkpoints(name)
    adapter = make_adapter(base, tmp_path / "adapter")
    config = json.loads((base / "config.json").read_text())
    base_gguf, lora_gguf = tmp_path / "base.gguf", tmp_path / "lora.gguf"
    convert_to_gguf(base, base_gguf, outtype="f32", metadata={})
    info = write_lora_gguf(read_adapter(adapter), config, lora_gguf, arch=lora_architecture(config))
    assert info["modules"] >= 4 * 2
    ref = reference_outputs(base, renderable(name), stop_ids=generation_stop_ids(base), adapter_dir=adapter)
    parity = gguf_parity(base_gguf, ref, lora_path=lora_gguf)
    assert parity["top1_agreement"] >= 0.98 and parity["mean_kl"] <= 0.01, parity
    without = gguf_parity(base_gguf, ref)
    assert without["mean_kl"] > 10 * max(parity["mean_kl"], 1e-6), "the adapter changed nothing"


@pytest.mark.parametrize("name", MATRIX)
def test_vllm_accepts_the_flags_packager_writes_for_each_architecture(name, checkpoints):
    """vLLM 0.33's own `vllm serve` parser and engine-config check on the flags packager's vLLM context
    writes: the architecture is in vLLM's ModelRegistry, and the served context is one vLLM allows (GPT-2
    says n_positions, not max_position_embeddings: packager served 4096 and vLLM refused it)."""
    import json

    from packager.config import BaseModelConfig, PackagerConfig
    from packager.models.checkpoint import read_context_limit
    from packager.serve.vllm import vllm_flags

    from support.containers import vllm_accepts

    directory = checkpoints(name)
    config = json.loads((directory / "config.json").read_text())
    cfg = PackagerConfig(base=BaseModelConfig(model=str(directory)))
    flags = vllm_flags(cfg, directory, str(directory), config, served_name=name)
    summary = vllm_accepts([str(directory), *flags], {})
    assert summary["architecture_supported"] and summary["architectures"] == config["architectures"]
    assert summary["max_model_len"] == read_context_limit(directory) == 512
    assert summary["generation_config"] == str(directory)
    # Qwen 3's thinking is parsed out of the answer by vLLM's own qwen3 parser (tests/stages/test_reasoning.py)
    assert summary["reasoning_parser"] == ("Qwen3ParserReasoningAdapter" if name == "qwen3" else None)
    # Qwen 3's template writes <tool_call> JSON: vLLM returns the calls parsed by its hermes parser
    # (tests/stages/test_tool_calls.py runs that class on the template's own calls)
    assert summary["tool_call_parser"] == ("Hermes2ProToolParser" if name == "qwen3" else None)
    assert summary["enable_auto_tool_choice"] == (name == "qwen3")


def linear_layer_names(directory) -> set[str]:
    """The last name part of every linear layer (and GPT-2's Conv1D) inside the decoder blocks."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    model = AutoModelForCausalLM.from_pretrained(directory)
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and "lm_head" not in name}


@pytest.mark.parametrize("name", MATRIX)
def test_a_lora_dry_run_trains_every_linear_layer_evaluates_and_merges(name, checkpoints, runner, tmp_path):
    """`packager train --dry-run` (LoRA, "all-linear") on the example task rendered with the family's
    template, `packager eval --against-base` (generation stopping on the family's stop tokens), then
    `packager merge`, whose verification compares with PEFT's unmerged model. Gemma 2's template raises on the
    example task's system message, so its run sets data.system_policy, which the merged template keeps."""
    import json

    from packager.cli import cli
    from packager.models.system_policy import policy_of
    from packager.models.tokenizer import read_chat_template
    from packager.run.manifest import read_manifest
    from packager.run.verify import verify_run

    from support.runs import dry_run_train

    directory = checkpoints(name)
    policy = ARCHITECTURES[name].system_policy
    run_dir = dry_run_train(runner, tmp_path, directory, learning_rate=0.05, data={"system_policy": policy})
    adapter_cfg = json.loads((run_dir / "train" / "adapter" / "adapter_config.json").read_text())
    assert {m.rsplit(".", 1)[-1] for m in adapter_cfg["target_modules"]} == linear_layer_names(directory)
    evaluated = runner.invoke(cli, ["eval", str(run_dir), "--against-base", "--limit", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = read_manifest(run_dir).stages["eval"].metrics
    assert metrics["finetuned"]["rows"] == metrics["base"]["rows"] == 2
    merged = runner.invoke(cli, ["merge", str(run_dir)])
    assert merged.exit_code == 0, merged.output
    assert read_manifest(run_dir).stages["merge"].metrics["verification"]["greedy_agreement"] >= 0.98
    assert verify_run(run_dir).ok
    assert policy_of(read_chat_template(run_dir / "merged")) == policy
    manifest = read_manifest(run_dir)
    if name == "qwen3":  # a template with thinking blocks: the training answers' policy, and answers as seen
        assert manifest.stages["data"].metrics["thinking"]["policy"].startswith("answers without thinking")
        assert all("visible" in g for g in manifest.stages["merge"].metrics["golden"])
        assert "reasoning" in manifest.stages["eval"].metrics["finetuned"]
    else:
        assert "thinking" not in manifest.stages["data"].metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
@pytest.mark.parametrize("method", ["qlora", "full"])
def test_qlora_and_full_dry_runs_on_two_families(name, method, runner, tmp_path):
    from packager.run.manifest import read_manifest

    from support.runs import dry_run_train

    if method == "qlora":
        from bitsandbytes.functional import has_avx512bf16  # a dev dependency: `make test` installs it

        if name == "gemma3" and has_avx512bf16():
            # Known, not fixed yet: on a CPU with AVX512-BF16, bitsandbytes' 4-bit layers take a packed kernel in
            # eval, which fails on this tiny Gemma 3's layer sizes ("N must be divisible by block_n"; with the
            # packing turned off per layer, "shape '[64, 0]' is invalid"). Qwen 3's QLoRA still runs here.
            pytest.skip("bitsandbytes' AVX512-BF16 CPU kernels fail on the tiny Gemma 3's layer sizes")
    base = build_checkpoint(name, tmp_path / "base", hidden=64)
    run_dir = dry_run_train(runner, tmp_path, base, method=method)
    stage = read_manifest(run_dir).stages["train"]
    assert stage.parameters["method"] == method and stage.metrics["global_step"] == 3
    produced = "adapter/adapter_model.safetensors" if method == "qlora" else "model/model.safetensors"
    assert (run_dir / "train" / produced).is_file()


# Ollama TEMPLATE inference per family (with the data.system_policy its runs use): written and checked, or
# refused with the reason. The refusals are the structure model's; the chat-templates issue widens it.
OLLAMA_REFUSALS = {
    "qwen3": "user turns are not written the same way each time",  # <think> on the last assistant turn only
}


@pytest.mark.parametrize("name", MATRIX)
def test_the_ollama_template_is_inferred_and_checked_or_refused_by_name(name, checkpoints):
    from packager.errors import StageError
    from packager.models.chat_template import ChatTemplate
    from packager.models.system_policy import with_system_policy
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.ollama_parity import check_parity

    template = ChatTemplate.from_model_dir(checkpoints(name))
    template.source = with_system_policy(template.source, ARCHITECTURES[name].system_policy)
    if name in OLLAMA_REFUSALS:
        with pytest.raises(StageError, match=OLLAMA_REFUSALS[name]) as info:
            infer_chat_format(template)
        assert "containers.ollama.template" in info.value.hint
    else:
        check_parity(template, infer_chat_format(template))
