"""Ollama's template execution (its ``template/template.go`` over Go's own ``text/template``), modelled in a tiny Go
program built once per source version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from packager.errors import DependencyMissingError, StageError
from packager.process import run_command


GO_RENDERER = Path(__file__).parent / "go" / "render_template.go"
GO_BUILD_TIMEOUT_S = 300
GO_RENDER_TIMEOUT_S = 60


def go_available() -> bool:
    return shutil.which("go") is not None


def _go_binary() -> Path:
    """Build the tiny renderer once per source version into packager's cache."""
    if not go_available():
        raise DependencyMissingError("go", "to render Ollama templates with Go's text/template",
                                     install="apt install golang-go")
    source = GO_RENDERER.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "packager"
    binary = cache / f"render-template-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        # Built beside its final name, so the rename stays on one file system (a tmpfs /tmp is another).
        built = cache / f".partial-{binary.name}-{os.getpid()}"
        try:
            with tempfile.TemporaryDirectory(prefix="packager-go-") as work:
                shutil.copy(GO_RENDERER, Path(work) / "main.go")
                env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(Path(work) / "cache"), "CGO_ENABLED": "0"}
                result = _run(["go", "build", "-o", str(built), "main.go"], cwd=work, env=env,
                              timeout=GO_BUILD_TIMEOUT_S)
                if result.returncode != 0:
                    raise StageError("ollama template", f"building the Go renderer failed: {result.stderr.strip()}")
            os.replace(built, binary)
        finally:
            built.unlink(missing_ok=True)
    return binary


def _run(command: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return run_command(command, timeout_s=timeout, what="ollama template", **kwargs)


def render_as_ollama(template: str, messages: list[dict], *, tools: list[dict] | None = None,
                     think: bool | str | None = None, date: str | None = None) -> str:
    """The prompt Ollama 0.32.15 makes of a chat request with ``template`` as its TEMPLATE: messages collated (one
    turn per run of a role, all system messages as .System), the data a map (a missing field prints
    "<no value>"), its functions (``currentDate`` gives ``date``, YYYY-MM-DD, default today), and the
    .Prompt/.Response path for templates that do not name .Messages. See go/render_template.go."""
    request = {"template": template, "messages": messages, "tools": tools, "think": think, "date": date or ""}
    result = _run([str(_go_binary())], input=json.dumps(request), timeout=GO_RENDER_TIMEOUT_S)
    if result.returncode != 0:
        raise StageError("ollama template", f"the TEMPLATE fails in Ollama's template execution: "
                                            f"{result.stderr.strip()}")
    return result.stdout


def ollama_tool_call_tag(template: str) -> str:
    """The text Ollama's tool-call parser waits for in the model's output before it reads a call, as Ollama
    reads it off ``template`` (tools/template.go ``parseTag``; see go/render_template.go): "{" where the
    TEMPLATE shows none, and then only output that starts with a JSON object becomes a call."""
    result = _run([str(_go_binary())], input=json.dumps({"template": template, "tag": True}),
                  timeout=GO_RENDER_TIMEOUT_S)
    if result.returncode != 0:
        raise StageError("ollama template", f"the TEMPLATE does not parse in Go: {result.stderr.strip()}")
    return result.stdout
