"""The user's container engine (Docker or Podman), driven through its CLI with argument lists, never a shell.

Both engines take the same ``build``, ``run``, ``image inspect``, ``logs`` and ``rm`` commands; the
differences (``--format docker`` so Podman keeps HEALTHCHECK, GPU flags) live here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from packager.errors import BadInputError, DependencyMissingError, StageError
from packager.process import CommandTimeout, run_command


ENGINES = ("docker", "podman")
QUICK_S = 60  # engine commands that only ask (version, inspect, logs): a daemon that takes longer is hung
# An image reference: [registry[:port]/]path[:tag][@sha256:digest], lowercase path. No shell metacharacters.
IMAGE_REF = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
                       r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")


def check_image_ref(ref: str, *, what: str = "image tag") -> str:
    if not IMAGE_REF.fullmatch(ref) or len(ref) > 255:
        raise BadInputError(f"{what} {ref!r} is not a valid image reference "
                            "(lowercase [registry/]name[:tag], letters, digits, . _ - / : only)")
    return ref


def qualified(ref: str) -> str:
    """``vllm/vllm-openai:v1`` -> ``docker.io/vllm/vllm-openai:v1``: Podman then never asks which registry."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"


@dataclass(frozen=True)
class Engine:
    name: str
    version: str

    def command(self, *args: str) -> list[str]:
        return [self.name, *args]


def _probe(name: str) -> Engine | None:
    if shutil.which(name) is None:
        return None
    try:
        result = run_command([name, "version", "--format", "{{.Server.Version}}" if name == "docker"
                              else "{{.Client.Version}}"], timeout_s=QUICK_S, what="container engine")
    except (OSError, CommandTimeout):
        return None  # a daemon that does not answer in time is as good as down
    if result.returncode != 0 or not result.stdout.strip():
        return None  # docker's client without a daemon lands here
    return Engine(name, result.stdout.strip())


def find_engine(preferred: str | None = None) -> Engine:
    """The engine named by flag or config, else the first of Docker and Podman that works."""
    names = [preferred] if preferred and preferred != "auto" else list(ENGINES)
    for name in names:
        engine = _probe(name)
        if engine is not None:
            return engine
    if preferred and preferred != "auto":
        if shutil.which(preferred) is None:
            raise DependencyMissingError(preferred, "to build and run images (--engine / containers.engine)",
                                         install="your system's package manager, or pick the other engine")
        raise StageError("container engine", f"`{preferred} version` fails: is its daemon running?",
                         hint="start it, or pick the other with --engine / containers.engine")
    raise DependencyMissingError("docker or podman", "to build and run images (the Docker client without a "
                                 "running daemon does not count)", install="apt install podman (or start Docker)")


def _run(engine: Engine, *args: str, timeout: float, what: str, setting: str | None = None) -> str:
    result = run_command(engine.command(*args), timeout_s=timeout, what=what, setting=setting)
    if result.returncode != 0:
        raise StageError(what, f"`{engine.name} {' '.join(args[:2])}` failed: {_tail(result.stderr or result.stdout)}")
    return result.stdout


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def build_image(engine: Engine, context: Path, tag: str, *, log_file: Path, timeout_s: float) -> dict:
    """Build ``context`` (its Dockerfile) as ``tag``; the whole log goes to ``log_file``.

    Raises:
        StageError: the build failed or ran out of ``timeout_s``; the message has the log's last lines.
    """
    # No RUN step of packager's Dockerfiles needs a network (the Ollama bake talks to its own server on
    # loopback): --network none proves it, and builds the same on an air-gapped runner or on a daemon without
    # a bridge network. The base image itself is still pulled when missing (containers.pull), by the engine.
    args = ["build", "--network", "none", "-t", tag, "-f", str(context / "Dockerfile")]
    if engine.name == "podman":
        args += ["--format", "docker"]  # the OCI format drops HEALTHCHECK
    args.append(str(context))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_file, "w") as log:
        result = run_command(engine.command(*args), timeout_s=timeout_s, what="build", stdout=log,
                             setting="containers.timeout_s")
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise StageError("build", f"{engine.name} build of {context} failed (exit {result.returncode}); last lines "
                                  f"of {log_file}:\n{_tail(log_file.read_text())}")
    info = inspect_image(engine, tag)
    cached = sum(1 for line in log_file.read_text().splitlines() if "Using cache" in line or "CACHED" in line)
    return {**info, "tag": tag, "seconds": round(seconds, 2), "cached_steps": cached}


def inspect_image(engine: Engine, ref: str) -> dict:
    out = _run(engine, "image", "inspect", ref, timeout=QUICK_S, what="image inspect")
    data = json.loads(out)[0]
    config = data.get("Config") or {}
    image_id = data.get("Id", "")  # Docker says sha256:HEX, Podman HEX: recorded one way whichever built it
    return {"image_id": image_id if image_id.startswith("sha256:") or not image_id else f"sha256:{image_id}",
            "digest": data.get("Digest") or next(iter(data.get("RepoDigests") or []), None),
            "size": data.get("Size"), "user": config.get("User"), "labels": config.get("Labels") or {},
            "layers": (data.get("RootFS") or {}).get("Layers") or [],
            "healthcheck": bool(config.get("Healthcheck") or data.get("Healthcheck") or data.get("HealthCheck"))}


def image_exists(engine: Engine, ref: str) -> bool:
    return run_command(engine.command("image", "inspect", ref), timeout_s=QUICK_S, what="image inspect").returncode == 0


def run_detached(engine: Engine, image: str, *, name: str, ports: dict[int, int] | None = None,
                 host_network: bool = False, env: dict[str, str] | None = None, gpus: bool = False,
                 shm_size: str | None = None, extra_args: tuple[str, ...] = (),
                 command: list[str] | None = None, labels: dict[str, str] | None = None,
                 timeout_s: float = 300) -> str:
    """Start a container of a local image in the background (never pulling: a missing image is an error, not a
    download); returns its id."""
    args = ["run", "-d", "--pull", "never", "--name", name]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    if host_network:
        args += ["--network", "host"]
    for host_port, container_port in (ports or {}).items():
        args += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    if gpus:
        args += ["--gpus", "all"] if engine.name == "docker" else ["--device", "nvidia.com/gpu=all"]
    if shm_size:
        args += ["--shm-size", shm_size]
    args += [*extra_args, image, *(command or [])]
    return _run(engine, *args, timeout=timeout_s, what="container start", setting="smoke.ready_timeout_s").strip()


def container_state(engine: Engine, container: str, *, timeout_s: float = QUICK_S) -> dict:
    """The container's state; an engine that does not answer in ``timeout_s`` fails the caller (a smoke test
    polls this while it waits for the server: a hung engine must not outlast smoke.ready_timeout_s)."""
    result = run_command(engine.command("inspect", "--format", "{{json .State}}", container), timeout_s=timeout_s,
                         what="container state")
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else {}


def container_logs(engine: Engine, container: str, lines: int = 30) -> str:
    try:
        result = run_command(engine.command("logs", "--tail", str(lines), container), timeout_s=QUICK_S,
                             what="container logs")
    except CommandTimeout as exc:
        return str(exc)
    return (result.stdout + result.stderr).strip()


def remove_container(engine: Engine, container: str) -> None:
    """Stop and remove; never raises (it runs in ``finally`` blocks). Podman's ``rm`` takes a stop timeout;
    Docker's has no ``-t`` and refused the whole command, leaving every smoke container running."""
    grace = ["-t", "5"] if engine.name == "podman" else []
    try:
        run_command(engine.command("rm", "-f", *grace, container), timeout_s=120, what="container removal",
                    env={**os.environ})
    except CommandTimeout:
        pass


def push_image(engine: Engine, tag: str, ref: str, *, timeout_s: float, insecure: bool = False) -> str:
    """Push ``tag`` as ``ref``; returns the pushed manifest digest."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        if engine.name == "podman":
            args = ["push", "--digestfile", str(digest_file)] + (["--tls-verify=false"] if insecure else [])
            _run(engine, *args, tag, ref, timeout=timeout_s, what="push image", setting="containers.timeout_s")
            return digest_file.read_text().strip()
        _run(engine, "tag", tag, ref, timeout=60, what="push image")
        out = _run(engine, "push", ref, timeout=timeout_s, what="push image", setting="containers.timeout_s")
        match = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
        return match.group(1) if match else ""
