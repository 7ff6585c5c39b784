"""``packager base import-gguf``: a GGUF file turned into an ordinary safetensors checkpoint, as a run of its own."""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from packager.errors import (InputFileError, MissingPathError, RunConflictError, StageError, first_line,
                             is_out_of_memory)
from packager.models.gguf import check_gguf_magic, read_gguf_metadata
from packager.models.stop_tokens import chat_stop_token_ids
from packager.run.atomic import partial_sibling, replace_directory
from packager.run.directory import Run
from packager.run.hashing import sha256_file
from packager.run.manifest import MANIFEST_NAME, read_manifest
from packager.run.verify import verify_run


def _existing_import(out_dir: Path, inputs: set[str]) -> bool:
    """True when ``out_dir`` already holds an import of these exact inputs (the GGUF, and the chat template
    file if any); raises if it holds anything else."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if (out_dir / MANIFEST_NAME).is_file():
        stage = read_manifest(out_dir).stages.get("import-gguf")
        if stage and {i.sha256 for i in stage.inputs} == inputs:
            if verify_run(out_dir).ok:
                return True
    raise RunConflictError(out_dir, "already exists and is not an intact import of this GGUF",
                           hint="choose another output directory or delete this one")


SHIPPED_CHAT_TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "chat"


def chat_template_file(value: Path | str) -> Path:
    """``value`` as a file, else the chat template packager ships under that name (templates/chat/)."""
    path = Path(value)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    shipped = SHIPPED_CHAT_TEMPLATES / f"{value}.jinja"
    return shipped if shipped.is_file() else path


def read_template_file(path: Path) -> str:
    """A chat template file's text, refused unless it parses as Jinja."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_CHAT_TEMPLATES.glob("*.jinja")))
        raise MissingPathError(path, f"chat template file does not exist (packager ships: {shipped})")
    text = path.read_text(encoding="utf-8")
    try:
        ImmutableSandboxedEnvironment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InputFileError(path, f"line {exc.lineno}: not a valid Jinja chat template: {exc.message}") from None
    return text


def _refuse_early(gguf: Path) -> dict:
    """What can be refused from the GGUF's header alone, before minutes of dequantizing: an architecture
    transformers' GGUF loader does not read. Returns the header fields."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    meta = read_gguf_metadata(gguf)
    if meta["architecture"] not in GGUF_CONFIG_MAPPING:
        readable = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})
        raise InputFileError(gguf, f"transformers cannot load GGUF architecture {meta['architecture']!r} "
                                   f"(it reads {', '.join(readable)})",
                             hint="convert the model's original safetensors checkpoint instead")
    return meta


def import_gguf(gguf: Path | str, out_dir: Path | str, *, dtype: str = "bfloat16",
                hub_id: str | None = None, chat_template: Path | str | None = None) -> Path:
    """Turn a GGUF file into a safetensors checkpoint with tokenizer and chat template.

    Uses transformers' GGUF loader, then drops ``quantization_config`` and rebuilds
    the model ``from_config`` so the result is an ordinary dense checkpoint. The
    output directory is a run of its own: its manifest records the GGUF (and the
    ``chat_template`` file, which replaces the GGUF's template or gives a base model
    one) as the parent of every file, and where the template came from; a base model
    without one imports too, recorded as such. Idempotent: an intact import of the same
    inputs is reused.
    """
    gguf, out_dir = Path(gguf).resolve(), Path(out_dir)
    check_gguf_magic(gguf)
    meta = _refuse_early(gguf)
    template_file = chat_template_file(chat_template).resolve() if chat_template is not None else None
    template = read_template_file(template_file) if template_file else None
    inputs = {sha256_file(gguf).sha256} | ({sha256_file(template_file).sha256} if template_file else set())
    if _existing_import(out_dir, inputs):
        return out_dir
    source = (f"the file {template_file.name}" if template_file else "the GGUF" if meta["chat_template"] else None)
    tmp = partial_sibling(out_dir)
    try:
        run = Run.create(tmp, name=_run_name_for(out_dir))
        with run.stage("import-gguf", parameters={"gguf": gguf.name, "dtype": dtype, "hub_id": hub_id,
                                                  "chat_template": source}) as st:
            st.add_input(gguf)
            if template_file:
                st.add_input(template_file)
            _convert_gguf(gguf, tmp, dtype=dtype, chat_template=template)
            st.metrics["chat_template"] = source
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


def _convert_gguf(gguf: Path, out_dir: Path, *, dtype: str, chat_template: str | None) -> None:
    with _out_of_memory_said(gguf):
        _write_dense_checkpoint(gguf, out_dir, dtype=dtype, chat_template=chat_template)


def _write_dense_checkpoint(gguf: Path, out_dir: Path, *, dtype: str, chat_template: str | None) -> None:
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
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    tokenizer.save_pretrained(out_dir)
    # every token that closes an assistant turn stops generation (Gemma's <end_of_turn>, not only <eos>)
    stops = chat_stop_token_ids(out_dir) if tokenizer.chat_template else [tokenizer.eos_token_id]
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stops,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    for file in out_dir.iterdir():
        if file.is_file():
            file.chmod(0o644)  # readable by a serving container's non-root user
