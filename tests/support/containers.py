"""Podman and Docker for the container tests, and the local stand-ins tagged as the pinned vLLM image (NOT
vLLM) and as an Ollama image (NOT Ollama), in each engine.

Docker is Debian's dockerd, started here as root on a private socket for the session (MACHINE.md: no systemd,
no bridge, cgroupfs), with Debian's own client first on PATH (a newer client without buildx may be installed
elsewhere) and BuildKit on. Its images live in DOCKER_STATE between sessions, as Podman's do, so the stand-ins
are built once per machine. The engine's environment is set only for the tests that ask for an engine: auto
detection elsewhere keeps finding what it found before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CONTAINERS = Path(__file__).resolve().parents[1] / "serve" / "containers"


VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.33.0"
OLLAMA_STANDIN = "localhost/packager-tests/ollama-standin:0.32.15"
"""Not under the pinned Ollama name: builds that find the pinned image locally (deploy, the demo) would then
bake and start a model in an image that cannot serve it."""
OLLAMA_ITSELF_STANDIN = "localhost/packager-tests/ollama-bigdl:0.9.3"
OLLAMA_VENV = Path(__file__).resolve().parents[2] / ".venv-ollama"
OLLAMA_LIBS = OLLAMA_VENV / "lib"
OLLAMA_BINARY = OLLAMA_LIBS / "python3.11" / "site-packages" / "bigdl" / "cpp" / "libs" / "ollama" / "ollama-lib"
"""Ollama 0.9.3's server (Go) inside bigdl-core-cpp; the `ollama` beside it is a wrapper that always exits 0."""
STANDIN_LABEL = "dev.packager.stand-in"
ENGINES = ("podman", "docker")
DOCKER_CLIENT = Path("/usr/bin/docker")  # Debian's client, which builds with BuildKit without buildx
DOCKER_STATE = Path("/var/lib/packager-tests/docker")
DOCKER_RUN = Path("/run/packager-tests-docker")  # short: the socket's path must fit a sun_path


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
def docker():
    """The environment that points Docker's client at a running daemon: the user's (DOCKER_HOST, when it
    answers), else Debian's dockerd started for this session and stopped at its end."""
    if os.environ.get("DOCKER_HOST") and _docker_answers(dict(os.environ)):
        yield {"DOCKER_HOST": os.environ["DOCKER_HOST"], "DOCKER_BUILDKIT": "1"}
        return
    if shutil.which("dockerd") is None or not DOCKER_CLIENT.is_file():
        pytest.skip("Docker is not installed (make test installs Debian's docker.io where it can)")
    if os.geteuid() != 0:
        pytest.skip("dockerd is installed but this session cannot start it (not root)")
    DOCKER_RUN.mkdir(parents=True, exist_ok=True)
    (DOCKER_RUN / "bin").mkdir(exist_ok=True)
    if not (DOCKER_RUN / "bin" / "docker").exists():
        (DOCKER_RUN / "bin" / "docker").symlink_to(DOCKER_CLIENT)
    env = {"DOCKER_HOST": f"unix://{DOCKER_RUN / 'docker.sock'}", "DOCKER_BUILDKIT": "1",
           "PATH": f"{DOCKER_RUN / 'bin'}:{os.environ['PATH']}"}
    daemon = None
    if not _docker_answers({**os.environ, **env}):  # one left by an earlier session that was killed is reused
        DOCKER_STATE.mkdir(parents=True, exist_ok=True)
        log = open(DOCKER_RUN / "dockerd.log", "a")
        daemon = subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
                                   "--exec-opt", "native.cgroupdriver=cgroupfs", "--data-root", str(DOCKER_STATE),
                                   "--exec-root", str(DOCKER_RUN / "exec"), "-H", env["DOCKER_HOST"],
                                   "--pidfile", str(DOCKER_RUN / "dockerd.pid")],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _docker_answers({**os.environ, **env}):
            assert daemon.poll() is None and time.monotonic() < deadline, \
                f"dockerd did not start; see {DOCKER_RUN / 'dockerd.log'}"
            time.sleep(0.5)
    try:
        yield env
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _docker_answers(env: dict) -> bool:
    try:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def engine_env(name: str, request) -> dict:
    """The whole environment commands of engine ``name`` run with (Podman's settings, or Docker's daemon)."""
    if name == "podman":
        request.getfixturevalue("podman")
        return dict(os.environ)
    return {**os.environ, **request.getfixturevalue("docker")}


@pytest.fixture(scope="session")
def vllm_standin(podman):
    """The pinned vLLM image reference, as a local stand-in in Podman (see the module docstring). NOT vLLM."""
    return vllm_standin_in("podman", dict(os.environ))


def vllm_standin_in(engine: str, env: dict) -> str:
    script = hashlib.sha256((CONTAINERS / "vllm_standin.py").read_bytes()).hexdigest()[:12]
    if not standin_exists(VLLM_IMAGE, engine, env, version=f"(script {script})"):
        build = subprocess.run(["bash", str(CONTAINERS / "build_standin.sh"), VLLM_IMAGE, engine], env=env,
                               capture_output=True, text=True)
        assert build.returncode == 0, build.stdout + build.stderr
    return VLLM_IMAGE


def ollama_standin_in(engine: str, env: dict, work: Path) -> str:
    """A stand-in for the Ollama image, under a name of its own (set it as containers.ollama.image), FROM the
    vLLM stand-in's Debian. Where .venv-ollama holds Ollama 0.9.3's own binary (bigdl-core-cpp; `make
    ollama-venv`), that binary and the libraries it links: the baking step's `ollama serve` and `ollama create`
    are then Ollama's own, and the image answers /api/show; it cannot generate (that needs an Intel GPU).
    Otherwise a shell-script `ollama` (serve/list/create; see ollama_standin.sh). Neither is the pinned
    image."""
    vllm_standin_in(engine, env)
    real = OLLAMA_BINARY.is_file()
    ref = OLLAMA_ITSELF_STANDIN if real else OLLAMA_STANDIN
    if standin_exists(ref, engine, env):
        return ref
    if real:
        files = work / "ollama"
        files.mkdir()
        for library in ollama_libraries():
            shutil.copy(library, files / library.name)  # copy follows links: the files themselves
        shutil.copy(OLLAMA_BINARY, work / "ollama-lib")
        what = "Ollama 0.9.3's own binary (bigdl-core-cpp): creates and shows models, cannot generate here"
        steps = ("COPY ollama/ /opt/ollama/\nCOPY --chmod=755 ollama-lib /usr/bin/ollama\n"
                 "ENV LD_LIBRARY_PATH=/opt/ollama\n")
    else:
        (work / "ollama").write_bytes((CONTAINERS / "ollama_standin.sh").read_bytes())
        what = "not Ollama: a shell script that keeps Modelfiles, for tests"
        steps = "COPY --chmod=755 ollama /usr/bin/ollama\n"
    (work / "Containerfile").write_text(f'FROM {VLLM_IMAGE}\n{steps}LABEL {STANDIN_LABEL}="{what}"\n'
                                        'ENTRYPOINT ["/bin/ollama"]\nCMD ["serve"]\n')
    no_pull = ["--pull=never", "--format", "docker"] if engine == "podman" else []
    build = subprocess.run([engine, "build", *no_pull, "-f", str(work / "Containerfile"), "-t", ref, str(work)],
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return ref


def ollama_libraries() -> list[Path]:
    """Every library Ollama's binary loads from outside the system (its own and the oneAPI runtime), as the
    dynamic linker resolves them here."""
    linked = subprocess.run(["ldd", str(OLLAMA_BINARY)], env={**os.environ, "LD_LIBRARY_PATH": str(OLLAMA_LIBS)},
                            capture_output=True, text=True, check=True)
    found = [Path(m) for m in re.findall(r"=> (\S+) \(", linked.stdout)]
    assert "not found" not in linked.stdout, linked.stdout
    return [p for p in found if str(p.resolve()).startswith(str(OLLAMA_VENV.resolve()))]


@dataclass(frozen=True)
class EngineUnderTest:
    name: str
    env: dict
    vllm_image: str
    ollama_image: str

    @property
    def ollama_is_ollama(self) -> bool:
        """The Ollama stand-in carries Ollama's own binary (else a shell script)."""
        return self.ollama_image == OLLAMA_ITSELF_STANDIN

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.name, *args], env=self.env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session", params=ENGINES)
def engine_standins(request, tmp_path_factory) -> EngineUnderTest:
    env = engine_env(request.param, request)
    work = tmp_path_factory.mktemp(f"standins-{request.param}")
    return EngineUnderTest(request.param, env, vllm_standin_in(request.param, env),
                           ollama_standin_in(request.param, env, work))


@pytest.fixture
def engine(engine_standins, monkeypatch) -> EngineUnderTest:
    """Each container test once with Podman and once with Docker, stand-ins ready; the engine's environment
    is this test's only."""
    for key, value in engine_standins.env.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return engine_standins


def standin_exists(ref: str, engine: str = "podman", env: dict | None = None, *, version: str | None = None) -> bool:
    """Whether ``ref`` is here already, as packager's stand-in (a real image of that name is never replaced);
    with ``version``, only one whose label names it (an older stand-in is rebuilt)."""
    inspect = subprocess.run([engine, "image", "inspect", ref, "--format",
                              f'{{{{index .Config.Labels "{STANDIN_LABEL}"}}}}'], env=env, capture_output=True,
                             text=True)
    if inspect.returncode != 0:
        return False
    assert inspect.stdout.strip(), f"{ref} exists in {engine} and is not packager's stand-in: not replacing it"
    return version is None or version in inspect.stdout


def standin_run_args() -> list[str]:
    """Mount packager's own venv (and its Python) read-only for the stand-in's `transformers serve`."""
    venv = Path(sys.prefix)
    args = [f"--run-arg=-v={venv}:{venv}:ro", f"--run-arg=-e=STANDIN_VENV={venv}", "--run-arg=-e=OMP_NUM_THREADS=2"]
    if not str(Path(sys.base_prefix)).startswith(("/usr/", "/usr")):
        args.append(f"--run-arg=-v={sys.base_prefix}:{sys.base_prefix}:ro")
    return args


def smoke_containers_left(engine: EngineUnderTest) -> list[str]:
    """Containers (running or not) that a smoke test started and did not remove, found by their label."""
    from packager.serve.smoke import SMOKE_LABEL

    listed = engine.run("ps", "-a", "--filter", f"label={SMOKE_LABEL}", "--format", "{{.Names}}")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def compose_config_errors(compose: Path) -> list[str]:
    """What Docker Compose (Debian's docker-compose, installed with docker.io) finds wrong in a compose file."""
    if shutil.which("docker-compose") is None:
        return ["docker-compose is not installed (make test installs it with docker.io)"]
    done = subprocess.run(["docker-compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "T_API_KEY": "set-for-the-check"})
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()] if done.returncode else []


# ---------------------------------------------------------------- vLLM's own parser

def vllm_python() -> Path:
    default = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
    python = Path(os.environ.get("VLLM_CHECK_PYTHON", default))
    if not python.is_file():
        pytest.fail(f"the vLLM check venv is missing ({python}): run `make vllm-check-venv` (make test does)")
    return python


def vllm_accepts(command: list[str], mappings: dict[str, Path]) -> dict:
    """Run vLLM 0.33's `vllm serve` parser and create_engine_config() on the generated command."""
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(vllm_python()), str(CONTAINERS / "vllm_check.py"), json.dumps(command),
                             *[f"{k}={v}" for k, v in mappings.items()]], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"vLLM rejected {command}:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])
