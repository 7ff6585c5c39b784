"""Shared by the reliability tests: a tiny trained, merged and exported run (built once per session), the CLI
as a user runs it (in process, or as a real process that can be killed), and real HTTP servers on 127.0.0.1
that misbehave on purpose and are always stopped.

Its fixtures reach the tests through tests/reliability/conftest.py; the helpers are imported from here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from support.models import build_tiny_llama_with_smollm2_tokenizer
from support.runs import copy_run

ROOT = Path(__file__).resolve().parents[2]
TINY_HUB_ID = "packager-tests/tiny-llama"  # a name for model cards; nothing is fetched
_BUILT: dict[str, Path] = {}  # one build per session, whichever module asks first


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a packager process in these tests: one CPU thread each, offline, no debug."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("PACKAGER_DEBUG", None)
    return env


@contextmanager
def packager_process(*args: str, env: dict[str, str] | None = None, **popen) -> Iterator[subprocess.Popen]:
    """``with packager_process(ARGS) as proc:`` runs ``python -m packager ARGS`` as a real process (so it can be
    killed or interrupted); whatever happens in the block, the process is killed and reaped when it ends."""
    proc = subprocess.Popen([sys.executable, "-m", "packager", *args], cwd=ROOT, env=env or subprocess_env(),
                            **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def packager_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "packager", *args], cwd=ROOT, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def tiny_config(directory: Path, base: Path, *, rows: int = 40, **train) -> Path:
    """support.runs.write_config's tiny config, with a Hub id for model cards and a high enough rate for the
    adapter to matter (merge verification refuses one that changes nothing)."""
    from support.runs import write_config

    path = write_config(directory, base, **{"learning_rate": 0.05, **train}, rows=rows)
    cfg = yaml.safe_load(path.read_text())
    cfg["base"]["hub_id"] = TINY_HUB_ID
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_llama_dir) -> Path:
    """A tiny LoRA run, dry-run trained, merged and exported as safetensors. Read-only: copy it (`copy_run`)."""
    if "run" not in _BUILT:
        from click.testing import CliRunner

        from packager.cli import cli
        from packager.config import load_config

        config = tiny_config(tmp_path_factory.mktemp("tiny-run"), tiny_llama_dir)
        run_dir = load_config(config).run_dir
        runner = CliRunner()
        for args in (["train", "-c", str(config), "--dry-run"], ["merge", str(run_dir)],
                     ["export", str(run_dir), "--format", "safetensors"]):
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, (args, result.output)
        _BUILT["run"] = run_dir
    return _BUILT["run"]


@pytest.fixture(scope="session")
def tiny_gguf_run(tmp_path_factory) -> Path:
    """Like `tiny_run`, on the tiny model with SmolLM2's tokenizer, also exported as an f16 GGUF. Read-only."""
    if "gguf-run" not in _BUILT:
        from click.testing import CliRunner

        from packager.cli import cli
        from packager.config import load_config

        directory = tmp_path_factory.mktemp("tiny-gguf-run")
        base = build_tiny_llama_with_smollm2_tokenizer(directory / "base")
        config = tiny_config(directory, base)
        cfg = yaml.safe_load(config.read_text())
        cfg["merge"] = {"verify_prompts": 2}  # the GGUF parity check replays as many prompts: keep it quick
        config.write_text(yaml.safe_dump(cfg))
        run_dir = load_config(config).run_dir
        runner = CliRunner()
        for args in (["train", "-c", str(config), "--dry-run"], ["merge", str(run_dir)],
                     ["export", str(run_dir), "--format", "gguf", "--quant", "f16"]):
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, (args, result.output)
        _BUILT["gguf-run"] = run_dir
    return _BUILT["gguf-run"]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run, named like the original (the manifest's run name)."""
    def make(name: str = "t") -> Path:
        return copy_run(tiny_run, tmp_path / "runs-copy" / name)
    return make


def digests_under(run_dir: Path, folder: str) -> dict[str, str]:
    """Recorded sha256 of every output under ``folder`` (as the manifest says)."""
    from packager.run.manifest import read_manifest

    return {o.path: o.sha256 for s in read_manifest(run_dir).stages.values() for o in s.outputs
            if o.path.startswith(folder)}


def finished_looking(run_dir: Path, folder: str) -> list[str]:
    """Entries at ``folder`` (its final name, not a .partial sibling) that exist in the run."""
    target = run_dir / folder
    return [str(target)] if target.exists() else []


# ---------------------------------------------------------------- servers that misbehave on purpose

class JSONHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class NeverReadyHandler(JSONHandler):
    """Accepts connections and answers 503 "loading" forever: a server stuck loading its model."""

    def do_GET(self):
        self.send_json({"error": "model is still loading"}, status=503)

    do_POST = do_GET


class NeverStopsHandler(JSONHandler):
    """Lists the model and answers every chat with plausible text that is always cut off by max_tokens."""

    model = "t"

    def do_GET(self):
        self.send_json({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self.send_json({"id": "x", "object": "chat.completion", "created": 0, "model": request.get("model"),
                        "choices": [{"index": 0, "finish_reason": "length",
                                     "message": {"role": "assistant", "content": "and so on and so on"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}})


@dataclass
class LocalServer:
    url: str
    server: ThreadingHTTPServer


@pytest.fixture
def http_server():
    """``http_server(Handler)``: a real HTTP server on 127.0.0.1 for this test, shut down afterwards."""
    started: list[ThreadingHTTPServer] = []

    def start(handler) -> LocalServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return LocalServer(f"http://127.0.0.1:{server.server_address[1]}", server)

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def wait_for(predicate, *, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.01) -> bool:
    """Poll until ``predicate()``; False when the process ended first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    return False


def no_engine_path(tmp_path: Path) -> str:
    """A PATH with this Python's tools but no docker or podman on it."""
    bare = tmp_path / "bin-without-engines"
    bare.mkdir(exist_ok=True)
    for tool in ("sh", "bash", "env", "true", "git"):
        found = shutil.which(tool)
        if found and not (bare / tool).exists():
            (bare / tool).symlink_to(found)
    return f"{Path(sys.executable).parent}:{bare}"


def copy_before(run_dir: Path, dest: Path, *, stages: tuple[str, ...], folders: tuple[str, ...]) -> Path:
    """A fresh copy of a run as it was before ``stages`` ran: their folders gone, their records dropped."""
    from packager.run.manifest import MANIFEST_NAME

    shutil.rmtree(dest, ignore_errors=True)
    copy_run(run_dir, dest)
    data = json.loads((dest / MANIFEST_NAME).read_text())
    data["stages"] = {k: v for k, v in data["stages"].items() if k not in stages}
    (dest / MANIFEST_NAME).write_text(json.dumps(data, indent=2))
    for folder in folders:
        shutil.rmtree(dest / folder, ignore_errors=True)
    return dest


def unmerged_copy(run_dir: Path, dest: Path) -> Path:
    """A copy of a trained run as it was before merging: no merged/ or export/, and no record of them."""
    return copy_before(run_dir, dest, stages=("merge", "export-safetensors", "export-gguf"),
                       folders=("merged", "export"))
