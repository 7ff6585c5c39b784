"""Which trainer runs, on what device, in what precision: one visible rule, recorded with the run."""

from __future__ import annotations

from dataclasses import dataclass

from packager.errors import DependencyMissingError, StageError


@dataclass(frozen=True)
class Backend:
    name: str  # "trl" or "unsloth"
    reason: str
    device: str  # "cuda" or "cpu"
    bf16: bool = False  # compute in bfloat16 (CUDA devices that have it)
    precision: str = "float32"  # what was chosen and why, recorded with the run


def compute_precision(device: str) -> tuple[bool, str]:
    """bfloat16 on a CUDA device that has it, float32 elsewhere, and why (recorded with the run).

    A CPU stays in float32 even with AMX: bfloat16 autocast trained SmolLM2-135M no faster here (float32
    176 / 176 tokens/s, bf16 167 / 203 interleaved, on 2 cores with AMX and AVX512-BF16, though a bare bf16
    matmul ran 3.8x faster), and it
    rounds what the merge and the golden answers are then compared against.
    """
    import torch

    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, "bfloat16 (CUDA device supports it)"
        return False, "float32 (this CUDA device has no bfloat16)"
    return False, "float32 (CPU)"


def choose_backend(requested: str) -> Backend:
    """unsloth on CUDA when installed (or forced); the plain TRL path otherwise. Says why."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    bf16, precision = compute_precision(device)
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth":
        if not cuda:
            raise StageError("train", "train.backend is 'unsloth' but no CUDA device is available",
                             hint="set train.backend: auto (or trl) to train on this machine")
        if not has_unsloth:
            raise DependencyMissingError("unsloth", "for train.backend: unsloth", install="pip install 'packager[gpu]'")
        return Backend("unsloth", "forced by train.backend", device, bf16, precision)
    if requested == "trl":
        return Backend("trl", "forced by train.backend", device, bf16, precision)
    if cuda and has_unsloth:
        return Backend("unsloth", "auto: CUDA device and unsloth installed", device, bf16, precision)
    reason = "auto: " + ("unsloth not installed" if cuda else "no CUDA device")
    return Backend("trl", reason, device, bf16, precision)


def import_unsloth_first() -> list[str]:
    """Import Unsloth before transformers, TRL and PEFT, as it requires: it patches them when imported, and
    imported after them its optimisations are partly missing (``unsloth/_gpu_init.py`` warns then). Returns
    those already imported when it came (none in ``packager train``), which the run records."""
    import sys

    late = [name for name in ("trl", "transformers", "peft") if name in sys.modules]
    import unsloth  # noqa: F401

    return late
