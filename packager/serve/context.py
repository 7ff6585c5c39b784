"""A serving build context, held in memory until it is written: rendered files, model files linked from the run,
and the per-target record that says how a target serves (its port, probes, local stand-in, golden answers).

``RUN/containers/<target>/`` is self-contained: Dockerfile, the model files (hard links to the run's files
where the file system allows), compose.yaml, kubernetes.yaml, provenance.json (and a Modelfile for Ollama).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import packager

from packager.models.checkpoint import context_limit
from packager.errors import StageError
from packager.templates import render


UID = 10001


@dataclass
class Context:
    """What to put in a build context: rendered text files and files linked from the run."""

    target: str
    served_name: str
    texts: dict[str, str] = field(default_factory=dict)
    links: dict[str, Path] = field(default_factory=dict)  # context path -> run file
    inputs: list[Path] = field(default_factory=list)  # files read to render, besides the linked ones
    command: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    model_digest: str = ""  # context_digest of the linked model files: what the image serves


@dataclass(frozen=True)
class LocalServer:
    """A CPU server on 127.0.0.1 that serves what the target's image would (``smoke --local``)."""

    command: list[str]
    cwd: Path | None = None
    scratch: Path | None = None  # a temporary directory to remove when the server stops


@dataclass(frozen=True)
class Target:
    """How one serving target is built, probed and smoke-tested. The registry is :data:`packager.serve.TARGETS`."""

    name: str
    port: int
    health_path: str  # what Kubernetes probes
    healthcheck: list[str]  # the image's and compose's HEALTHCHECK ({name}: the served model's name)
    start_period: str  # compose: how long loading may take before health counts
    startup_minutes: int  # Kubernetes: the startup probe's patience
    shm_size: tuple[str, str] | None  # (compose, Kubernetes) /dev/shm; vLLM's workers need it
    local_description: str  # what stands in for it on a CPU (smoke --local)
    context: Callable  # (run, cfg) -> Context
    golden: Callable  # (run, cfg) -> the golden answers its endpoint must reproduce
    served_files: Callable  # (run, cfg) -> the run files it serves
    local_server: Callable  # (run, cfg, port) -> LocalServer
    on_host_network: Callable  # (run, port) -> (command override or None, environment)
    gpus: Callable  # (cfg) -> GPUs to reserve
    request_options: Callable  # (run, cfg) -> extra fields every smoke request carries


def render_file(name: str, run, ctx: Context, **extra) -> str:
    """``templates/containers/<name>`` with what every context file names: run, version, model digest, user."""
    return render(f"containers/{name}", run=run.manifest.run, version=packager.__version__,
                  model_digest=ctx.model_digest, served_name=ctx.served_name, uid=UID, **extra)


def context_digest(files: dict[str, str]) -> str:
    """One digest for a build context: sha256 over its sorted ``path sha256`` lines."""
    lines = "".join(f"{path} {digest}\n" for path, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def links_digest(run, links: dict[str, Path]) -> str:
    return context_digest({rel: run.digest(source).sha256 for rel, source in links.items()})


def link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)  # the run's files are never rewritten in place, so a hard link is a safe copy
    except OSError:
        shutil.copy2(source, dest)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


SERVED_CONTEXT_CAP = 32768
"""The longest context served by default: a server reserves KV cache for all of it (an 8B Llama at 128k
tokens needs about 16 GB for it alone); containers.context_length asks for more."""
UNKNOWN_LIMIT_CONTEXT = 4096


def served_context_length(cfg, model_config: dict) -> tuple[int, str]:
    """The context length every server gets (vLLM --max-model-len, Ollama num_ctx), and why.

    The model's own limit, capped at :data:`SERVED_CONTEXT_CAP` unless ``containers.context_length`` says
    otherwise, never below the training length where the model allows it: a server that cuts a conversation
    shorter than the ones trained on drops its start silently (Ollama) or refuses it (vLLM).

    Raises:
        StageError: ``containers.context_length`` is beyond the model's limit.
    """
    trained, limit, asked = cfg.trained_max_length, context_limit(model_config), cfg.containers.context_length
    training = f"training used {trained}" if trained else "the training length is not recorded"
    if asked is not None:
        if limit is not None and asked > limit:
            raise StageError("containerize", f"containers.context_length {asked} is beyond the model's limit "
                                             f"{limit} (config.json)",
                             hint=f"set containers.context_length to {limit} or less")
        return asked, f"containers.context_length ({training}; the model supports {limit or 'an unknown length'})"
    if limit is None:
        length = max(trained or 0, UNKNOWN_LIMIT_CONTEXT)
        return length, (f"{length}: config.json gives no context limit ({training}); "
                        "set containers.context_length")
    if limit <= SERVED_CONTEXT_CAP or (trained is not None and trained >= limit):
        return limit, f"the model's own limit ({training})"
    length = max(SERVED_CONTEXT_CAP, trained or 0)
    return length, (f"the model supports {limit}, served with {length} ({training}; the KV cache grows with the "
                    "context: set containers.context_length for more)")


def provenance(run, target: str, model_digest: str, files: dict[str, str]) -> str:
    """``provenance.json``: what the image serves and where it came from, as the manifest recorded it."""
    record = {"run": run.manifest.run, "target": target, "model_digest": f"sha256:{model_digest}",
              "packager_version": packager.__version__, "files": files, **_lineage(run)}
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _lineage(run) -> dict:
    """Base (id, revision, file digests), adapter and merge recipe, as the manifest recorded them."""
    stages = run.manifest.stages
    source = stages.get("merge") or stages.get("train")
    lineage: dict = {}
    if source is not None:
        params = source.parameters
        lineage["base"] = {"model": params.get("base_model"), "hub_id": params.get("hub_id"),
                           "revision": params.get("revision"),
                           "files": {Path(i.path).name: i.sha256 for i in source.inputs
                                     if Path(i.path).is_absolute()}}
    if "train" in stages:
        lineage["adapter"] = {o.path: o.sha256 for o in stages["train"].outputs
                              if o.path.startswith(("train/adapter/", "train/model/"))}
        lineage["method"] = stages["train"].parameters.get("method")
    if "merge" in stages:
        lineage["merge"] = {k: stages["merge"].parameters.get(k) for k in ("dtype", "method", "base_weights")}
    return lineage
