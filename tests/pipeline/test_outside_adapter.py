"""An adapter trained with another tool goes all the way: merged onto its base, exported, containerized,
smoke-tested and pushed, with every stage reading the base and settings from the merge record."""

import json
import shutil

import pytest
import yaml

from packager.cli import cli
from packager.publish.oci import pull_oci
from packager.run.directory import Run
from packager.run.manifest import read_manifest
from packager.run.settings import recorded_config
from packager.run.verify import verify_run

from support.models import build_tiny_llama_with_smollm2_tokenizer, make_adapter


def merge_outside_adapter(runner, adapter, base, run_dir, hub_id: str) -> None:
    merged = runner.invoke(cli, ["merge", "--adapter", str(adapter), "--base", str(base), "--out", str(run_dir),
                                 "--hub-id", hub_id])
    assert merged.exit_code == 0, merged.output
    run = Run.open(run_dir)
    assert "train" not in run.manifest.stages
    cfg = recorded_config(run)  # from the merge record
    assert cfg.base.model == str(base) and cfg.base.hub_id == hub_id and cfg.data is None


def export_and_serve(runner, run_dir, serving, *, quant: str) -> dict:
    """Export safetensors and a GGUF, render both contexts, smoke the GGUF on llama.cpp's server; the report."""
    for args in (["export", str(run_dir), "--format", "safetensors"],
                 ["export", str(run_dir), "--format", "gguf", "--quant", quant],
                 ["containerize", str(run_dir), "--target", "vllm"],
                 ["containerize", str(run_dir), "--target", "ollama", "-c", str(serving)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    smoke = runner.invoke(cli, ["smoke", str(run_dir), "--target", "ollama", "--local", "-c", str(serving)])
    report = json.loads((run_dir / "smoke" / "ollama.json").read_text())
    assert smoke.exit_code == (0 if report["passed"] else 1), smoke.output
    return report


def test_a_run_merged_from_an_outside_adapter_exports_serves_and_pushes(runner, tmp_path, registry):
    base = build_tiny_llama_with_smollm2_tokenizer(tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "their-lora")  # as another tool would leave it: no run, no config
    run_dir = tmp_path / "runs" / "imported"
    merge_outside_adapter(runner, adapter, base, run_dir, "packager-tests/tiny-llama")
    serving = tmp_path / "serving.yaml"  # deployment settings may come later, from a config of their own
    serving.write_text(yaml.safe_dump({"base": {"model": str(base)}, "containers": {"ollama": {"quant": "f16"}}}))
    report = export_and_serve(runner, run_dir, serving, quant="f16")
    # A random model never stops and its near-tied logits flip greedy tokens between llama.cpp's two front
    # ends, so only those two checks may fail here (the SmolLM2 test below must pass every one).
    assert {c["name"] for c in report["checks"] if not c["passed"] and not c["skipped"]} <= \
        {"answers stop", "golden answers"}

    card = (run_dir / "export" / "safetensors" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "packager-tests/tiny-llama" and front["base_model_relation"] == "finetune"
    stages = read_manifest(run_dir).stages
    assert stages["export-gguf"].metrics["parity"]["f16"]["passed"]
    command = stages["containerize-vllm"].metrics["command"]
    # the context length of a model trained elsewhere: the model's own limit, not a training length
    assert command[command.index("--max-model-len") + 1] == "2048"

    plan = runner.invoke(cli, ["push", "hub", str(run_dir), "--repo-id", "me/imported", "--what", "gguf",
                               "--dry-run"])
    assert plan.exit_code == 0, plan.output
    planned = json.loads((run_dir / ".packager" / "publish" / "hub-gguf.plan.json").read_text())
    assert {f["path"] for f in planned["files"]} >= {"imported-f16.gguf", "README.md", "template", "params"}
    ref = f"{registry.host}/models/imported:v1"
    pushed = runner.invoke(cli, ["push", "oci", str(run_dir), ref, "--what", "gguf", "--insecure"])
    assert pushed.exit_code == 0, pushed.output
    pull_oci(ref, tmp_path / "pulled", insecure=True)
    assert (tmp_path / "pulled" / "imported-f16.gguf").read_bytes() == \
        (run_dir / "export" / "gguf" / "imported-f16.gguf").read_bytes()
    assert verify_run(run_dir).ok


@pytest.mark.slow
def test_a_real_outside_adapter_passes_every_smoke_check(runner, tmp_path, smollm2_dir, smollm2_trained_run):
    """SmolLM2's ticket LoRA, copied out of its run as if another tool had trained it, served as f16.

    Not q8_0: with no held-out data, parity is measured on four generic prompts that share SmolLM2's default
    system prompt, where this adapter's near-tied logits put q8_0 at the threshold (0.94 teacher-forced top-1
    against 0.95, measured when masks stopped training the newline after <|im_end|>); packager's refusal there
    is its parity rule working, and whether it passes depends on the adapter's training, not on the path
    tested here."""
    adapter = shutil.copytree(smollm2_trained_run / "train" / "adapter", tmp_path / "their-lora")
    run_dir = tmp_path / "runs" / "smol-imported"
    merge_outside_adapter(runner, adapter, smollm2_dir, run_dir, "HuggingFaceTB/SmolLM2-135M-Instruct")
    serving = tmp_path / "serving.yaml"
    serving.write_text(yaml.safe_dump({"base": {"model": str(smollm2_dir)}, "smoke": {"concurrency": 2},
                                       "containers": {"ollama": {"quant": "f16"}}}))
    report = export_and_serve(runner, run_dir, serving, quant="f16")
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert verify_run(run_dir).ok
