"""The serving targets packager renders, builds and smoke-tests: a registry a test can walk."""

from __future__ import annotations

from packager.serve import ollama, vllm
from packager.serve.context import Target


TARGETS: dict[str, Target] = {"vllm": vllm.TARGET, "ollama": ollama.TARGET}
