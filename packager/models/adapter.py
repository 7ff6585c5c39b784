"""A PEFT LoRA adapter directory, read from its config and safetensors header: which base weight each tensor
changes, with what scale and rank. Reading it loads no tensor."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import InputFileError, MissingPathError
from packager.models.safetensors_stream import read_header


PEFT_PREFIX = "base_model.model."
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass
class LoraModule:
    """One adapted base weight: its A/B (and DoRA magnitude) tensors and scale."""

    base_key: str
    a_key: str
    b_key: str
    kind: str  # "linear" or "embedding"
    scale: float
    rank: int
    magnitude_key: str | None = None


@dataclass
class Adapter:
    path: Path
    config: dict
    modules: dict[str, LoraModule]  # by base weight key
    replacements: dict[str, str]  # base tensor key -> adapter tensor key (modules_to_save, resized embeddings)
    header: dict = field(repr=False, default_factory=dict)

    @property
    def file(self) -> Path:
        return self.path / "adapter_model.safetensors"

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])


def _matches(pattern_key: str, module: str) -> bool:
    return module == pattern_key or module.endswith("." + pattern_key) or re.fullmatch(pattern_key, module) is not None


def read_adapter(adapter_dir: Path | str) -> Adapter:
    """Read a PEFT LoRA adapter directory and map every tensor to the base weight it changes.

    Raises:
        MissingPathError / InputFileError: files missing, corrupt, or of an unsupported PEFT type.
    """
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise MissingPathError(adapter_dir, "not a PEFT adapter directory (no adapter_config.json)")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise MissingPathError(adapter_dir, "no adapter_model.safetensors (pickle adapter_model.bin is not accepted)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise InputFileError(config_file, f"invalid JSON: {exc}") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise InputFileError(config_file, f"peft_type {config.get('peft_type')!r} cannot be merged; only LoRA can",
                             field="peft_type")
    header = {k: v for k, v in read_header(weights).items() if k != "__metadata__"}
    modules, replacements = {}, {}
    for key in header:
        if not key.startswith(PEFT_PREFIX):
            raise InputFileError(weights, f"unexpected tensor name {key!r} (expected the {PEFT_PREFIX!r} prefix)",
                                 field=key)
        name = key[len(PEFT_PREFIX):]
        if "trainable_tokens" in name or "token_adapter" in name:
            raise InputFileError(weights, "trainable-token adapters cannot be merged by packager yet", field=key)
        lora = re.fullmatch(r"(.+)\.(lora_A|lora_embedding_A)(?:\.weight)?", name)
        if lora:
            module, kind = lora.group(1), "embedding" if "embedding" in lora.group(2) else "linear"
            b_key = key.replace("lora_embedding_A", "lora_embedding_B").replace("lora_A", "lora_B")
            if b_key not in header:
                raise InputFileError(weights, f"{key} has no matching {b_key}", field=key)
            magnitude = next((PEFT_PREFIX + f"{module}.lora_magnitude_vector{s}" for s in ("", ".weight")
                              if PEFT_PREFIX + f"{module}.lora_magnitude_vector{s}" in header), None)
            rank = header[key]["shape"][0]
            modules[f"{module}.weight"] = LoraModule(f"{module}.weight", key, b_key, kind,
                                                     _scale(config, module, rank, config_file), rank, magnitude)
        elif re.search(r"\.(lora_B|lora_embedding_B|lora_magnitude_vector)(\.weight)?$", name):
            continue
        else:
            replacements[name] = key
    if not modules and not replacements:
        raise InputFileError(weights, "holds no LoRA tensors")
    return Adapter(adapter_dir, config, modules, replacements, header)


def _scale(config: dict, module: str, rank: int, config_file: Path) -> float:
    """alpha / r (or alpha / sqrt(r) with rslora), honouring rank_pattern and alpha_pattern."""
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    expected_rank = next((r for k, r in rank_pattern.items() if _matches(k, module)), config.get("r", rank))
    if expected_rank != rank:
        raise InputFileError(config_file, f"module {module} has rank {rank} in the weights but "
                                                          f"{expected_rank} in adapter_config.json: the adapter "
                                                          "and its config do not belong together", field="r")
    alpha = next((a for k, a in alpha_pattern.items() if _matches(k, module)), config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
