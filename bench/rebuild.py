"""Image rebuild benchmark: a second `containerize --build` after a config-only change vs the first, on Podman
and on Docker (BuildKit).

    python bench/rebuild.py                 # both engines
    python bench/rebuild.py docker          # one

On a copy of the merged SmolLM2 run, in fresh processes, per engine: (a) `packager containerize RUN --target
vllm --build --engine E` with no cached layers of this model, then (b) the same after a config-only change
(`containers.vllm.gpu_memory_utilization`, given with -c), which must reuse the base, user and weights layers.
The vLLM base image cannot be pulled here, so it is the tests' local stand-in under the same tag
(tests/serve/containers/build_standin.sh, a debootstrap rootfs; built once per engine, not timed).

Each engine gets storage of its own under the work directory, so "no cached layers" is true without touching
anyone else's images: Podman with the tests' settings (tests/serve/containers/containers.conf) and its own
graphroot; Docker as Debian's dockerd (root only, no systemd here) started on a private socket and data root,
BuildKit on, stopped at the end. Then where each spends a cached build: Podman's lookup of the weights' COPY
step (it re-reads every byte), BuildKit's transfer of the build context (it compares file metadata).

Writes bench/results/rebuild-<time>.json; exits 1 if (b) takes more than 0.2x the time of (a) on an engine
that ran, and 3 (skipped) when neither engine works here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from common import PY, ROOT, WORKDIR, finish, measure, merged_run, skip

TARGET = 0.2
VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.33.0"
CONTAINERS = ROOT / "tests" / "serve" / "containers"
DOCKER_CLIENT = "/usr/bin/docker"  # Debian's 20.10 client builds with BuildKit without buildx
DOCKER_RUN = Path("/run/packager-bench-docker")  # short: a socket's path must fit sun_path


@contextmanager
def podman_env():
    """The tests' Podman settings, with the benchmark's own image storage; None when Podman does not work."""
    if shutil.which("podman") is None:
        yield None, "podman is not installed (apt install podman runc debootstrap)"
        return
    storage = WORKDIR / "podman"
    storage.mkdir(parents=True, exist_ok=True)
    conf = storage / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{storage / "storage"}"\n'
                    f'runroot = "{storage / "run"}"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
    if "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(CONTAINERS / "containers.conf")
    probe = subprocess.run(["podman", "info"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        yield None, f"podman is installed but does not work here: {probe.stderr.strip()[-500:]}"
        return
    yield env, None


@contextmanager
def docker_env():
    """Debian's dockerd on a private socket and data root, stopped on exit; None when it cannot start."""
    if shutil.which("dockerd") is None or not Path(DOCKER_CLIENT).is_file():
        yield None, "Docker is not installed (apt install docker.io)"
        return
    if os.geteuid() != 0:
        yield None, "dockerd needs root here (no systemd, no rootless set-up)"
        return
    (DOCKER_RUN / "bin").mkdir(parents=True, exist_ok=True)
    if not (DOCKER_RUN / "bin" / "docker").exists():
        (DOCKER_RUN / "bin" / "docker").symlink_to(DOCKER_CLIENT)
    env = {**os.environ, "DOCKER_HOST": f"unix://{DOCKER_RUN / 'docker.sock'}", "DOCKER_BUILDKIT": "1",
           "PATH": f"{DOCKER_RUN / 'bin'}:{os.environ['PATH']}"}
    log = open(DOCKER_RUN / "dockerd.log", "a")
    daemon = subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
                               "--exec-opt", "native.cgroupdriver=cgroupfs", "--data-root", str(WORKDIR / "docker"),
                               "--exec-root", str(DOCKER_RUN / "exec"), "-H", env["DOCKER_HOST"],
                               "--pidfile", str(DOCKER_RUN / "dockerd.pid")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while engine_cmd("docker", env, "version").returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                yield None, f"dockerd did not start; see {DOCKER_RUN / 'dockerd.log'}"
                return
            time.sleep(0.5)
        yield env, None
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


def engine_cmd(engine: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([engine, *args], capture_output=True, text=True, env=env)


def ensure_standin(engine: str, env: dict) -> None:
    if engine_cmd(engine, env, "image", "inspect", VLLM_IMAGE).returncode == 0:
        return
    print(f"  building the stand-in vLLM base image in {engine} once (debootstrap, not timed)", flush=True)
    subprocess.run(["bash", str(CONTAINERS / "build_standin.sh"), VLLM_IMAGE, engine], env=env, check=True)


def forget_built_images(engine: str, env: dict) -> None:
    """Every image in the benchmark's storage but the stand-in base, and the build cache, so the first build
    has no cache."""
    keep = engine_cmd(engine, env, "image", "inspect", VLLM_IMAGE, "--format", "{{.Id}}").stdout.strip()
    ids = engine_cmd(engine, env, "images", "-a", "-q", "--no-trunc").stdout.split()
    drop = sorted({i for i in ids if i.removeprefix("sha256:") != keep.removeprefix("sha256:")})
    if drop:
        engine_cmd(engine, env, "rmi", "-f", *drop)
    if engine == "docker":
        engine_cmd(engine, env, "builder", "prune", "-a", "-f")


def podman_copy_step_seconds(env: dict, context: Path) -> float:
    """Seconds Podman spends on the weights' COPY step of ``context`` (built as a throwaway tag), from the
    time between the step's line and the next one in its output."""
    proc = subprocess.Popen(["podman", "build", "--network", "none", "-t", "localhost/bench/copy-step:latest",
                             "--format", "docker", "-f", str(context / "Dockerfile"), str(context)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    started = None
    for line in proc.stdout:
        if started is None and line.startswith("STEP") and " COPY " in line and "model" in line:
            started = time.perf_counter()
        elif started is not None and line.startswith("STEP"):
            seconds = time.perf_counter() - started
            break
    proc.communicate()
    if proc.returncode != 0 or started is None:
        raise SystemExit(f"podman build of {context} failed or has no weights COPY step")
    return round(seconds, 2)


def buildkit_context_seconds(log: Path) -> float | None:
    """BuildKit's time to load the build context, from its plain progress ('#6 [internal] load build context'
    ... '#6 DONE 2.4s'): on a rebuild it sends only the files whose metadata changed."""
    text = log.read_text()
    step = re.search(r"^#(\d+) \[internal\] load build context$", text, re.M)
    done = step and re.search(rf"^#{step.group(1)} DONE ([0-9.]+)s$", text, re.M)
    return float(done.group(1)) if done else None


def bench_engine(engine: str, env: dict, source: Path) -> dict:
    ensure_standin(engine, env)
    run_dir = WORKDIR / "rebuild" / engine / source.name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("lock"))
    recorded = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["parameters"]["config"]
    recorded["containers"] = {"vllm": {"gpu_memory_utilization": 0.7}}
    changed = run_dir.parent / "serve.yaml"
    changed.write_text(yaml.safe_dump(recorded))
    forget_built_images(engine, env)
    command = [PY, "-m", "packager", "containerize", str(run_dir), "--target", "vllm", "--build",
               "--engine", engine]
    sides, images, where = {}, {}, {}
    log = run_dir / ".packager" / "logs" / "build-vllm.log"
    for name, cmd in [("first", command), ("config_only_change", [*command, "-c", str(changed)])]:
        sides[name] = measure(cmd, env=env)
        images[name] = json.loads((run_dir / "containers" / "vllm-image.json").read_text())
        where[name] = buildkit_context_seconds(log) if engine == "docker" else None
        print(f"  {engine:<7} {name:<20} {sides[name]['seconds']:>6.1f} s ({engine} build "
              f"{images[name]['seconds']} s, {images[name]['cached_steps']} cached steps)", flush=True)
    if engine == "podman":  # where a cached build's time goes: podman re-reads every byte of a COPY source
        forget_built_images(engine, env)
        context = run_dir / "containers" / "vllm"
        where = {"first": podman_copy_step_seconds(env, context),
                 "config_only_change": podman_copy_step_seconds(env, context)}
    forget_built_images(engine, env)
    first, second = images["first"], images["config_only_change"]
    return {"sides": sides, "build_seconds": {k: v["seconds"] for k, v in images.items()},
            "cached_steps": {k: v["cached_steps"] for k, v in images.items()},
            "layers": {k: v["layers"] for k, v in images.items()},
            "shared_layers": sum(1 for a, b in zip(first["layers"], second["layers"]) if a == b),
            "image_changed": first["image_id"] != second["image_id"],
            "weights_seconds": where,
            "ratio": round(sides["config_only_change"]["seconds"] / sides["first"]["seconds"], 3),
            "build_ratio": round(second["seconds"] / first["seconds"], 3)}


def describe(engine: str, r: dict) -> str:
    s, w = r["sides"], r["weights_seconds"]
    weights = ("weights' COPY step" if engine == "podman" else "context transfer")
    spent = (f"{weights} {w['first']} s then {w['config_only_change']} s"
             if w.get("first") is not None and w.get("config_only_change") is not None else f"{weights} not found")
    return (f"{engine}: {r['ratio']:.2f}x ({s['config_only_change']['seconds']:.1f} s vs {s['first']['seconds']:.1f} s;"
            f" build alone {r['build_ratio']:.2f}x; {r['shared_layers']} of {len(r['layers']['first'])} layers "
            f"reused; {spent})")


def main(engines: list[str]) -> int:
    source, results, skipped, missed = None, {}, {}, []
    for engine in engines:
        with (podman_env() if engine == "podman" else docker_env()) as (env, why):
            if env is None:
                skipped[engine] = why
                print(f"  {engine}: skipped: {why}", flush=True)
                continue
            source = source or merged_run()
            results[engine] = bench_engine(engine, env, source)
        r = results[engine]
        if r["ratio"] > TARGET:
            missed.append(f"{engine} rebuild {r['ratio']:.2f}x the first build")
        if not r["image_changed"]:
            missed.append(f"{engine}: the config change did not change the image")
    if not results:
        return skip("rebuild", "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    figure = ("containerize --build after a config-only change vs the first: "
              + "; ".join(describe(e, r) for e, r in results.items())
              + "".join(f"; {e} skipped ({why})" for e, why in skipped.items()) + f"; target <= {TARGET}x")
    return finish("rebuild", {"engines": results, "skipped": skipped, "target": TARGET}, missed=missed,
                  figure=figure)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["podman", "docker"]))
