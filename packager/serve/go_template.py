"""Go's own ``text/template``, as Ollama executes a TEMPLATE: a tiny renderer built once per source version."""

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


def render_go_template(template: str, data: dict) -> str:
    """Execute ``template`` with Go's text/template, as Ollama does, on ``data``."""
    result = _run([str(_go_binary())], input=json.dumps({"template": template, "data": data}),
                  timeout=GO_RENDER_TIMEOUT_S)
    if result.returncode != 0:
        raise StageError("ollama template", f"Go text/template failed: {result.stderr.strip()}")
    return result.stdout
