"""Secrets and containment: what reaches files, images, shells and file paths.

* No secret from the environment reaches a file of the run, a log, a rendered file or a layer of the built
  image (the full deploy's file scan is in tests/publish/test_publish.py; the image layers are scanned here, after a
  real Podman build with the secrets set).
* Rendered images run as a non-root user and name their base by pinned tag (and digest when configured).
* trust_remote_code is never enabled implicitly; pickle weights need an explicit flag, recorded.
* No subprocess is started through a shell, so user text never meets one.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from packager.cli import cli
from packager.run.manifest import read_manifest

from reliability_kit import ROOT, tiny_config

SECRETS = {"HF_TOKEN": "hf_reliabilityTestSecret9876543210", "PACKAGER_REGISTRY_USERNAME": "ci-robot-user",
           "PACKAGER_REGISTRY_PASSWORD": "registry-Secret-Reliability-99"}
PACKAGE = ROOT / "packager"


def dockerfile_directives(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def final_user(directives: list[tuple[str, str]]) -> str:
    users = [arg.strip() for name, arg in directives if name == "USER"]
    assert users, "the image never leaves root"
    return users[-1]


def test_rendered_images_run_as_non_root_from_a_pinned_base_and_the_digest_when_configured(runner, run_copy,
                                                                                          tmp_path):
    run = run_copy()
    digest = "sha256:" + "ab" * 32
    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["containers"] = {"vllm": {"image": f"vllm/vllm-openai:v0.33.0@{digest}"}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    for extra in ([], ["-c", str(tmp_path / "serve.yaml")]):
        result = runner.invoke(cli, ["containerize", str(run), "--target", "vllm", *extra])
        assert result.exit_code == 0, result.output
        text = (run / "containers" / "vllm" / "Dockerfile").read_text()
        directives = dockerfile_directives(text)
        user = final_user(directives)
        assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit(), user
        base = next(arg for name, arg in directives if name == "ARG" and arg.startswith("BASE_IMAGE="))
        image = base.split("=", 1)[1]
        assert re.fullmatch(r"docker\.io/vllm/vllm-openai:v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), image
        assert ":latest" not in text and (digest in image) == bool(extra)
        compose = (run / "containers" / "vllm" / "compose.yaml").read_text()
        kube = (run / "containers" / "vllm" / "kubernetes.yaml").read_text()
        assert ":latest" not in compose + kube


def test_the_server_is_published_on_this_machine_only_unless_asked_and_its_api_key_never_baked(runner, run_copy,
                                                                                               tmp_path):
    """compose published the port on every interface with no API key: anyone on the network could use it."""
    run = run_copy()
    context = run / "containers" / "vllm"
    assert runner.invoke(cli, ["containerize", str(run), "--target", "vllm"]).exit_code == 0
    service = yaml.safe_load((context / "compose.yaml").read_text())["services"]["t-vllm"]
    assert service["ports"] == ["127.0.0.1:8000:8000"] and "environment" not in service

    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["containers"] = {"bind": "0.0.0.0", "vllm": {"api_key_env": "T_API_KEY"}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(cli, ["containerize", str(run), "--target", "vllm", "-c", str(tmp_path / "serve.yaml")],
                           env={"T_API_KEY": "sk-never-baked-123"})
    assert result.exit_code == 0, result.output
    service = yaml.safe_load((context / "compose.yaml").read_text())["services"]["t-vllm"]
    assert service["ports"] == ["0.0.0.0:8000:8000"]
    assert service["environment"] == {"VLLM_API_KEY": "${T_API_KEY:?set T_API_KEY to the API key clients must send}"}
    kube = yaml.safe_load_all((context / "kubernetes.yaml").read_text())
    server = next(d for d in kube if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["env"] == [{"name": "VLLM_API_KEY",
                              "valueFrom": {"secretKeyRef": {"name": "t-vllm-api-key", "key": "api-key"}}}]
    rendered = "".join(p.read_text(errors="replace") for p in context.rglob("*") if p.is_file() and
                       p.suffix != ".safetensors")
    assert "sk-never-baked-123" not in rendered


@pytest.mark.parametrize("containers", [{}, {"bind": "0.0.0.0", "vllm": {"api_key_env": "T_API_KEY"}},
                                        {"bind": "::1"}, {"ollama": {"quant": "f16"}}],
                         ids=["default", "api-key", "ipv6", "ollama"])
def test_every_compose_file_is_one_docker_compose_accepts(runner, tiny_gguf_run, tmp_path, containers):
    """Checked by Docker Compose itself (Debian's docker-compose, `config -q`), not by reading the YAML."""
    from support.containers import compose_config_errors
    from support.runs import copy_run

    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make test installs it with docker.io)")
    run = copy_run(tiny_gguf_run, tmp_path / "t")
    target = "ollama" if "ollama" in containers else "vllm"
    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["containers"] = containers
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(cli, ["containerize", str(run), "--target", target, "-c", str(tmp_path / "serve.yaml")])
    assert result.exit_code == 0, result.output
    assert compose_config_errors(run / "containers" / target / "compose.yaml") == []


@pytest.mark.parametrize("bad, message", [({"bind": "every-interface"}, "not a valid IPv4 or IPv6 address"),
                                          ({"vllm": {"api_key_env": "KEY; rm -rf /"}}, "should match pattern")],
                         ids=["bind", "api-key-env"])
def test_bind_address_and_key_variable_are_checked(bad, message):
    from packager.config import ContainersConfig

    with pytest.raises(ValueError, match=message):
        ContainersConfig(**bad)


@pytest.mark.parametrize("image", ["vllm/vllm-openai", "vllm/vllm-openai:latest", "ollama/ollama:latest"])
def test_an_unpinned_base_image_is_refused(image):
    from packager.config import ContainersConfig

    target = image.split("/")[0]
    with pytest.raises(ValueError, match="not pinned"):
        ContainersConfig.model_validate({"vllm" if target == "vllm" else "ollama": {"image": image}})


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def packager_sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_subprocess_goes_through_a_shell():
    """Every command is an argument list: no shell=True, os.system or os.popen anywhere in packager."""
    found = []
    for path in packager_sources():
        for node in calls(ast.parse(path.read_text())):
            name = call_name(node)
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{path.name}:{node.lineno} {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path.name}:{node.lineno} shell=")
    assert not found, found
    assert any("subprocess.run" in call_name(n) or "subprocess.Popen" in call_name(n)
               for p in packager_sources() for n in calls(ast.parse(p.read_text()))), "the scan sees the calls"


def test_trust_remote_code_is_never_enabled_implicitly(run_copy):
    """No call passes trust_remote_code=True; where it is passed, it comes from the user's base config."""
    passed = []
    for path in packager_sources():
        for node in calls(ast.parse(path.read_text())):
            for kw in node.keywords:
                if kw.arg == "trust_remote_code":
                    passed.append((path.name, node.lineno, ast.unparse(kw.value)))
    assert passed, "the scan sees the calls that load models"
    implicit = [p for p in passed if p[2] == "True" or "trust_remote_code" not in p[2]]
    assert not implicit, implicit
    from packager.config import BaseModelConfig

    assert BaseModelConfig(model="x").trust_remote_code is False
    recorded = read_manifest(run_copy()).stages["train"].parameters
    assert recorded["trust_remote_code"] is False and recorded["config"]["base"]["trust_remote_code"] is False


def test_pickle_weights_need_the_explicit_flag_and_it_is_recorded(runner, tmp_path, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    base = tmp_path / "pickle-base"  # what older tools wrote: pytorch_model.bin, no safetensors
    base.mkdir()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    torch.save(model.state_dict(), base / "pytorch_model.bin")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja"):
        if (tiny_llama_dir / name).is_file():
            (base / name).write_bytes((tiny_llama_dir / name).read_bytes())
    assert (base / "pytorch_model.bin").is_file() and not list(base.glob("*.safetensors"))

    refused = runner.invoke(cli, ["base", "inspect", str(base)])
    assert refused.exit_code == 2 and "allow_pickle" in refused.output
    allowed = runner.invoke(cli, ["base", "inspect", str(base), "--allow-pickle", "--json"])
    assert allowed.exit_code == 0 and json.loads(allowed.stdout)["weight_format"] == "pickle"

    (tmp_path / "p").mkdir()
    config = tiny_config(tmp_path / "p", base)
    cfg = yaml.safe_load(config.read_text())
    cfg["base"]["allow_pickle"] = True
    config.write_text(yaml.safe_dump(cfg))
    trained = runner.invoke(cli, ["train", "-c", str(config), "--dry-run"])
    assert trained.exit_code == 0, trained.output
    from packager.config import load_config

    stage = read_manifest(load_config(config).run_dir).stages["train"]
    assert stage.parameters["allow_pickle"] is True and stage.parameters["weight_format"] == "pickle"
    assert any(i.path.endswith("pytorch_model.bin") for i in stage.inputs), "the pickle file is hashed too"


# ---------------------------------------------------------------- the built image, with the secrets set

def image_files(engine: str, tag: str, out: Path):
    """Every file of every layer of the saved image (and the image config), as (name, bytes)."""
    archive = out / "image.tar"
    archive_format = ["--format", "docker-archive"] if engine == "podman" else []  # Docker writes only that
    saved = subprocess.run([engine, "image", "save", *archive_format, "-o", str(archive), tag],
                           capture_output=True, text=True)
    assert saved.returncode == 0, saved.stderr
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()
            yield member.name, data
            if member.name.endswith(".tar") or data[257:262] == b"ustar":
                import io

                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for inner in layer.getmembers():
                        if inner.isfile():
                            yield f"{member.name}:{inner.name}", layer.extractfile(inner).read()


@pytest.mark.slow
def test_no_secret_reaches_the_run_its_logs_or_any_image_layer(runner, run_copy, tmp_path, vllm_standin):
    """containerize --build and push with HF_TOKEN and registry credentials in the environment (as deploy runs
    them), then scan every file of the run, every log, and every layer of the built image."""
    from support.servers import Registry

    run = run_copy()
    built = runner.invoke(cli, ["containerize", str(run), "--target", "vllm", "--build", "--engine", "podman"],
                          env=SECRETS)
    assert built.exit_code == 0, built.output
    (tmp_path / "registry").mkdir()
    registry = Registry(tmp_path / "registry")
    try:
        pushed = runner.invoke(cli, ["push", "image", str(run), f"{registry.host}/serving/t:v1", "--target", "vllm",
                                     "--insecure"], env=SECRETS)
        assert pushed.exit_code == 0, pushed.output
    finally:
        registry.stop()
    image = json.loads((run / "containers" / "vllm-image.json").read_text())
    assert image["user"] == "10001:10001"
    assert all(value not in built.output + pushed.output for value in SECRETS.values())

    scanned = 0
    for file in run.rglob("*"):
        if file.is_file():
            scanned += 1
            data = file.read_bytes()
            for value in SECRETS.values():
                assert value.encode() not in data, (file, value)
    assert (run / ".packager" / "logs" / "build-vllm.log").is_file(), "the build log is among the scanned files"
    layers = 0
    for name, data in image_files("podman", image["tag"], tmp_path):
        layers += ":" not in name and name.endswith(".tar")
        for value in SECRETS.values():
            assert value.encode() not in data, (name, value)
    assert layers >= 2 and scanned > 10
    subprocess.run(["podman", "rmi", "-f", image["tag"]], capture_output=True)


@pytest.mark.slow
def test_no_image_ships_a_private_key(runner, tiny_gguf_run, tmp_path, engine):
    """`ollama serve` writes an identity key pair while the Ollama image bakes its model in: every image built
    from the same Dockerfile would have shipped one private key. Built with Podman and with Docker on a
    stand-in whose `ollama` writes the key (Ollama's own binary where .venv-ollama has it), every layer is
    scanned."""
    from support.runs import copy_run

    run = copy_run(tiny_gguf_run, tmp_path / "t")
    cfg = read_manifest(run).stages["train"].parameters["config"]
    cfg["containers"] = {"ollama": {"quant": "f16", "image": engine.ollama_image}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    built = runner.invoke(cli, ["containerize", str(run), "--target", "ollama", "--build", "--engine", engine.name,
                                "-c", str(tmp_path / "serve.yaml")])
    assert built.exit_code == 0, built.output
    image = json.loads((run / "containers" / "ollama-image.json").read_text())
    names = []
    try:
        for name, data in image_files(engine.name, image["tag"], tmp_path):
            names.append(name)
            key_file = name.rsplit("/", 1)[-1] in ("id_ed25519", ".wh.id_ed25519")  # a whiteout: removed too late
            a_key = data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")  # Ollama's own, or the script's
            assert not key_file and not a_key and not re.search(rb"stand-in-identity-\d+", data), name
    finally:
        engine.run("rmi", "-f", image["tag"])
    stored = ("models/manifests/registry.ollama.ai/library/t/latest" if engine.ollama_is_ollama
              else "models/t/Modelfile")
    assert any(name.endswith(stored) for name in names), ("the baking step stored no model",
                                                          [n for n in names if "models" in n])


FAKE_HELPER = """#!/bin/sh
# docker-credential-fake: what Docker Desktop's helper answers, for one registry
read -r server
[ "$1" = get ] || exit 1
if [ "$server" = "$FAKE_HELPER_HOST" ]; then
  printf '{"ServerURL": "%s", "Username": "ci", "Secret": "s3cret-pw"}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
"""


def credential_helper(tmp_path, monkeypatch, host: str, config: dict) -> None:
    """A Docker config naming a credential helper, and the helper on PATH; no other credentials anywhere."""
    bin_dir, docker = tmp_path / "helper-bin", tmp_path / "docker-config"
    bin_dir.mkdir()
    docker.mkdir()
    (bin_dir / "docker-credential-fake").write_text(FAKE_HELPER)
    (bin_dir / "docker-credential-fake").chmod(0o755)
    (docker / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.setenv("FAKE_HELPER_HOST", host)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "PACKAGER_REGISTRY_USERNAME",
                     "PACKAGER_REGISTRY_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)


def test_docker_desktop_logins_reach_the_push_through_its_credential_store(runner, run_copy, tmp_path, monkeypatch,
                                                                         auth_registry):
    """Docker Desktop keeps logins in a credential store (credsStore) and leaves auths empty: packager pushed
    as if there were none. The real push to a registry that demands them succeeds, and nothing is echoed."""
    from packager.publish.oci import registry_credentials

    credential_helper(tmp_path, monkeypatch, auth_registry.host,
                      {"auths": {auth_registry.host: {}}, "credsStore": "fake"})
    assert registry_credentials(auth_registry.host) == ("ci", "s3cret-pw")
    assert registry_credentials("127.0.0.1:9") is None  # the helper has none for it
    run = run_copy()
    pushed = runner.invoke(cli, ["push", "oci", str(run), f"{auth_registry.host}/models/t:v1", "--what", "merged",
                                 "--insecure"])
    assert pushed.exit_code == 0, pushed.output
    assert "s3cret-pw" not in pushed.output and "s3cret-pw" not in (run / "manifest.json").read_text()


def test_a_per_registry_helper_wins_and_a_missing_one_is_named(tmp_path, monkeypatch):
    from packager.errors import BadInputError
    from packager.publish.oci import registry_credentials

    credential_helper(tmp_path, monkeypatch, "registry.example.invalid",
                      {"credsStore": "desktop", "credHelpers": {"registry.example.invalid": "fake"}})
    assert registry_credentials("registry.example.invalid") == ("ci", "s3cret-pw")
    with pytest.raises(BadInputError, match="names the credential helper 'desktop', but docker-credential-desktop "
                                            "is not on PATH"):
        registry_credentials("other.example.invalid")
