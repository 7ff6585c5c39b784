"""The smoke test under load against real local servers, and the server always stopped afterwards: when the
smoke test passes, when it fails, and when it is interrupted (Ctrl-C or a CI runner's SIGTERM)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from packager.cli import cli
from packager.run.manifest import read_manifest

from support.runs import copy_run
from reliability_kit import packager_process, wait_for


def servers_on(port: int | str) -> list[int]:
    """Live processes serving on ``port`` (both local servers take it as --port)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if "zombie" not in state and b"--port" in args and args[args.index(b"--port") + 1] == str(port).encode():
            found.append(int(proc.name))
    return found


def announced_port(output: str) -> str | None:
    """The port of `packager smoke --local`'s server, from its "starting ... on 127.0.0.1:PORT" line."""
    match = re.search(r"starting .* on 127\.0\.0\.1:(\d+)", output)
    return match.group(1) if match else None


def stop_leftovers(port: str | None) -> None:
    """After a failed assertion, so a broken test does not leave a server running (a test's own mess only)."""
    for pid in servers_on(port) if port else []:
        os.kill(pid, signal.SIGKILL)


def serving_config(run: Path, path: Path, **smoke) -> Path:
    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["smoke"] = {**cfg.get("smoke", {}), **smoke}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_sixteen_concurrent_requests_against_a_real_server_all_checked(runner, smollm2_served_run, tmp_path):
    run = copy_run(smollm2_served_run, tmp_path / "smol")
    config = serving_config(run, tmp_path / "serve.yaml", concurrency=16)
    result = runner.invoke(cli, ["smoke", str(run), "--target", "ollama", "--local", "-c", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "smoke" / "ollama.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["16 concurrent requests"]["passed"], checks
    assert checks["16 concurrent requests"]["detail"].startswith("16/16 answered, 16/16 stopped")
    assert checks["golden answers"]["passed"] and checks["answers stop"]["passed"]
    assert not servers_on(announced_port(result.output)), "the server is stopped after a passing smoke test"


def test_sixteen_concurrent_requests_on_the_tiny_gguf_through_llama_cpps_server(runner, tiny_gguf_run, tmp_path):
    """Fast, on every run: the tiny GGUF served by llama.cpp's server answers 16 concurrent requests, every
    answer checked. A random model never stops and its near-tied logits can flip a greedy token between
    llama.cpp builds, so only those two checks may fail (the SmolLM2 test below must pass them all)."""
    run = copy_run(tiny_gguf_run, tmp_path / "t")
    config = serving_config(run, tmp_path / "serve.yaml", concurrency=16)
    cfg = yaml.safe_load(config.read_text())
    cfg["containers"] = {"ollama": {"quant": "f16"}}
    config.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(cli, ["smoke", str(run), "--target", "ollama", "--local", "-c", str(config)])
    report = json.loads((run / "smoke" / "ollama.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["16 concurrent requests"]["passed"], checks["16 concurrent requests"]
    assert checks["16 concurrent requests"]["detail"].startswith("16/16 answered")
    assert not checks["golden answers"]["skipped"] and len(report["answers"]) == 3  # 2 eval prompts + 1 general
    failed = {name for name, c in checks.items() if not c["passed"] and not c["skipped"]}
    assert failed <= {"answers stop", "golden answers"} and result.exit_code == (1 if failed else 0), result.output
    assert announced_port(result.output) and not servers_on(announced_port(result.output)), "stopped afterwards"


def test_the_server_is_stopped_when_the_smoke_test_fails(runner, run_copy):
    """A random tiny model served by a real `transformers serve`: it answers, never stops, and fails."""
    run = run_copy()
    result = runner.invoke(cli, ["smoke", str(run), "--target", "vllm", "--local"])
    assert result.exit_code == 1, result.output
    assert "answers stop" in result.output and "Traceback" not in result.output
    assert read_manifest(run).stages["smoke-vllm"].metrics["passed"] is False
    port = announced_port(result.output)
    assert port and not servers_on(port), "the server is stopped after a failing smoke test"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_the_server_is_stopped_when_the_smoke_test_is_interrupted(run_copy, tmp_path, sig):
    """Interrupted once the server answers, while the smoke test talks to it; killed outright, the server
    dies with it (it is started with a parent-death signal)."""
    import httpx2

    run = run_copy()
    out = tmp_path / "smoke.out"
    port = None
    try:  # the server is stopped after packager is, whatever happened
        with open(out, "w") as sink, packager_process("smoke", str(run), "--target", "vllm", "--local",
                                                      stdout=sink, stderr=subprocess.STDOUT) as proc:
            assert wait_for(lambda: announced_port(out.read_text()), timeout=120, proc=proc), out.read_text()
            port = announced_port(out.read_text())

            def answers() -> bool:
                try:
                    return httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200
                except Exception:
                    return False
            assert wait_for(answers, timeout=180, proc=proc, poll=0.2), out.read_text()
            assert servers_on(port), "the server runs"
            proc.send_signal(sig)
            proc.wait(timeout=60)
            assert wait_for(lambda: not servers_on(port), timeout=30), f"still serving on {port}"
    finally:
        stop_leftovers(port)
    output = out.read_text()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), output
    if sig != signal.SIGKILL:
        assert "interrupted" in output and "Traceback" not in output, output
    assert "smoke-vllm" not in read_manifest(run).stages
