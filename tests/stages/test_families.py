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


@pytest.mark.parametrize("name", MATRIX)
def test_gguf_export_keeps_the_chat_format_and_agrees_with_the_checkpoint(name, checkpoints, tmp_path):
    """llama.cpp's pinned converter writes the architecture, and llama.cpp computes what transformers does:
    teacher-forced top-1, KL and greedy answers within the f16 thresholds export applies."""
    from packager.models.tokenizer import read_chat_template
    from packager.stages.export.convert import convert_to_gguf
    from packager.stages.export.parity import (check_gguf_carries_chat_format, gguf_parity, parity_failures,
                                               reference_outputs)

    directory = checkpoints(name)
    out = tmp_path / f"{name}.gguf"
    convert_to_gguf(directory, out, outtype="f16", metadata={"name": f"tiny {name}"})
    stops = generation_stop_ids(directory)
    meta = check_gguf_carries_chat_format(out, chat_template=read_chat_template(directory), stop_ids=stops)
    assert meta["architecture"] == {"llama3": "llama", "qwen2.5": "qwen2", "mistral": "llama",
                                    "gptneox": "gptneox"}.get(name, name)
    parity = gguf_parity(out, reference_outputs(directory, CONVERSATIONS, stop_ids=stops))
    assert parity_failures("f16", parity) == [], parity
