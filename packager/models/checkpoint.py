"""Base models: a local Hugging Face checkpoint or a Hub id, inspected and recorded by digest."""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from pathlib import Path

from packager.config import BaseModelConfig
from packager.errors import InputFileError, MissingPathError, UnsafeInputError
from packager.hub_snapshot import download_snapshot
from packager.names import HUB_ID
from packager.run.directory import StageWriter
from packager.run.hashing import sha256_file


WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")
CONFIG_FILES = ("config.json", "generation_config.json")


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


# config.json's names for the longest sequence a model was built for: GPT-2 says n_positions (n_ctx in older files)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


def text_config(model_config: dict) -> dict:
    """The language model's part of a multimodal config.json (Gemma 3's ``text_config``), or {}."""
    nested = model_config.get("text_config")
    return nested if isinstance(nested, dict) else {}


def context_limit(model_config: dict) -> int | None:
    """The model's own context limit from config.json, at the top or in a nested text_config (Gemma 3,
    Llama 4...), under any of the names architectures use; None where config.json gives none."""
    for source in (model_config, text_config(model_config)):
        for key in _CONTEXT_KEYS:
            if isinstance(source.get(key), int):
                return source[key]
    return None


def read_context_limit(model_dir: Path) -> int | None:
    return context_limit(json.loads((Path(model_dir) / "config.json").read_text()))


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
    """The checkpoint files of ``repo_id`` at ``revision``, from the Hub or its cache, and their commit."""
    patterns = [*WEIGHT_PATTERNS, *TOKENIZER_FILES, *CONFIG_FILES]
    if allow_pickle:
        patterns += list(PICKLE_PATTERNS)
    return download_snapshot(repo_id, revision=revision, allow_patterns=patterns,
                             revision_hint="set base.revision to one of its branches or tags, or a full commit sha",
                             instead="a local checkpoint directory")


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


@dataclass(frozen=True)
class CheckpointListing:
    """``packager base inspect``: a checkpoint and the sha256 of each of its files."""

    checkpoint: Checkpoint
    files: dict[str, dict]  # path inside the checkpoint -> {"sha256", "size"}

    def to_json(self) -> dict:
        c = self.checkpoint
        return {"path": str(c.path), "hub_id": c.hub_id, "revision": c.revision, "architecture": c.architecture,
                "weight_format": c.weight_format, "files": self.files}

    def summary(self) -> str:
        c = self.checkpoint
        lines = [f"{c.path}: {c.architecture}, {c.weight_format} weights, {len(self.files)} files"]
        lines += [f"  {d['sha256'][:16]}  {d['size']:>12,}  {name}" for name, d in self.files.items()]
        return "\n".join(lines)


def list_checkpoint(model: str, *, allow_pickle: bool = False) -> CheckpointListing:
    """Resolve ``model`` (a directory or Hub id) and hash every file it is made of."""
    ckpt = resolve_base(BaseModelConfig(model=model, allow_pickle=allow_pickle))
    return CheckpointListing(ckpt, {str(f.relative_to(ckpt.path)): sha256_file(f).__dict__ for f in ckpt.files})
