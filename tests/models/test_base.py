import json
import shutil

import pytest

from packager.models.checkpoint import inspect_checkpoint, record_base, resolve_base
from packager.models.gguf_import import import_gguf
from packager.config import BaseModelConfig
from packager.errors import InputFileError, MissingPathError, RunConflictError, UnsafeInputError
from packager.run.hashing import sha256_file
from packager.run.directory import Run
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run


def test_inspect_a_good_checkpoint(tiny_llama_dir):
    ckpt = inspect_checkpoint(tiny_llama_dir)
    assert ckpt.architecture == "LlamaForCausalLM" and ckpt.weight_format == "safetensors"
    names = {p.name for p in ckpt.files}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names


def test_pickle_only_checkpoints_are_refused_unless_allowed(tiny_llama_copy):
    (tiny_llama_copy / "model.safetensors").rename(tiny_llama_copy / "pytorch_model.bin")
    with pytest.raises(UnsafeInputError, match="pickle") as info:
        inspect_checkpoint(tiny_llama_copy)
    assert "allow_pickle" in info.value.hint and info.value.exit_code == 2
    assert inspect_checkpoint(tiny_llama_copy, allow_pickle=True).weight_format == "pickle"


def test_missing_pieces_are_named(tiny_llama_copy, tmp_path):
    with pytest.raises(MissingPathError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nowhere")
    (tiny_llama_copy / "tokenizer.json").unlink()
    with pytest.raises(MissingPathError, match="no tokenizer"):
        inspect_checkpoint(tiny_llama_copy)
    (tiny_llama_copy / "config.json").unlink()
    with pytest.raises(MissingPathError, match="no config.json"):
        inspect_checkpoint(tiny_llama_copy)


def test_no_weights_at_all(tiny_llama_copy):
    (tiny_llama_copy / "model.safetensors").unlink()
    with pytest.raises(MissingPathError, match="no weights"):
        inspect_checkpoint(tiny_llama_copy)


def test_a_hub_id_offline_gives_a_clear_error(monkeypatch, tmp_path):
    """Offline with an empty cache (this machine's own huggingface_hub cache may hold the model)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(MissingPathError) as info:
        resolve_base(BaseModelConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in str(info.value) and "local checkpoint" in info.value.hint


def test_record_base_hashes_every_weight_tokenizer_and_config_file(tiny_llama_dir, tmp_path):
    cfg = BaseModelConfig(model=str(tiny_llama_dir), hub_id="org/tiny")
    ckpt = resolve_base(cfg)
    run = Run.create(tmp_path / "run")
    with run.stage("base") as st:
        record_base(st, ckpt, cfg)
    stage = read_manifest(run.path).stages["base"]
    recorded = {rec.path: rec.sha256 for rec in stage.inputs}
    for file in ckpt.files:
        assert recorded[str(file.resolve())] == sha256_file(file).sha256
    assert stage.parameters["hub_id"] == "org/tiny" and stage.parameters["trust_remote_code"] is False
    assert stage.parameters["allow_pickle"] is False


def test_import_gguf_refuses_a_file_with_the_wrong_magic(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputFileError, match="not a GGUF file"):
        import_gguf(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_import_gguf_reports_a_truncated_file_and_leaves_nothing(tmp_path):
    from packager.models.example_base import example_gguf_path

    truncated = tmp_path / "truncated.gguf"
    with open(example_gguf_path(), "rb") as f:
        truncated.write_bytes(f.read(2_000_000))
    with pytest.raises(InputFileError, match="truncated"):
        import_gguf(truncated, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.gguf"]


@pytest.mark.parametrize("megabytes", [800, 1100], ids=["while-dequantizing", "while-rebuilding"])
def test_import_gguf_out_of_memory_is_said_as_such_and_leaves_nothing(tmp_path, megabytes):
    """Importing a GGUF dequantizes it to float32. A real `packager base import-gguf` with its data segment
    capped (RLIMIT_DATA) runs out of memory, once in transformers' dequantizing and once in the rebuild after
    it: neither is a truncated file nor an internal error (at 1100 MB it had been the latter)."""
    import subprocess
    import sys

    from packager.models.example_base import example_gguf_path

    limit = megabytes << 20  # util-linux's prlimit: no Python runs between fork and exec beside torch's threads
    done = subprocess.run(["prlimit", f"--data={limit}:{limit}", sys.executable, "-m", "packager", "base",
                           "import-gguf", str(example_gguf_path()), str(tmp_path / "imported")],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "error: base import-gguf: out of memory while converting" in done.stderr, done.stderr[-3000:]
    assert "truncated" not in done.stderr and "internal error" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_import_gguf_refuses_to_overwrite_something_else(tmp_path):
    from packager.models.example_base import example_gguf_path

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RunConflictError):
        import_gguf(example_gguf_path(), out)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_example_base_answers_paris_and_verifies(smollm2_dir):
    from packager.models.example_base import check_example_base

    assert "Paris" in check_example_base(smollm2_dir).split(" -> ", 1)[1]
    ckpt = inspect_checkpoint(smollm2_dir)
    assert ckpt.architecture == "LlamaForCausalLM"
    assert (smollm2_dir / "chat_template.jinja").read_text().count("<|im_start|>") >= 2
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>")]  # every token that ends a turn
    stage = read_manifest(smollm2_dir).stages["import-gguf"]
    (gguf,) = stage.inputs
    assert all(out.parents == (gguf.sha256,) for out in stage.outputs), "the GGUF is every file's parent"
    assert stage.parameters["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert verify_run(smollm2_dir).ok


@pytest.mark.slow
def test_example_import_is_idempotent_and_refuses_a_tampered_copy(smollm2_dir, tmp_path):
    from packager.models.example_base import make_example_base

    before = (smollm2_dir / "manifest.json").read_bytes()
    assert make_example_base(smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "manifest.json").read_bytes() == before, "an intact import is reused, not redone"
    copy = tmp_path / "copy"
    shutil.copytree(smollm2_dir, copy)
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(RunConflictError, match="not an intact import"):
        make_example_base(copy)
