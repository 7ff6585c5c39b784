"""The context every server gets (vLLM --max-model-len, Ollama num_ctx): the model's own, never below the
training length. Serving the training max length (256 in the demo) made Ollama drop the start of any longer
conversation silently, one of the most reported "my fine-tune is broken" causes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from packager.errors import ConfigError, StageError
from packager.serve.context import SERVED_CONTEXT_CAP, served_context_length


def cfg(trained, asked=None):
    return SimpleNamespace(trained_max_length=trained, containers=SimpleNamespace(context_length=asked))


@pytest.mark.parametrize("trained, asked, model_config, length, why", [
    (256, None, {"max_position_embeddings": 8192}, 8192, "the model's own limit (training used 256)"),
    (256, None, {"text_config": {"max_position_embeddings": 32768}}, 32768, "the model's own limit"),
    (2048, None, {"max_position_embeddings": 131072}, SERVED_CONTEXT_CAP, "the model supports 131072, served with"),
    (65536, None, {"max_position_embeddings": 131072}, 65536, "training used 65536"),
    (4096, None, {"max_position_embeddings": 2048}, 2048, "the model's own limit (training used 4096)"),
    (None, None, {"max_position_embeddings": 2048}, 2048, "the training length is not recorded"),
    (256, None, {}, 4096, "config.json gives no context limit"),
    (8192, None, {}, 8192, "config.json gives no context limit"),
    (256, None, {"n_positions": 1024, "n_ctx": 1024}, 1024, "the model's own limit"),  # GPT-2
    (256, 1024, {"max_position_embeddings": 8192}, 1024, "containers.context_length (training used 256"),
], ids=["small-model", "nested-text-config", "capped", "trained-beyond-cap", "model-below-training",
        "adapter-from-elsewhere", "unknown-limit", "unknown-limit-long-training", "gpt2", "asked"])
def test_each_server_gets_the_models_context(trained, asked, model_config, length, why):
    got, reason = served_context_length(cfg(trained, asked), model_config)
    assert got == length and why in reason


def test_a_context_beyond_the_model_is_refused():
    with pytest.raises(StageError, match="containers.context_length 16384 is beyond the model's limit 8192"):
        served_context_length(cfg(256, 16384), {"max_position_embeddings": 8192})


def test_a_context_below_the_training_length_is_a_config_error(tmp_path):
    from packager.config import parse_config

    data = {"base": {"model": str(tmp_path)}, "data": {"train": str(tmp_path / "t.jsonl"), "max_seq_length": 512},
            "containers": {"context_length": 256}}
    with pytest.raises(ConfigError, match="containers.context_length 256 is below data.max_seq_length 512"):
        parse_config(data)
