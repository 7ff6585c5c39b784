"""Serving build contexts: Ollama templates proven with real Go, vLLM flags checked by vLLM's own parser,
Dockerfiles linted by hadolint, Kubernetes manifests validated, and an image built and served with Podman.

What is real and what is substituted here (no GPU, no Docker daemon, no Docker Hub, no Ollama binary):
the vLLM Dockerfile is built by Podman FROM a local stand-in tagged as the pinned vLLM image, whose `vllm`
command serves the same baked-in model with `transformers serve` on CPU (tests/serve/containers/vllm_standin.py),
because the vLLM engine needs a GPU and its image cannot be pulled. vLLM's argument parser and engine-config
check run for real, from vLLM 0.33 itself, in a separate venv. The Ollama image cannot be built here (no
Ollama binary or image); its Modelfile TEMPLATE is checked with Go's text/template, and the GGUF it serves
is smoke-tested through llama.cpp's server in test_smoke.py.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from packager.serve.chat_format import infer_chat_format
from packager.serve.ollama_parity import check_parity, expected_prompt
from packager.serve.go_template import render_as_ollama
from packager.cli import cli
from packager.serve.context import context_digest
from packager.serve.modelfile import parse_modelfile
from packager.errors import StageError
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run
from packager.models.chat_template import ChatTemplate

from support.modelfiles import blob_cleanup_script
from support.models import build_tokenizer
from support.runs import copy_run
from support.containers import (CONTAINERS, VLLM_IMAGE, compose_config_errors, smoke_containers_left,
                                standin_run_args, vllm_accepts, vllm_python)

ROOT = Path(__file__).resolve().parents[2]

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] "
    "| trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
# Mistral 7B v0.3 writes the system prompt into the *last* user turn: no structure of prefixes and suffixes
MISTRAL_TEMPLATE = (Path(__file__).parents[1] / "support" / "chat_templates" / "mistral-v0.3.jinja").read_text()

needs_go = pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("CI"),
                              reason="Go is not installed (apt install golang-go); .ci/run installs it")


# ---------------------------------------------------------------- Ollama TEMPLATE parity, with real Go

@needs_go
@pytest.mark.parametrize("name,template", [("smollm2", SMOLLM2_TEMPLATE), ("llama3", LLAMA3_TEMPLATE),
                                           ("zephyr", ZEPHYR_TEMPLATE), ("chatml", None)])
def test_the_go_template_renders_exactly_what_apply_chat_template_renders(tmp_path, name, template):
    from transformers import AutoTokenizer

    from support.models import CHATML_TEMPLATE

    build_tokenizer(tmp_path, chat_template=template or CHATML_TEMPLATE)
    chat = ChatTemplate.from_model_dir(tmp_path)
    fmt = infer_chat_format(chat)
    result = check_parity(chat, fmt, use_go=True)
    assert result["checked_with"] == "go text/template"

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for messages in [[{"role": "user", "content": "Hi there"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\nb {{ c }}"},
                      {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more ☕"}]]:
        jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        go = render_as_ollama(fmt.go_template(), messages)
        assert go == jinja, (name, go, jinja)


def test_the_default_system_turn_and_bos_are_handled():
    smol = infer_chat_format(ChatTemplate(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>", {}))
    assert smol.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert smol.leading_bos == ""  # the SmolLM2 tokenizer adds no BOS: its <|im_start|> is part of the turn
    llama = ChatTemplate(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", {}, adds_bos=True)
    fmt = infer_chat_format(llama)
    assert fmt.leading_bos == "<|begin_of_text|>" and fmt.default_system is None
    # llama.cpp prepends BOS itself, so the TEMPLATE must not write it again (the doubled-BOS bug)
    assert "begin_of_text" not in fmt.go_template()
    assert expected_prompt(llama, fmt, [{"role": "user", "content": "x"}]).startswith("<|start_header_id|>user")


@pytest.mark.parametrize("template,why", [(GEMMA_TEMPLATE, "System role not supported"),
                                          (MISTRAL_TEMPLATE, "cannot express this chat template")])
def test_templates_without_a_turn_structure_are_refused_with_the_way_out(template, why):
    with pytest.raises(StageError, match=why) as info:
        infer_chat_format(ChatTemplate(template, "<s>", "</s>", {}))
    assert "containers.ollama.template" in info.value.hint


@needs_go
def test_a_wrong_go_template_is_caught_by_go():
    chat = ChatTemplate(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>", {})
    fmt = infer_chat_format(chat)
    wrong = fmt.go_template().replace("<|im_end|>\\n", "<|im_end|>", 1)
    with pytest.raises(StageError, match="renders conversation 1 differently"):
        check_parity(chat, fmt, go_template=wrong, use_go=True)


@needs_go
def test_the_go_renderer_builds_into_a_cache_on_another_file_system(monkeypatch):
    """/dev/shm is a tmpfs, /tmp is not: the renderer built in a temporary folder must still reach the cache
    (os.replace across file systems had failed with EXDEV)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on a file system other than the temporary folder's")
    with tempfile.TemporaryDirectory(dir=shm) as cache:
        monkeypatch.setenv("XDG_CACHE_HOME", cache)
        assert render_as_ollama("{{ .System }}!", [{"role": "system", "content": "go"}]) == "go!"
        assert [p.name for p in (Path(cache) / "packager").iterdir()][0].startswith("render-template-")


def containerize(runner, run_dir: Path, target: str, *extra: str):
    result = runner.invoke(cli, ["containerize", str(run_dir), "--target", target, *extra])
    assert result.exit_code == 0, result.output
    return read_manifest(run_dir).stages[f"containerize-{target}"]


def hadolint_findings(dockerfile: Path) -> list[str]:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    return result.stdout.splitlines() + ([result.stderr] if result.returncode and not result.stdout else [])


def kubernetes_validate(manifest: Path) -> None:
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([exe, "--strict", str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_vllm_context_lints_validates_and_vllm_accepts_its_flags(runner, smollm2_served_run, tmp_path):
    run_dir = copy_run(smollm2_served_run, tmp_path / "smol")
    stage = containerize(runner, run_dir, "vllm")
    context = run_dir / "containers" / "vllm"
    assert sorted(p.name for p in context.iterdir()) == ["Dockerfile", "compose.yaml", "kubernetes.yaml", "model",
                                                        "provenance.json"]
    assert sorted(p.name for p in (context / "model").iterdir()) == sorted(
        p.name for p in (run_dir / "merged").iterdir())
    dockerfile = (context / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=docker.io/vllm/vllm-openai:v0.33.0" in dockerfile and "latest" not in dockerfile
    # A `# syntax=` directive makes BuildKit pull that frontend image before building: no air-gapped build.
    assert "# syntax=" not in dockerfile
    assert dockerfile.index("COPY --chown=10001:10001 model/") < dockerfile.index("LABEL") < dockerfile.index("CMD")
    assert "USER 10001:10001" in dockerfile and "EXPOSE 8000" in dockerfile and "/health" in dockerfile
    assert hadolint_findings(context / "Dockerfile") == []
    kubernetes_validate(context / "kubernetes.yaml")
    docs = list(yaml.safe_load_all((context / "kubernetes.yaml").read_text()))
    pod = docs[0]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["startupProbe"]["failureThreshold"] >= 60 and server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1 and pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    compose = yaml.safe_load((context / "compose.yaml").read_text())["services"]["smol-vllm"]
    assert compose["shm_size"] == "8gb" and compose["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    provenance = json.loads((context / "provenance.json").read_text())
    assert provenance["base"]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert provenance["adapter"]["train/adapter/adapter_model.safetensors"] == next(
        o.sha256 for o in read_manifest(run_dir).stages["train"].outputs
        if o.path == "train/adapter/adapter_model.safetensors")
    assert stage.metrics["lint"] == {"checked": True, "findings": []}
    assert verify_run(run_dir).ok

    command = stage.metrics["command"]
    accepted = vllm_accepts(command, {"/models/smol": context / "model"})
    assert accepted["served_model_name"] in ("smol", ["smol"])
    assert accepted["max_model_len"] == 8192  # the model's own limit, above the training length (256)
    assert accepted["dtype"] == "torch.bfloat16" and accepted["architectures"] == ["LlamaForCausalLM"]
    assert accepted["architecture_supported"]
    assert accepted["generation_config"] == str(context / "model")
    assert accepted["chat_template"] == str(context / "model" / "chat_template.jinja")
    assert accepted["gpu_memory_utilization"] == 0.9 and accepted["tensor_parallel_size"] == 1


@pytest.mark.slow
def test_vllm_itself_rejects_what_its_engine_would_refuse(smollm2_served_run):
    """The check is not a formality: a bad value that the parser lets through fails create_engine_config()."""
    model = smollm2_served_run / "merged"
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    for bad in (["--max-model-len", "100000"], ["--quantization", "awq"]):
        result = subprocess.run([str(vllm_python()), str(CONTAINERS / "vllm_check.py"),
                                 json.dumps([str(model), *bad])], capture_output=True, text=True, env=env)
        assert result.returncode != 0, bad


@pytest.mark.slow
def test_vllm_lora_mode_serves_the_base_plus_the_adapter(runner, smollm2_served_run, tmp_path):
    run_dir = copy_run(smollm2_served_run, tmp_path / "smol")
    config = tmp_path / "serve.yaml"
    recorded = read_manifest(run_dir).stages["train"].parameters["config"]
    recorded["containers"] = {"vllm": {"serve_mode": "lora", "gpu_memory_utilization": 0.8}}
    config.write_text(yaml.safe_dump(recorded))
    stage = containerize(runner, run_dir, "vllm", "-c", str(config))
    context = run_dir / "containers" / "vllm"
    command = stage.metrics["command"]
    assert command[0] == "/models/smol-base"
    lora = json.loads(command[command.index("--lora-modules") + 1])
    assert lora == {"name": "smol", "path": "/adapters/smol", "base_model_name": "smol-base"}
    assert command[command.index("--max-lora-rank") + 1] == "16"
    assert hadolint_findings(context / "Dockerfile") == []
    accepted = vllm_accepts(command, {"/models/smol-base": context / "base", "/adapters/smol": context / "adapter"})
    assert accepted["max_lora_rank"] == 16 and accepted["gpu_memory_utilization"] == 0.8
    # the base's own generation config knows nothing of <|im_end|>: the run's copy that does is served
    generation = json.loads((context / "base" / "generation" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and accepted["generation_config"] == str(context / "base" / "generation")


# ---------------------------------------------------------------- Ollama context

def modelfile_template(modelfile: str) -> str:
    """The TEMPLATE as Ollama's parser reads it (packager.serve.modelfile models that parser)."""
    return dict(parse_modelfile(modelfile))["template"]


@pytest.mark.slow
@needs_go
def test_the_ollama_context_carries_a_proven_template_and_every_stop(runner, smollm2_served_run, tmp_path):
    from transformers import AutoTokenizer

    run_dir = copy_run(smollm2_served_run, tmp_path / "smol")
    stage = containerize(runner, run_dir, "ollama")
    context = run_dir / "containers" / "ollama"
    assert sorted(p.name for p in context.iterdir()) == ["Dockerfile", "Modelfile", "compose.yaml",
                                                        "kubernetes.yaml", "provenance.json", "smol-q8_0.gguf"]
    modelfile = (context / "Modelfile").read_text()
    assert "FROM ./smol-q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER num_ctx 8192" in modelfile and "temperature" not in modelfile  # none in generation_config
    assert "PARAMETER repeat_penalty 1.0" in modelfile
    assert stage.metrics["template_parity"]["checked_with"] == "go text/template"
    # The TEMPLATE as written in the Modelfile, rendered by Go, equals apply_chat_template of the merged model.
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    for messages in ([{"role": "user", "content": "Ticket: the export button does nothing."}],
                     [{"role": "system", "content": "Triage the support ticket."},
                      {"role": "user", "content": "I was charged twice"}, {"role": "assistant", "content": "{}"},
                      {"role": "user", "content": "Again?"}]):
        assert render_as_ollama(modelfile_template(modelfile), messages) == \
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    dockerfile = (context / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=docker.io/ollama/ollama:0.32.15" in dockerfile and "ollama create smol" in dockerfile
    assert "# syntax=" not in dockerfile  # BuildKit would pull the frontend image it names
    # Podman 4.3 keys a RUN --mount=type=bind step's cache on its text alone: the text names what it reads.
    baked = {"Modelfile": hashlib.sha256(modelfile.encode()).hexdigest(),
             "smol-q8_0.gguf": hashlib.sha256((context / "smol-q8_0.gguf").read_bytes()).hexdigest()}
    assert f': "bakes sha256:{context_digest(baked)}"' in dockerfile
    assert stage.metrics["baked_digest"] == context_digest(baked)
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert "HEALTHCHECK" in instructions and "curl" not in instructions and "USER 10001:10001" in instructions
    assert hadolint_findings(context / "Dockerfile") == []
    kubernetes_validate(context / "kubernetes.yaml")
    assert os.stat(context / "smol-q8_0.gguf").st_ino == os.stat(run_dir / "export/gguf/smol-q8_0.gguf").st_ino


@pytest.mark.slow
def test_ollama_refuses_the_quant_that_failed_parity_and_offers_adapter_mode(runner, smollm2_served_run, tmp_path):
    run_dir = copy_run(smollm2_served_run, tmp_path / "smol")
    recorded = read_manifest(run_dir).stages["train"].parameters["config"]
    config = tmp_path / "serve.yaml"
    recorded["containers"] = {"ollama": {"quant": "q4_k_m"}}
    config.write_text(yaml.safe_dump(recorded))
    refused = runner.invoke(cli, ["containerize", str(run_dir), "--target", "ollama", "-c", str(config)])
    assert refused.exit_code == 1 and "Q4_K_M GGUF failed its parity check" in refused.output
    assert not (run_dir / "containers").exists()

    recorded["containers"] = {"ollama": {"serve_mode": "lora", "system": "Triage the support ticket."}}
    config.write_text(yaml.safe_dump(recorded))
    containerize(runner, run_dir, "ollama", "-c", str(config))
    modelfile = (run_dir / "containers" / "ollama" / "Modelfile").read_text()
    assert "FROM ./smol-base-f16.gguf" in modelfile and "ADAPTER ./smol-lora.gguf" in modelfile
    assert 'SYSTEM "Triage the support ticket."' in modelfile
    lora_stage = read_manifest(run_dir).stages["containerize-ollama"]
    assert lora_stage.metrics["baked_digest"] in (run_dir / "containers" / "ollama" / "Dockerfile").read_text()

    recorded["containers"]["ollama"]["system"] = "Triage it."  # only the Modelfile changes
    config.write_text(yaml.safe_dump(recorded))
    containerize(runner, run_dir, "ollama", "-c", str(config))
    changed = read_manifest(run_dir).stages["containerize-ollama"]
    assert changed.metrics["baked_digest"] != lora_stage.metrics["baked_digest"], "the baking step runs again"


# ---------------------------------------------------------------- built and served with Podman and Docker


@pytest.mark.slow
def test_the_vllm_image_builds_and_passes_the_smoke_test(runner, smollm2_served_run, tmp_path, engine):
    run_dir = copy_run(smollm2_served_run, tmp_path / "smol")
    stage = containerize(runner, run_dir, "vllm", "--build", "--engine", engine.name)
    image = json.loads((run_dir / "containers" / "vllm-image.json").read_text())
    assert image["engine"] == engine.name and image["image_id"].startswith("sha256:")
    if engine.name == "podman":  # Docker knows an image's manifest digest only once it is pushed
        assert image["digest"].startswith("sha256:")
    assert image["tag"] == stage.parameters["tag"] and image["user"] == "10001:10001" and image["healthcheck"]
    assert image["labels"]["dev.packager.model-digest"] == f"sha256:{stage.metrics['model_digest']}"
    assert image["base_image"] == VLLM_IMAGE
    assert read_manifest(run_dir).stages["image-vllm"].metrics["image_id"] == image["image_id"]
    if engine.name == "docker":  # Docker Compose comes with Docker
        assert compose_config_errors(run_dir / "containers" / "vllm" / "compose.yaml") == []

    # A config-only change rebuilds the flags, not the weights layer.
    recorded = read_manifest(run_dir).stages["train"].parameters["config"]
    recorded["containers"] = {"vllm": {"gpu_memory_utilization": 0.7}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(recorded))
    containerize(runner, run_dir, "vllm", "--build", "--engine", engine.name, "-c", str(tmp_path / "serve.yaml"))
    rebuilt = json.loads((run_dir / "containers" / "vllm-image.json").read_text())
    assert rebuilt["image_id"] != image["image_id"]
    shared = [a for a, b in zip(image["layers"], rebuilt["layers"]) if a == b]
    assert len(shared) >= len(image["layers"]) - 2  # the base, user and weights layers are reused

    smoke = runner.invoke(cli, ["smoke", str(run_dir), "--target", "vllm", "--host-network", "--no-gpus",
                                "-c", str(tmp_path / "serve.yaml"), *standin_run_args()])
    assert smoke.exit_code == 0, smoke.output
    report = json.loads((run_dir / "smoke" / "vllm.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and checks["golden answers"]["passed"] and checks["answers stop"]["passed"]
    assert checks["8 concurrent requests"]["passed"] and report["timings"]["container"]["engine"] == engine.name
    assert any(a["exact"] for a in report["answers"])
    assert read_manifest(run_dir).stages["smoke-vllm"].metrics["passed"]
    assert smoke_containers_left(engine) == [], "the smoke container is always removed"
    assert verify_run(run_dir).ok

    # The built image goes to a registry with the engine; the digest recorded is the registry's.
    import requests

    from support.servers import Registry

    (tmp_path / "registry").mkdir()
    registry = Registry(tmp_path / "registry")
    try:
        ref = f"{registry.host}/serving/smol-vllm:v1"
        pushed = runner.invoke(cli, ["push", "image", str(run_dir), ref, "--target", "vllm", "--insecure",
                                     "--engine", engine.name])
        assert pushed.exit_code == 0, pushed.output
        head = requests.head(f"http://{registry.host}/v2/serving/smol-vllm/manifests/v1", timeout=10, headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        recorded = read_manifest(run_dir).stages["push-image-vllm"].metrics["digest"]
        assert recorded.startswith("sha256:") and head.headers["Docker-Content-Digest"] == recorded
    finally:
        registry.stop()


def test_image_references_are_qualified_pinned_and_checked():
    from packager.config import OllamaConfig
    from packager.serve.engine import check_image_ref, qualified
    from packager.errors import BadInputError

    assert qualified("vllm/vllm-openai:v0.33.0") == "docker.io/vllm/vllm-openai:v0.33.0"
    assert qualified("ubuntu:24.04") == "docker.io/library/ubuntu:24.04"
    assert qualified("127.0.0.1:5000/team/vllm:v1") == "127.0.0.1:5000/team/vllm:v1"
    digest = "vllm/vllm-openai:v0.33.0@sha256:" + "ab" * 32
    assert qualified(digest) == "docker.io/" + digest and check_image_ref(qualified(digest))
    for bad in ("Packager/x:1", "x:1; rm -rf /", "../x", "x y"):
        with pytest.raises(BadInputError, match="not a valid image reference"):
            check_image_ref(bad)
    with pytest.raises(ValueError, match="not pinned"):
        OllamaConfig(image="ollama/ollama:latest")


def test_sampling_parameters_come_from_generation_config():
    from packager.serve.ollama import ollama_sampling

    assert ollama_sampling({"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1, "eos_token_id": 2}) == \
        [("temperature", 0.6), ("top_p", 0.9), ("repeat_penalty", 1.1)]
    # none set: no penalty, as transformers and vLLM apply, instead of Ollama's default 1.1
    assert ollama_sampling({"eos_token_id": 2}) == [("repeat_penalty", 1.0)]


def gguf_of_architecture(path: Path, architecture: str) -> Path:
    """A GGUF header with nothing but its architecture (what the adapter check reads), written by gguf-py."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("architecture, image, refused", [
    ("gemma3", "ollama/ollama:0.13.0", True), ("qwen3", "ollama/ollama:0.12.6", True),
    ("llama", "ollama/ollama:0.13.0", False), ("gemma3", "ollama/ollama:0.32.15", False),
    ("gemma3", "ollama/ollama:0.6.0", True), ("gemma3", "ollama/ollama:0.5.13", False)],
    ids=["gemma3-0.13", "qwen3-0.12", "llama-0.13", "gemma3-0.32", "gemma3-0.6", "gemma3-0.5"])
def test_a_lora_the_pinned_ollama_cannot_load_is_refused(tmp_path, architecture, image, refused):
    """Ollama 0.6-0.29 runs these architectures on its Go engine, which fails every adapter at load time after
    `ollama create` accepted it: the image would build and never serve."""
    from packager.serve.ollama import check_adapter_support

    base = gguf_of_architecture(tmp_path / "base.gguf", architecture)
    if refused:
        with pytest.raises(StageError, match=f"runs {architecture} models on its own engine, which refuses LoRA"):
            check_adapter_support(base, image)
    else:
        check_adapter_support(base, image)


def test_the_baking_step_removes_every_blob_no_manifest_names(tmp_path):
    """From 0.30 `ollama create` rewrites the GGUF into a new blob and leaves the uploaded one behind: the
    Dockerfile's step removes blobs no manifest names (here planted), keeps the named ones, and fails rather than
    remove everything when there is no manifest at all."""
    models = tmp_path / "models"
    named = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    manifest = models / "manifests" / "registry.ollama.ai" / "library" / "smol" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"config": {"digest": named[0]}, "layers": [{"digest": named[1]}]}))
    (models / "blobs").mkdir()
    for digest in [*named, "sha256:" + "c" * 64]:
        (models / "blobs" / digest.replace(":", "-")).write_bytes(b"x")
    env = {**os.environ, "OLLAMA_MODELS": str(models)}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", blob_cleanup_script()], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (models / "blobs").iterdir()) == [d.replace(":", "-") for d in named]
    shutil.rmtree(models / "manifests")
    failed = subprocess.run(["bash", "-o", "pipefail", "-c", blob_cleanup_script()], env=env, capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "no Ollama manifest under" in failed.stdout
    assert len(list((models / "blobs").iterdir())) == 2
