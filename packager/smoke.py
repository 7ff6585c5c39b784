"""Smoke test a serving endpoint: it must generate the right thing, not just answer 200 on /health.

Against a running endpoint (``--url``) or the run's built image, started here and always removed.
Through the OpenAI-compatible API (the official ``openai`` client) and, for Ollama, its native
``/api/chat``, it checks that answers are non-empty and stop (finish_reason ``stop``, no stop-token text in
the answer), that the served model name is right, that concurrent requests all succeed, and that greedy
answers reproduce the **golden answers** recorded when the model was made (:mod:`packager.golden`): from the
merged checkpoint for vLLM, from the served GGUF for Ollama.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from packager.errors import BadInputError, MissingPathError, StageError

FALLBACK_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
OPEN_MAX_TOKENS = 256
REQUEST_TIMEOUT_S = 300


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False


@dataclass
class SmokeReport:
    url: str
    model: str
    target: str | None
    checks: list[Check] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed or c.skipped for c in self.checks)

    def add(self, name: str, passed: bool, detail: str = "", *, skipped: bool = False) -> None:
        self.checks.append(Check(name, passed, detail, skipped))

    def to_dict(self) -> dict:
        return {"url": self.url, "model": self.model, "target": self.target, "passed": self.passed,
                "checks": [c.__dict__ for c in self.checks], "answers": self.answers, "timings": self.timings}

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed and not c.skipped]


@dataclass
class Expectations:
    """What the run says the endpoint must do."""

    golden: list[dict] = field(default_factory=list)
    stop_texts: list[str] = field(default_factory=list)
    tokenizer_file: Path | None = None
    min_agreement: float = 1.0
    concurrency: int = 8


# ---------------------------------------------------------------- talking to the endpoint

def _client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=url.rstrip("/") + "/v1", api_key="packager-smoke", timeout=REQUEST_TIMEOUT_S,
                  max_retries=0)


def _served_models(url: str) -> list[str]:
    import httpx2

    response = httpx2.get(url.rstrip("/") + "/v1/models", timeout=10)
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]


def wait_ready(url: str, model: str, *, timeout_s: float, alive: Callable[[], str | None] | None = None,
               echo: Callable[[str], None] = click.echo) -> float:
    """Poll ``/v1/models`` until ``model`` is listed; show progress; fail early when the server died.

    Raises:
        StageError: not ready within ``timeout_s``, or ``alive()`` reported the server gone.
    """
    started = time.monotonic()
    last_error, next_note = "no answer yet", started + 10
    while True:
        try:
            models = _served_models(url)
            if model in models:
                return time.monotonic() - started
            last_error = f"/v1/models lists {models}, not {model!r}"
        except Exception as exc:  # connection refused, 503 while loading, bad JSON
            last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if alive is not None and (dead := alive()) is not None:
            raise StageError("smoke", f"the server stopped before it was ready: {dead}")
        now = time.monotonic()
        if now - started > timeout_s:
            raise StageError("smoke", f"{url} was not ready after {timeout_s:.0f} s ({last_error})",
                             hint="raise smoke.ready_timeout_s if the model is large")
        if now >= next_note:
            echo(f"  waiting for {url} ({now - started:.0f} s; {last_error})")
            next_note = now + 10
        time.sleep(0.5)


def _chat(client, model: str, messages: list[dict], max_tokens: int) -> dict:
    started = time.monotonic()
    response = client.chat.completions.create(model=model, messages=messages, temperature=0, seed=0,
                                              max_tokens=max_tokens)
    choice = response.choices[0]
    usage = response.usage
    return {"text": choice.message.content or "", "finish_reason": choice.finish_reason, "model": response.model,
            "seconds": round(time.monotonic() - started, 3),
            "completion_tokens": usage.completion_tokens if usage else None}


def _tokenizer(path: Path | None):
    if path is None or not Path(path).is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def check_endpoint(url: str, model: str, expect: Expectations, *, target: str | None = None,
                   ready_timeout_s: float = 600, alive: Callable[[], str | None] | None = None,
                   echo: Callable[[str], None] = click.echo) -> SmokeReport:
    """Every check against a running endpoint; returns the report (it never raises for a failed check)."""
    from packager.models.golden import token_agreement

    report = SmokeReport(url, model, target)
    report.timings["ready_s"] = round(wait_ready(url, model, timeout_s=ready_timeout_s, alive=alive, echo=echo), 2)
    report.add("model listed", True, f"/v1/models lists {model!r}")
    client = _client(url)
    tokenizer = _tokenizer(expect.tokenizer_file)
    prompts = [(g["messages"], g) for g in expect.golden] or [(FALLBACK_QUESTION, None)]
    agreements = []
    for messages, golden in prompts:
        max_tokens = (len(golden["tokens"]) + 16 if golden["stopped"] else len(golden["tokens"])) if golden \
            else OPEN_MAX_TOKENS
        try:
            answer = _chat(client, model, messages, max_tokens)
        except Exception as exc:
            report.add("chat completion", False, f"{type(exc).__name__}: {str(exc)[:300]}")
            return report
        answer["question"] = messages[-1]["content"][:200]
        if golden is not None:
            got = tokenizer.encode(answer["text"], add_special_tokens=False).ids if tokenizer else None
            answer["golden"] = golden["text"]
            answer["exact"] = answer["text"] == golden["text"]
            answer["token_agreement"] = token_agreement(golden["tokens"], got) if got is not None else \
                float(answer["exact"])
            agreements.append(answer["token_agreement"])
        report.answers.append(answer)
    _answer_checks(report, expect, model)
    if agreements:
        mean = sum(agreements) / len(agreements)
        exact = sum(bool(a.get("exact")) for a in report.answers)
        report.add("golden answers", mean >= expect.min_agreement,
                   f"token agreement {mean:.3f} (min {expect.min_agreement}); {exact}/{len(agreements)} identical")
    else:
        report.add("golden answers", True, "no golden answers to compare (no run given)", skipped=True)
    _concurrency_check(report, client, model, prompts, expect.concurrency)
    if target == "ollama":
        _ollama_native_check(report, url, model, expect, prompts[-1][0])
    return report


def _answer_checks(report: SmokeReport, expect: Expectations, model: str) -> None:
    answers = report.answers
    empty = [a["question"] for a in answers if not a["text"].strip()]
    report.add("non-empty answers", not empty, f"empty answer to {empty[0]!r}" if empty else
               f"{len(answers)} answers")
    leaks = [(a["question"], s) for a in answers for s in expect.stop_texts if s and s in a["text"]]
    report.add("no stop-token text", not leaks, f"{leaks[0][1]!r} in the answer to {leaks[0][0]!r}" if leaks
               else f"none of {len(expect.stop_texts)} special tokens ({', '.join(expect.stop_texts[:3])}"
                    f"{', ...' if len(expect.stop_texts) > 3 else ''}) in any answer")
    should_stop = [a for a, g in zip(answers, expect.golden or [None] * len(answers)) if g is None or g["stopped"]]
    running = [a["question"] for a in should_stop if a["finish_reason"] != "stop"]
    report.add("answers stop", bool(should_stop) and not running,
               f"finish_reason was not 'stop' for {running[0]!r} (the stop token is not honoured)" if running else
               f"{len(should_stop)} answers ended with finish_reason 'stop'")
    names = sorted({a["model"] for a in answers})
    report.add("served model name", names == [model], f"responses name {names}, expected {model!r}")
    seconds = [a["seconds"] for a in answers]
    tokens = sum(a["completion_tokens"] or 0 for a in answers)
    report.timings.update({"requests": len(answers), "mean_latency_s": round(sum(seconds) / len(seconds), 3),
                           "completion_tokens_per_s": round(tokens / sum(seconds), 2) if sum(seconds) else None})


def _concurrency_check(report: SmokeReport, client, model: str, prompts: list, n: int) -> None:
    jobs = [prompts[i % len(prompts)] for i in range(n)]
    started = time.monotonic()

    def one(job):
        messages, golden = job
        try:
            answer = _chat(client, model, messages, len(golden["tokens"]) + 16 if golden else OPEN_MAX_TOKENS)
            return answer["text"].strip() != "" and (golden is None or not golden["stopped"] or
                                                     answer["finish_reason"] == "stop"), None
        except Exception as exc:
            return False, f"{type(exc).__name__}: {str(exc)[:200]}"

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, jobs))
    ok = sum(1 for good, _ in results if good)
    errors = [e for _, e in results if e]
    report.timings["concurrent_s"] = round(time.monotonic() - started, 2)
    report.add(f"{n} concurrent requests", ok == n, f"{ok}/{n} answered and stopped" +
               (f"; first error: {errors[0]}" if errors else ""))


def _ollama_native_check(report: SmokeReport, url: str, model: str, expect: Expectations,
                         messages: list[dict]) -> None:
    import httpx2

    base = url.rstrip("/")
    try:
        version = httpx2.get(base + "/api/version", timeout=10)
    except Exception as exc:
        version = None
        why = f"{type(exc).__name__}"
    if version is None or version.status_code != 200:
        why = f"GET /api/version answered {version.status_code}" if version is not None else why
        report.add("ollama /api/chat", False, f"not checked: the server at {url} is not Ollama ({why})",
                   skipped=True)
        return
    response = httpx2.post(base + "/api/chat", timeout=REQUEST_TIMEOUT_S, json={
        "model": model, "messages": messages, "stream": False, "options": {"temperature": 0, "seed": 0}})
    body = response.json() if response.status_code == 200 else {}
    text = (body.get("message") or {}).get("content", "")
    leaks = [s for s in expect.stop_texts if s and s in text]
    good = response.status_code == 200 and text.strip() and body.get("done_reason") == "stop" and not leaks
    report.add("ollama /api/chat", bool(good), f"status {response.status_code}, done_reason "
               f"{body.get('done_reason')!r}, {len(text)} characters" + (f", leaked {leaks}" if leaks else ""))


# ---------------------------------------------------------------- from a run

def expectations(run, cfg, target: str) -> Expectations:
    """Golden answers, stop texts and tokenizer of what ``target`` serves, as the run recorded them."""
    from packager.containerize import served_model_dir
    from packager.models.stop_tokens import stop_token_texts
    from packager.models.gguf import canonical_quant

    model_dir = served_model_dir(run)
    if target == "vllm":
        merge = run.manifest.stages.get("merge")
        golden = merge.metrics.get("golden", []) if merge else []
    elif cfg.containers.ollama.serve_mode == "lora":  # the base GGUF + the LoRA GGUF, as exported together
        export = run.manifest.stages.get("export-adapter-gguf")
        golden = export.metrics.get("parity", {}).get("golden", []) if export else []
    else:
        export = run.manifest.stages.get("export-gguf")
        parity = export.metrics.get("parity", {}).get(canonical_quant(cfg.containers.ollama.quant), {}) \
            if export else {}
        golden = parity.get("golden", [])
    specials = [t["content"] for t in json.loads((model_dir / "tokenizer.json").read_text()).get("added_tokens", [])
                if t.get("special")]
    return Expectations(golden=golden, stop_texts=sorted(set(stop_token_texts(model_dir)) | set(specials)),
                        tokenizer_file=model_dir / "tokenizer.json",
                        min_agreement=getattr(cfg.smoke.min_token_agreement, target),
                        concurrency=cfg.smoke.concurrency)


def served_files(run, cfg, target: str) -> list[Path]:
    """The model files ``target`` serves: the merged checkpoint for vLLM, the GGUF(s) for Ollama."""
    from packager.containerize import _passed_gguf, served_model_dir

    if target == "vllm":
        return sorted(p for p in served_model_dir(run).iterdir() if p.is_file())
    if cfg.containers.ollama.serve_mode == "lora":
        folder = run.path / "export" / "adapter-gguf"
        return [folder / f"{run.manifest.run}-base-f16.gguf", folder / f"{run.manifest.run}-lora.gguf"]
    return [_passed_gguf(run, cfg.containers.ollama.quant)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _sigterm_as_interrupt():
    """A CI job's SIGTERM unwinds like Ctrl-C, so the container is still removed."""
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


LOCAL_SERVERS = {"vllm": "transformers serve on the merged checkpoint (CPU; stands in for vLLM, which needs a GPU)",
                 "ollama": "llama.cpp's OpenAI-compatible server on the served GGUF (the engine Ollama runs)"}


@contextmanager
def local_server(run, cfg, target: str, *, echo: Callable[[str], None] = click.echo):
    """Serve what ``target`` would serve with a local CPU server on 127.0.0.1; always stopped afterwards."""
    import os
    import subprocess
    import sys

    from packager.containerize import served_model_dir
    from packager.llamacpp import die_with_parent

    port, name = free_port(), run.manifest.run
    scratch = None
    if target == "vllm":
        # transformers serve answers to the path it serves: a link named like the served model, outside the
        # run (a link inside it would be signed, and model-signing refuses links)
        scratch = folder = Path(tempfile.mkdtemp(prefix="packager-serve-"))
        (folder / name).symlink_to(served_model_dir(run).resolve())
        exe = Path(sys.executable).parent / "transformers"
        # float32, as the golden answers were recorded: the weights' own bf16 flips near-tie tokens on a CPU
        command = [str(exe), "serve", name, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                   "--dtype", "float32"]
        cwd = folder
    else:
        from packager.containerize import _passed_gguf

        ocfg = cfg.containers.ollama
        if ocfg.serve_mode == "lora":
            folder = run.path / "export" / "adapter-gguf"
            model, extra = folder / f"{name}-base-f16.gguf", ["--lora_path", str(folder / f"{name}-lora.gguf")]
        else:
            model, extra = _passed_gguf(run, ocfg.quant), []
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", name,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(max(2048, cfg.data.max_seq_length)),
                   "--n_threads", str(min(4, os.cpu_count() or 1)), *extra]
        cwd = None
    log = run.path / ".packager" / "logs" / f"smoke-{target}-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    echo(f"starting {LOCAL_SERVERS[target]} on 127.0.0.1:{port}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with open(log, "w") as out, _sigterm_as_interrupt():
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=die_with_parent)  # even when SIGKILLed
        try:
            def alive() -> str | None:
                if process.poll() is None:
                    return None
                return f"exit {process.returncode}; last lines of {log}:\n" + \
                    "\n".join(log.read_text().splitlines()[-15:])
            yield f"http://127.0.0.1:{port}", alive
        finally:
            import signal as signals

            if process.poll() is None:
                os.killpg(process.pid, signals.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signals.SIGKILL)
                    process.wait()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def smoke_run(run_dir: Path | str, *, target: str, url: str | None = None, model: str | None = None,
              options: ContainerOptions | None = None, config_path: Path | None = None, local: bool = False,
              echo: Callable[[str], None] = click.echo) -> SmokeReport:
    """``packager smoke RUN --target T [--url URL]``: check, write ``smoke/<target>.json``, record the stage.

    Raises:
        StageError: after recording, when a check failed.
    """
    from packager.run.settings import deployment_config
    from packager.run.directory import Run

    run = Run.open(run_dir)
    cfg = deployment_config(run, config_path)
    expect = expectations(run, cfg, target)
    if not expect.golden:
        raise StageError("smoke", f"the run records no golden answers for {target}",
                         hint=f"re-run {'packager merge' if target == 'vllm' else 'packager export --format gguf'} "
                              f"with this version of packager")
    image_file = run.path / "containers" / f"{target}-image.json"
    if url is None and not local and not image_file.is_file():
        raise MissingPathError(image_file, f"no {target} image was built for this run",
                               hint=f"run: packager containerize {run.path} --target {target} --build "
                                    "(or smoke a running server with --url URL --model NAME)")
    server = "url" if url else "local" if local else "image"
    with run.stage(f"smoke-{target}", parameters={"target": target, "url": url, "server": server}) as st:
        for file in served_files(run, cfg, target):  # a new merge or export makes this result stale
            st.add_input(file)
        if local:
            with local_server(run, cfg, target, echo=echo) as (local_url, alive):
                report = check_endpoint(local_url, run.manifest.run, expect, target=target,
                                        ready_timeout_s=cfg.smoke.ready_timeout_s, alive=alive, echo=echo)
            report.timings["server"] = LOCAL_SERVERS[target]
        elif url is None:
            st.add_input(image_file)
            image = json.loads(image_file.read_text())
            report = _smoke_container(run, cfg, target, image, expect, options or ContainerOptions(), echo=echo)
        else:
            report = check_endpoint(url, model or run.manifest.run, expect, target=target,
                                    ready_timeout_s=cfg.smoke.ready_timeout_s, echo=echo)
        st.write_output_text(f"smoke/{target}.json", json.dumps(report.to_dict(), indent=2) + "\n")
        st.metrics.update({"passed": report.passed, "failures": report.failures(), "timings": report.timings,
                           "checks": {c.name: ("skipped" if c.skipped else c.passed) for c in report.checks}})
    echo(format_report(report))
    if not report.passed:
        raise StageError("smoke", "; ".join(report.failures()),
                         hint=f"the full report is {run.path / 'smoke' / f'{target}.json'}")
    return report


def _smoke_container(run, cfg, target: str, image: dict, expect: Expectations, options: ContainerOptions,
                     *, echo) -> SmokeReport:
    import secrets
    import shutil

    from packager.containerize import OLLAMA_PORT, VLLM_PORT
    from packager.engine import (container_logs, container_state, find_engine, remove_container,
                                 run_detached)

    engine = find_engine(options.engine or image.get("engine"))
    port = options.port or free_port()
    command = None
    env = {}
    if options.host_network:
        if target == "vllm":
            command = [*run.manifest.stages[f"containerize-{target}"].metrics["command"],
                       "--host", "127.0.0.1", "--port", str(port)]
        else:
            env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    ports = None if options.host_network else {port: VLLM_PORT if target == "vllm" else OLLAMA_PORT}
    gpus = options.gpus if options.gpus is not None else shutil.which("nvidia-smi") is not None
    name = f"packager-smoke-{run.manifest.run.lower()}-{target}-{secrets.token_hex(3)}"
    url = f"http://127.0.0.1:{port}"
    echo(f"starting {image['tag']} with {engine.name} as {name} ({url})")
    with _sigterm_as_interrupt():
        container = run_detached(engine, image["tag"], name=name, ports=ports, host_network=options.host_network,
                                 env=env, gpus=gpus, shm_size="8g" if target == "vllm" else None,
                                 extra_args=options.run_args, command=command)
        try:
            def alive() -> str | None:
                state = container_state(engine, container)
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
            remove_container(engine, container)


def smoke_url(url: str, model: str, *, target: str | None = None, concurrency: int = 8,
              ready_timeout_s: float = 600, echo: Callable[[str], None] = click.echo) -> SmokeReport:
    """``packager smoke --url URL --model NAME`` without a run: every check but the golden answers."""
    if not url.startswith(("http://", "https://")):
        raise BadInputError(f"--url {url!r} must start with http:// or https://")
    report = check_endpoint(url, model, Expectations(concurrency=concurrency), target=target,
                            ready_timeout_s=ready_timeout_s, echo=echo)
    echo(format_report(report))
    if not report.passed:
        raise StageError("smoke", "; ".join(report.failures()))
    return report


def format_report(report: SmokeReport) -> str:
    lines = [f"smoke test of {report.model} at {report.url}:"]
    for c in report.checks:
        mark = "skip" if c.skipped else ("ok" if c.passed else "FAIL")
        lines.append(f"  [{mark:>4}] {c.name}: {c.detail}")
    t = report.timings
    lines.append(f"  ready in {t.get('ready_s')} s; mean latency {t.get('mean_latency_s')} s; "
                 f"{t.get('completion_tokens_per_s')} tokens/s; concurrent batch {t.get('concurrent_s')} s")
    return "\n".join(lines)
