"""Training and evaluation on tiny random models (fast), and on the real SmolLM2 (slow)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packager.cli import cli
from packager.config import EvalConfig, load_config
from packager.stages.evaluate.metrics import check_gate, field_score, score
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run

from support.runs import dry_run_train, write_config
from support.runs import TICKET_FORMAT as FORMAT
from support.servers import free_port


def train_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "packager", "train", *args], capture_output=True, text=True, env=env)


def test_lora_dry_run_records_everything_the_run_needs(runner, tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    result = runner.invoke(cli, ["train", "-c", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    run_dir = load_config(config).run_dir
    adapter = run_dir / "train" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and adapter_cfg["lora_alpha"] == 16 and adapter_cfg["lora_dropout"] == 0.0
    assert {m.rsplit(".", 1)[-1] for m in adapter_cfg["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                                              "down_proj"}
    assert "<|im_start|>" in (adapter / "chat_template.jinja").read_text()
    log = json.loads((run_dir / "train" / "log.json").read_text())
    assert any("eval_loss" in e for e in log) and any("loss" in e for e in log)
    samples = [json.loads(l) for l in (run_dir / "train" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} >= {1, 2, 3} and any(s["final"] for s in samples)
    assert 'src="data:image/png;base64,' in (run_dir / "train" / "report.html").read_text()

    manifest = read_manifest(run_dir)
    data_stage, train_stage = manifest.stages["data"], manifest.stages["train"]
    assert data_stage.finished_at <= train_stage.started_at, "the split is recorded before training"
    split = {o.path: o.sha256 for o in data_stage.outputs}
    train_inputs = {i.path: i.sha256 for i in train_stage.inputs}
    assert train_inputs["data/train.jsonl"] == split["data/train.jsonl"]
    m = train_stage.metrics
    assert m["backend"] == "trl" and m["backend_reason"] == "auto: no CUDA device" and m["dry_run"] is True
    assert m["global_step"] == 3 and m["tokens_per_second"] > 0 and m["best_checkpoint"].startswith("checkpoint-")
    assert train_stage.parameters["config"]["train"]["method"] == "lora"
    assert any(i.path.endswith("model.safetensors") for i in train_stage.inputs), "base weights are recorded"
    assert verify_run(run_dir).ok

    train_rows = set((run_dir / "data" / "train.jsonl").read_text().splitlines())
    eval_rows = set((run_dir / "data" / "eval.jsonl").read_text().splitlines())
    assert eval_rows and not train_rows & eval_rows, "training never sees the eval rows"


def test_full_fine_tune_dry_run(runner, tmp_path, tiny_llama_dir):
    run_dir = dry_run_train(runner, tmp_path, tiny_llama_dir, method="full")
    assert (run_dir / "train" / "model" / "model.safetensors").is_file()
    assert not (run_dir / "train" / "adapter").exists()
    assert read_manifest(run_dir).stages["train"].parameters["config"]["train"]["learning_rate"] is None
    assert verify_run(run_dir).ok


def test_qlora_dry_run_on_cpu(runner, tmp_path, tiny_llama_64_dir):
    import bitsandbytes  # noqa: F401  (a dev dependency: `make test` installs it)

    run_dir = dry_run_train(runner, tmp_path, tiny_llama_64_dir, method="qlora")
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    stage = read_manifest(run_dir).stages["train"]
    assert stage.parameters["method"] == "qlora" and stage.metrics["global_step"] == 3
    assert len(stage.metrics["eval_losses"]) >= 1, "evaluation (eval mode, packed 4-bit kernels) ran mid-training"


def test_packed_rows_attend_within_each_sequence_only(tiny_llama_dir):
    """On CPU, packing keeps packed rows as rows; each sequence in a row must see only itself."""
    import torch
    from transformers import AutoModelForCausalLM

    from packager.stages.train.packing import for_the_model, packed_rows_collator

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    a, b, c = list(range(40, 47)), list(range(60, 65)), list(range(80, 89))
    batch = packed_rows_collator(pad_token_id=0)([
        {"input_ids": a + b, "labels": a + b, "seq_lengths": [len(a), len(b)]},
        {"input_ids": c, "labels": c, "seq_lengths": [len(c)]}])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"].sum() == len(a + b + c), "the Trainer counts every real token, none of the padding"
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(5))
    assert batch["labels"][0, 7] == -100, "the first token of a packed sequence is not predicted from the one before"
    assert batch["labels"][0, 1:7].tolist() == a[1:] and (batch["labels"][1, 9:] == -100).all()
    inputs = for_the_model(batch)
    assert "attention_mask" not in inputs
    with torch.inference_mode():
        packed = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
        for row, start, seq in [(0, 0, a), (0, len(a), b), (1, 0, c)]:
            alone = model(input_ids=torch.tensor([seq])).logits[0]
            torch.testing.assert_close(packed[row, start:start + len(seq)], alone, atol=1e-4, rtol=1e-4)


def test_packing_dry_run(runner, tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir, packing=True)
    result = runner.invoke(cli, ["train", "-c", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    stage = read_manifest(load_config(config).run_dir).stages["train"]
    assert stage.parameters["config"]["train"]["packing"] is True
    assert stage.metrics["global_step"] == 3 and stage.metrics["tokens_seen"] > 0


def test_bad_data_fails_before_any_model_loads(runner, tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    with open(tmp_path / "data.jsonl", "a") as f:
        f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    result = runner.invoke(cli, ["train", "-c", str(config)])
    assert result.exit_code == 2
    assert "data.jsonl:41 [messages]: no assistant turn" in result.output
    run_dir = load_config(config).run_dir
    assert not (run_dir / "data").exists() and not (run_dir / "train").exists()


def test_resume_needs_a_checkpoint(runner, tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    result = runner.invoke(cli, ["train", "-c", str(config), "--resume"])
    assert result.exit_code == 1 and "no checkpoint" in result.output


def test_unsloth_backend_is_refused_clearly_without_cuda(runner, tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir, backend="unsloth")
    result = runner.invoke(cli, ["train", "-c", str(config), "--dry-run"])
    assert result.exit_code == 1 and "no CUDA device" in result.output and "Traceback" not in result.output


def losses(run_dir: Path) -> list[tuple[int, float]]:
    log = json.loads((run_dir / "train" / "log.json").read_text())
    return [(e["step"], e["loss"]) for e in log if "loss" in e]


def test_a_run_killed_mid_training_resumes_from_its_checkpoint_with_the_same_trajectory(tmp_path, tiny_llama_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    steady = write_config(tmp_path / "a", tiny_llama_dir, max_steps=8)
    killed = write_config(tmp_path / "b", tiny_llama_dir, max_steps=8)
    assert train_cli("-c", str(steady)).returncode == 0

    run_dir = load_config(killed).run_dir
    checkpoints = run_dir / ".packager" / "train-work" / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "packager", "train", "-c", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (checkpoints / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "train" not in read_manifest(run_dir).stages and not (run_dir / "train").exists()
    assert verify_run(run_dir).ok

    resumed = train_cli("-c", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = read_manifest(run_dir).stages["train"].metrics
    assert metrics["resumed_from_step"] >= 4 and metrics["global_step"] == 8
    assert metrics["distributed"] == "NO"  # one process
    expected, got = losses(load_config(steady).run_dir), losses(run_dir)
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 9))
    for (_, a), (_, b) in zip(expected, got):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_score_and_gate():
    cfg = EvalConfig(format_regex=FORMAT, gate={"min_format_adherence": 0.5, "must_beat_base": True})
    ref = '{"category": "bug", "priority": "high", "summary": "App crashes"}'
    good = ref
    half = '{"category": "bug", "priority": "low", "summary": "Something else"}'
    assert field_score(half, ref) == pytest.approx(1 / 3)
    assert field_score("not json", ref) == 0.0 and field_score("x", "plain text") is None
    s = score([good, half, "nope"], [ref, ref, ref], cfg)
    assert s["exact_match"] == pytest.approx(1 / 3) and s["format_adherence"] == pytest.approx(2 / 3)
    assert s["field_accuracy"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert check_gate(cfg, s, {**s, "field_accuracy": 0.1})["passed"]
    failed = check_gate(cfg, s, {**s, "field_accuracy": 0.9})
    assert not failed["passed"] and "does not beat the base" in failed["failures"][0]
    low = check_gate(cfg, {**s, "format_adherence": 0.2}, None)
    assert len(low["failures"]) == 2


def test_eval_records_side_by_side_metrics_and_enforces_the_gate(runner, tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    assert runner.invoke(cli, ["train", "-c", str(config), "--dry-run"]).exit_code == 0
    run_dir = load_config(config).run_dir
    result = runner.invoke(cli, ["eval", str(run_dir), "--against-base", "--limit", "3"])
    # a random tiny model cannot produce the JSON format, so no gate is configured and it passes
    assert result.exit_code == 0, result.output
    assert "fine-tune" in result.output and "base" in result.output and "field_accuracy" in result.output
    stage = read_manifest(run_dir).stages["eval"]
    assert stage.metrics["finetuned"]["rows"] == 3 and stage.metrics["base"]["rows"] == 3
    assert stage.metrics["finetuned"]["perplexity"] > 1
    preds = [json.loads(l) for l in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and {"prompt", "reference", "finetuned", "base"} <= set(preds[0])
    assert verify_run(run_dir).ok


def accelerate_launch(*options: str, config: Path) -> subprocess.CompletedProcess:
    """`accelerate launch OPTIONS -m packager train -c CONFIG --dry-run` as two CPU processes over gloo."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", *options, "--num_machines", "1", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(free_port()), "-m", "packager", "train", "-c", str(config), "--dry-run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_process_distributed_run_through_accelerate(tmp_path, tiny_llama_dir):
    """A real 2-process data-parallel run on CPU (gloo), launched the way the README documents."""
    config = write_config(tmp_path, tiny_llama_dir)
    proc = accelerate_launch("--multi_gpu", "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend",
                             "no", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = load_config(config).run_dir
    metrics = read_manifest(run_dir).stages["train"].metrics
    assert metrics["world_size"] == 2 and metrics["global_step"] == 3
    assert metrics["distributed"] == "MULTI_CPU"  # recorded as Accelerate ran it
    assert "another packager process" not in proc.stderr, "only the main process records"
    # each rank saw half the batches: 2 processes x batch 2 per step
    assert metrics["tokens_seen"] > 0
    assert verify_run(run_dir).ok


FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_reshard_after_forward: true
"""


def test_an_fsdp_launch_on_cpu_is_refused_before_anything_is_written(tmp_path, tiny_llama_dir):
    """Accelerate shards with FSDP only on GPUs: two CPU processes launched with an FSDP config each trained a
    whole replica and the run said nothing of it. Both processes refuse, naming the way out."""
    config = write_config(tmp_path, tiny_llama_dir)
    (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG)
    proc = accelerate_launch("--config_file", str(tmp_path / "fsdp.yaml"), config=config)
    assert proc.returncode != 0
    assert proc.stderr.count("the accelerate config asks for FSDP, but these 2 processes run on CPU") == 2, \
        proc.stderr[-3000:]
    assert "--multi_gpu" in proc.stderr
    assert not load_config(config).run_dir.exists()


@pytest.mark.slow
def test_lora_on_smollm2_beats_the_base_on_the_example_task(runner, smollm2_trained_run):
    """The issue's bar: a CPU LoRA run of a few dozen steps measurably beats the base on a format task."""
    run_dir = smollm2_trained_run
    train = read_manifest(run_dir).stages["train"].metrics
    assert train["global_step"] == 30 and train["eval_losses"][-1] < train["eval_losses"][0]
    evaluated = runner.invoke(cli, ["eval", str(run_dir), "--against-base"])
    assert evaluated.exit_code == 0, evaluated.output  # the gate (beat the base, >= 80% format) passed
    m = read_manifest(run_dir).stages["eval"].metrics
    ft, base = m["finetuned"], m["base"]
    assert ft["field_accuracy"] > base["field_accuracy"] + 0.2
    assert ft["format_adherence"] > base["format_adherence"]
    assert ft["eval_loss"] < base["eval_loss"]
    assert m["gate"] == {"passed": True, "failures": []}
    assert verify_run(run_dir).ok
