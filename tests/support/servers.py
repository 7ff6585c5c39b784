"""Real servers on 127.0.0.1 for the tests, always stopped: packager's own launcher for processes, Debian's
docker-registry, and an HTTP server that answers garbage."""

from __future__ import annotations

import json
import shutil
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from packager.process import ChildProcess
from packager.serve.smoke import free_port

__all__ = ["GarbageHandler", "Registry", "Server", "free_port", "needs_registry"]


class Server:
    """A real server process on 127.0.0.1, started with packager's own launcher: it dies with the tests, and
    ``stop()`` (which the ``serve`` fixture always calls) ends its whole process group."""

    def __init__(self, command: list[str], port: int, *, cwd: Path | None = None, log: Path):
        import os

        env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "w") as out:
            self.child = ChildProcess(command, log=out, cwd=cwd, env=env)

    def stop(self) -> None:
        self.child.stop()


class Registry:
    def __init__(self, root: Path, *, users: dict[str, str] | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = {"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                  "http": {"addr": self.host}, "log": {"level": "error"}}
        if users:
            import bcrypt

            htpasswd = root / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                        for u, p in users.items()))
            config["auth"] = {"htpasswd": {"realm": "packager-tests", "path": str(htpasswd)}}
        (root / "config.yml").write_text(yaml.safe_dump(config))
        with open(root / "registry.log", "w") as log:
            self.child = ChildProcess(["docker-registry", "serve", str(root / "config.yml")], log=log)
        import requests

        for _ in range(100):
            try:
                requests.get(f"http://{self.host}/v2/", timeout=1)
                return
            except requests.exceptions.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()}")

    def stop(self) -> None:
        """Idempotent: a test may stop the registry to see a push fail; the fixture stops it again."""
        self.child.stop(grace_s=10)


def needs_registry():
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed (apt install docker-registry; .ci/run installs it)")


class GarbageHandler(BaseHTTPRequestHandler):
    """Answers 200 to everything: lists the model, then 'answers' that never stop and leak the stop token."""

    def log_message(self, *args):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "smol", "object": "model"}]})

    model, finish_reason, content = "other-model", "length", "lorem ipsum<|im_end|> dolor"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": self.model,
                    "choices": [{"index": 0, "finish_reason": self.finish_reason,
                                 "message": {"role": "assistant", "content": self.content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8}})
