"""Podman for the container tests, and the local stand-in tagged as the pinned vLLM image (NOT vLLM)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTAINERS = Path(__file__).resolve().parents[1] / "serve" / "containers"


VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.33.0"
OLLAMA_STANDIN = "localhost/packager-tests/ollama-standin:0.13.0"
"""Not under the pinned Ollama name: builds that find the pinned image locally (deploy, the demo) would then
bake and start a model in an image that cannot serve it."""
STANDIN_LABEL = "dev.packager.stand-in"


def podman_env() -> dict:
    """This sandbox's Podman settings (runc, cgroupfs) unless the user has their own."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(CONTAINERS / "containers.conf")
    return env


@pytest.fixture(scope="session")
def podman():
    if shutil.which("podman") is None:
        pytest.skip("no container engine installable here: podman is not installed (.ci/run installs it)")
    os.environ.update(podman_env())
    probe = subprocess.run(["podman", "info"], capture_output=True, text=True)
    assert probe.returncode == 0, f"podman is installed but does not work:\n{probe.stderr[-2000:]}"
    return "podman"


@pytest.fixture(scope="session")
def vllm_standin(podman):
    """The pinned vLLM image reference, as a local stand-in (see the module docstring). NOT vLLM."""
    if standin_exists(VLLM_IMAGE):
        return VLLM_IMAGE
    build = subprocess.run(["bash", str(CONTAINERS / "build_standin.sh"), VLLM_IMAGE], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return VLLM_IMAGE


@pytest.fixture(scope="session")
def ollama_standin(vllm_standin, tmp_path_factory):
    """A stand-in for the Ollama image, under a name of its own (set it as containers.ollama.image): the vLLM
    stand-in's Debian with a shell-script `ollama` (serve/list/create; see ollama_standin.sh). NOT Ollama."""
    if standin_exists(OLLAMA_STANDIN):
        return OLLAMA_STANDIN
    work = tmp_path_factory.mktemp("ollama-standin")
    (work / "ollama").write_bytes((CONTAINERS / "ollama_standin.sh").read_bytes())
    (work / "Containerfile").write_text(
        f"FROM {vllm_standin}\nCOPY --chmod=755 ollama /usr/bin/ollama\n"
        f'LABEL {STANDIN_LABEL}="not Ollama: a shell script that keeps Modelfiles, for tests"\n'
        'ENTRYPOINT ["/bin/ollama"]\nCMD ["serve"]\n')
    build = subprocess.run(["podman", "build", "--pull=never", "--format", "docker", "-t", OLLAMA_STANDIN,
                            str(work)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return OLLAMA_STANDIN


def standin_exists(ref: str) -> bool:
    """Whether ``ref`` is here already, as packager's stand-in (a real image of that name is never replaced)."""
    inspect = subprocess.run(["podman", "image", "inspect", ref, "--format",
                              f'{{{{index .Config.Labels "{STANDIN_LABEL}"}}}}'], capture_output=True, text=True)
    if inspect.returncode != 0:
        return False
    assert inspect.stdout.strip(), f"{ref} exists and is not packager's stand-in: not replacing it"
    return True


def standin_run_args() -> list[str]:
    """Mount packager's own venv (and its Python) read-only for the stand-in's `transformers serve`."""
    venv = Path(sys.prefix)
    args = [f"--run-arg=-v={venv}:{venv}:ro", f"--run-arg=-e=STANDIN_VENV={venv}", "--run-arg=-e=OMP_NUM_THREADS=2"]
    if not str(Path(sys.base_prefix)).startswith(("/usr/", "/usr")):
        args.append(f"--run-arg=-v={sys.base_prefix}:{sys.base_prefix}:ro")
    return args
