"""``packager base import-gguf``: a GGUF file turned into an ordinary safetensors checkpoint, as a run of its own."""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from packager.errors import InputFileError, RunConflictError, StageError, first_line, is_out_of_memory
from packager.models.gguf import check_gguf_magic
from packager.run.atomic import partial_sibling, replace_directory
from packager.run.directory import Run
from packager.run.hashing import sha256_file
from packager.run.manifest import MANIFEST_NAME, read_manifest
from packager.run.verify import verify_run


def _existing_import(out_dir: Path, gguf_sha256: str) -> bool:
    """True when ``out_dir`` already holds an import of this exact GGUF; raises if it holds anything else."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if (out_dir / MANIFEST_NAME).is_file():
        stage = read_manifest(out_dir).stages.get("import-gguf")
        if stage and any(i.sha256 == gguf_sha256 for i in stage.inputs):
            if verify_run(out_dir).ok:
                return True
    raise RunConflictError(out_dir, "already exists and is not an intact import of this GGUF",
                           hint="choose another output directory or delete this one")


def import_gguf(gguf: Path | str, out_dir: Path | str, *, dtype: str = "bfloat16",
                hub_id: str | None = None) -> Path:
    """Turn a GGUF file into a safetensors checkpoint with tokenizer and chat template.

    Uses transformers' GGUF loader, then drops ``quantization_config`` and rebuilds
    the model ``from_config`` so the result is an ordinary dense checkpoint. The
    output directory is a run of its own: its manifest records the GGUF as the
    parent of every file. Idempotent: an intact import of the same GGUF is reused.
    """
    gguf, out_dir = Path(gguf).resolve(), Path(out_dir)
    check_gguf_magic(gguf)
    gguf_digest = sha256_file(gguf)
    if _existing_import(out_dir, gguf_digest.sha256):
        return out_dir
    tmp = partial_sibling(out_dir)
    try:
        run = Run.create(tmp, name=_run_name_for(out_dir))
        with run.stage("import-gguf", parameters={"gguf": gguf.name, "dtype": dtype, "hub_id": hub_id}) as st:
            st.add_input(gguf)
            _convert_gguf(gguf, tmp, dtype=dtype)
            for file in sorted(tmp.iterdir()):
                if file.is_file() and file.name != MANIFEST_NAME:
                    st.add_output(file)
        shutil.rmtree(tmp / ".packager", ignore_errors=True)  # its hash cache names the temporary path
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); replaced by the finished import
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _run_name_for(out_dir: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", out_dir.resolve().name).lstrip(".-_") or "imported"
    return name.replace("..", ".")[:128]


@contextmanager
def _out_of_memory_said(gguf: Path) -> Iterator[None]:
    """Running out of memory anywhere in the conversion (dequantizing, rebuilding, saving) is said as such."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise StageError("base import-gguf", f"out of memory while converting {gguf} ({first_line(exc)})",
                         hint="import on a machine with more memory: it is dequantized to float32") from None


def _convert_gguf(gguf: Path, out_dir: Path, *, dtype: str) -> None:
    with _out_of_memory_said(gguf):
        _write_dense_checkpoint(gguf, out_dir, dtype=dtype)


def _write_dense_checkpoint(gguf: Path, out_dir: Path, *, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        if is_out_of_memory(exc):
            raise
        raise InputFileError(gguf, f"transformers could not read this GGUF ({type(exc).__name__}: "
                                   f"{first_line(exc)}); "
                                   "it may be truncated or of an unsupported architecture") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise StageError("import-gguf", f"weights do not match the architecture: missing {missing[:3]}, "
                                        f"unexpected {unexpected[:3]}")
    del loaded
    if tokenizer.chat_template is None:
        raise InputFileError(gguf, "the GGUF carries no tokenizer.chat_template",
                             hint="set base.chat_template to a Jinja file when you train on this model")
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for file in out_dir.iterdir():
        if file.is_file():
            file.chmod(0o644)  # readable by a serving container's non-root user
