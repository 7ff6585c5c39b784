"""``packager smoke RUN --target T``: the run's built image started here (and always removed), a local CPU server
standing in for it (``--local``), or a running endpoint (``--url``), checked against what the run recorded;
the report goes to ``RUN/smoke/<target>.json`` and stage ``smoke-<target>``."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import click

from packager.errors import MissingPathError, StageError
from packager.models.chat_template import ChatTemplate
from packager.models.stop_tokens import stop_token_texts
from packager.process import ChildProcess
from packager.run.artifacts import merged_model_dir
from packager.run.directory import Run
from packager.run.settings import deployment_config
from packager.serve.context import read_json, served_context_length
from packager.serve.endpoint import Expectations, SmokeReport, check_endpoint, format_report, openai_client
from packager.serve.engine import (QUICK_S, container_logs, container_state, find_engine, remove_container,
                                   run_detached)
from packager.serve.images import image_file
from packager.serve.llama_server import LlamaServer, llama_server_binary
from packager.serve.smoke_tools import check_tool_calls, tool_cases
from packager.serve.targets import TARGETS


SMOKE_LABEL = "dev.packager.smoke"
"""On every container a smoke test starts (its value: the run's name), so leftovers can be found by label."""


def expectations(run, cfg, target: str) -> Expectations:
    """Golden answers, stop texts and tokenizer of what ``target`` serves, as the run recorded them."""
    model_dir = merged_model_dir(run)
    specials = [t["content"] for t in json.loads((model_dir / "tokenizer.json").read_text()).get("added_tokens", [])
                if t.get("special")]
    return Expectations(golden=TARGETS[target].golden(run, cfg),
                        stop_texts=sorted(set(stop_token_texts(model_dir)) | set(specials)),
                        tokenizer_file=model_dir / "tokenizer.json",
                        min_agreement=getattr(cfg.smoke.min_token_agreement, target),
                        concurrency=cfg.smoke.concurrency,
                        request_options=TARGETS[target].request_options(run, cfg),
                        chat_template=ChatTemplate.from_model_dir(model_dir) if target == "ollama" else None,
                        tool_cases=tool_cases(run, target))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A CI job's SIGTERM unwinds like Ctrl-C, so the server or container is still stopped."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class ContainerOptions:
    engine: str | None = None
    host_network: bool = False
    gpus: bool | None = None  # None: when nvidia-smi is on this machine
    run_args: tuple[str, ...] = ()
    port: int | None = None


@contextmanager
def local_server(run, cfg, target: str, *, echo: Callable[[str], None] = click.echo):
    """Serve what ``target`` would serve with a local CPU server on 127.0.0.1; always stopped afterwards, and
    killed with packager even when packager is SIGKILLed (:mod:`packager.process`)."""
    import os

    port = free_port()
    server = TARGETS[target].local_server(run, cfg, port)
    log = run.path / ".packager" / "logs" / f"smoke-{target}-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    echo(f"starting {TARGETS[target].local_description} on 127.0.0.1:{port}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    try:
        with open(log, "w") as out, _sigterm_as_interrupt(), \
                ChildProcess(server.command, log=out, cwd=server.cwd, env=env) as child:
            def alive() -> str | None:
                if child.poll() is None:
                    return None
                return f"exit {child.returncode}; last lines of {log}:\n" + \
                    "\n".join(log.read_text().splitlines()[-15:])
            yield f"http://127.0.0.1:{port}", alive
    finally:
        if server.scratch is not None:
            shutil.rmtree(server.scratch, ignore_errors=True)


def served_context(run, cfg, target: str) -> dict:
    """The context the target's server is given: as its build context recorded it, else by the same rule."""
    recorded = run.manifest.stages.get(f"containerize-{target}")
    if recorded is not None and "context_length" in recorded.metrics:
        return {"length": recorded.metrics["context_length"], "why": recorded.metrics.get("context_note", "")}
    length, why = served_context_length(cfg, read_json(merged_model_dir(run) / "config.json"))
    return {"length": length, "why": why}


def smoke_run(run_dir: Path | str, *, target: str, url: str | None = None, model: str | None = None,
              options: ContainerOptions | None = None, config_path: Path | None = None, local: bool = False,
              echo: Callable[[str], None] = click.echo) -> SmokeReport:
    """``packager smoke RUN --target T [--url URL]``: check, write ``smoke/<target>.json``, record the stage.

    Raises:
        StageError: after recording, when a check failed.
    """
    run = Run.open(run_dir)
    cfg = deployment_config(run, config_path)
    expect = expectations(run, cfg, target)
    if not expect.golden:
        raise StageError("smoke", f"the run records no golden answers for {target}",
                         hint=f"re-run {'packager merge' if target == 'vllm' else 'packager export --format gguf'} "
                              f"with this version of packager")
    built = image_file(run, target)
    if url is None and not local and not built.is_file():
        raise MissingPathError(built, f"no {target} image was built for this run",
                               hint=f"run: packager containerize {run.path} --target {target} --build "
                                    "(or smoke a running server with --url URL --model NAME)")
    server = "url" if url else "local" if local else "image"
    with run.stage(f"smoke-{target}", parameters={"target": target, "url": url, "server": server}) as st:
        for file in TARGETS[target].served_files(run, cfg):  # a new merge or export makes this result stale
            st.add_input(file)
        if local:
            text_calls = target == "ollama"  # its stand-in returns calls as text: llama-server is asked for them
            with local_server(run, cfg, target, echo=echo) as (local_url, alive):
                report = check_endpoint(local_url, run.manifest.run,
                                        replace(expect, tool_cases=[]) if text_calls else expect, target=target,
                                        ready_timeout_s=cfg.smoke.ready_timeout_s, alive=alive, echo=echo)
            if text_calls and expect.tool_cases:
                check_tool_calls_on_llama_server(report, TARGETS[target].served_files(run, cfg), expect,
                                                 context=served_context(run, cfg, target)["length"])
            report.timings["server"] = TARGETS[target].local_description
        elif url is None:
            st.add_input(built)
            report = _smoke_container(run, cfg, target, json.loads(built.read_text()), expect,
                                      options or ContainerOptions(), echo=echo)
        else:
            report = check_endpoint(url, model or run.manifest.run, expect, target=target,
                                    ready_timeout_s=cfg.smoke.ready_timeout_s, echo=echo)
        report.context = served_context(run, cfg, target)
        st.write_output_text(f"smoke/{target}.json", json.dumps(report.to_dict(), indent=2) + "\n")
        st.metrics.update({"passed": report.passed, "failures": report.failures(), "timings": report.timings,
                           "checks": {c.name: ("skipped" if c.skipped else c.passed) for c in report.checks}})
    echo(format_report(report))
    if not report.passed:
        raise StageError("smoke", "; ".join(report.failures()),
                         hint=f"the full report is {run.path / 'smoke' / f'{target}.json'}")
    return report


def check_tool_calls_on_llama_server(report, served: list[Path], expect, *, context: int) -> None:
    """The tool-call check against llama-server on the served GGUF: for ``smoke --local`` of Ollama, whose stand-in
    (llama-cpp-python's server) returns calls as text. Skipped, saying so, where llama-server is not built or an
    adapter is served beside the GGUF."""
    binary = llama_server_binary()
    why = "llama-server is not built (make setup)" if binary is None else \
        "an adapter is served beside the GGUF" if len(served) > 1 else None
    if why:
        report.add("tool calls", False, f"not checked: {why}, and llama-cpp-python's server returns calls as text",
                   skipped=True)
        return
    with LlamaServer(served[0], binary=binary, ctx_size=context, threads=2) as server:
        check_tool_calls(report, openai_client(server.url), "served", expect)


def _smoke_container(run, cfg, target: str, image: dict, expect: Expectations, options: ContainerOptions,
                     *, echo) -> SmokeReport:
    """Start the built image, check it, and remove the container whatever happens."""
    engine = find_engine(options.engine or image.get("engine"))
    spec = TARGETS[target]
    port = options.port or free_port()
    command, env = spec.on_host_network(run, port) if options.host_network else (None, {})
    ports = None if options.host_network else {port: spec.port}
    gpus = options.gpus if options.gpus is not None else shutil.which("nvidia-smi") is not None
    name = f"packager-smoke-{run.manifest.run.lower()}-{target}-{secrets.token_hex(3)}"
    url = f"http://127.0.0.1:{port}"
    echo(f"starting {image['tag']} with {engine.name} as {name} ({url})")
    with _sigterm_as_interrupt():
        try:  # removed by name: a container whose start failed exists all the same, created but not running
            container = run_detached(engine, image["tag"], name=name, ports=ports, host_network=options.host_network,
                                     env=env, gpus=gpus, shm_size="8g" if spec.shm_size else None,
                                     extra_args=options.run_args, command=command,
                                     labels={SMOKE_LABEL: run.manifest.run}, timeout_s=cfg.smoke.ready_timeout_s)

            def alive() -> str | None:
                state = container_state(engine, container, timeout_s=min(QUICK_S, cfg.smoke.ready_timeout_s))
                if state.get("Running", True):
                    return None
                return f"container exited with {state.get('ExitCode')}; its last lines:\n" \
                       f"{container_logs(engine, container)}"

            report = check_endpoint(url, run.manifest.run, expect, target=target,
                                    ready_timeout_s=cfg.smoke.ready_timeout_s, alive=alive, echo=echo)
            report.timings["container"] = {"engine": engine.name, "image": image["tag"],
                                           "image_id": image.get("image_id"), "gpus": gpus}
            return report
        finally:
            remove_container(engine, name)
