"""Image rebuild benchmark: a second `containerize --build` after a config-only change vs the first (Podman).

    python bench/rebuild.py

On a copy of the merged SmolLM2 run, in fresh processes: (a) `packager containerize RUN --target vllm
--build --engine podman` with no cached layers of this model, then (b) the same after a config-only change
(`containers.vllm.gpu_memory_utilization`, given with -c), which must reuse the base, user and weights
layers. The vLLM base image cannot be pulled here, so it is the tests' local stand-in under the same tag
(tests/serve/containers/build_standin.sh, a debootstrap rootfs; built once, not timed). Podman runs with the
tests' settings (tests/serve/containers/containers.conf) and a storage of its own under the work directory, so
"no cached layers" is true without touching anyone else's images.

Writes bench/results/rebuild-<time>.json; exits 1 if (b) takes more than 0.2x the time of (a), and 3
(skipped) when Podman is not installed or does not work here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from common import PY, ROOT, WORKDIR, finish, measure, merged_run, skip

TARGET = 0.2
VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.33.0"
CONTAINERS = ROOT / "tests" / "serve" / "containers"


def podman_env() -> dict:
    """The tests' Podman settings, with the benchmark's own image storage."""
    storage = WORKDIR / "podman"
    storage.mkdir(parents=True, exist_ok=True)
    conf = storage / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{storage / "storage"}"\n'
                    f'runroot = "{storage / "run"}"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
    if "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(CONTAINERS / "containers.conf")
    return env


def podman(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env)


def ensure_standin(env: dict) -> None:
    if podman(env, "image", "exists", VLLM_IMAGE).returncode == 0:
        return
    print("  building the stand-in vLLM base image once (debootstrap, not timed)", flush=True)
    subprocess.run(["bash", str(CONTAINERS / "build_standin.sh"), VLLM_IMAGE], env=env, check=True)


def forget_built_images(env: dict) -> None:
    """Every image in the benchmark's storage but the stand-in base, so the first build has no cache."""
    keep = podman(env, "image", "inspect", VLLM_IMAGE, "--format", "{{.Id}}").stdout.strip()
    ids = podman(env, "images", "-a", "-q", "--no-trunc").stdout.split()
    drop = [i for i in ids if i.removeprefix("sha256:") != keep.removeprefix("sha256:")]
    if drop:
        podman(env, "rmi", "-f", *drop)


def copy_step_seconds(env: dict, context: Path) -> float:
    """Seconds podman spends on the weights' COPY step of ``context`` (built as a throwaway tag), from the
    time between the step's line and the next one in its output."""
    import time

    proc = subprocess.Popen(["podman", "build", "-t", "localhost/bench/copy-step:latest", "--format", "docker",
                             "-f", str(context / "Dockerfile"), str(context)],
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


def main() -> int:
    if shutil.which("podman") is None:
        return skip("rebuild", "podman is not installed (apt install podman runc debootstrap)")
    env = podman_env()
    probe = podman(env, "info")
    if probe.returncode != 0:
        return skip("rebuild", f"podman is installed but does not work here: {probe.stderr.strip()[-500:]}")
    ensure_standin(env)
    source = merged_run()
    run_dir = WORKDIR / "rebuild" / source.name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("lock"))
    recorded = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["parameters"]["config"]
    recorded["containers"] = {"vllm": {"gpu_memory_utilization": 0.7}}
    changed = WORKDIR / "rebuild" / "serve.yaml"
    changed.write_text(yaml.safe_dump(recorded))
    forget_built_images(env)

    command = [PY, "-m", "packager", "containerize", str(run_dir), "--target", "vllm", "--build",
               "--engine", "podman"]
    sides, images = {}, {}
    for name, cmd in [("first", command), ("config_only_change", [*command, "-c", str(changed)])]:
        sides[name] = measure(cmd, env=env)
        images[name] = json.loads((run_dir / "containers" / "vllm-image.json").read_text())
        print(f"  {name:<20} {sides[name]['seconds']:>6.1f} s (podman build {images[name]['seconds']} s, "
              f"{images[name]['cached_steps']} cached steps)", flush=True)
    # Where a cached build's time goes: podman re-reads every byte of a COPY source to find its cache entry.
    forget_built_images(env)
    context = run_dir / "containers" / "vllm"
    copy = {"uncached": copy_step_seconds(env, context), "cached": copy_step_seconds(env, context)}
    copy["ratio"] = round(copy["cached"] / copy["uncached"], 3)
    print(f"  podman alone, the weights' COPY step: {copy['uncached']} s uncached, {copy['cached']} s to find "
          f"its cache entry ({copy['ratio']:.2f}x)", flush=True)
    first, second = images["first"], images["config_only_change"]
    shared = sum(1 for a, b in zip(first["layers"], second["layers"]) if a == b)
    ratio = round(sides["config_only_change"]["seconds"] / sides["first"]["seconds"], 3)
    build_ratio = round(second["seconds"] / first["seconds"], 3)
    weights_bytes = sum(p.stat().st_size for p in (run_dir / "merged").iterdir())
    missed = [f"rebuild {ratio:.2f}x the first build"] if ratio > TARGET else []
    if first["image_id"] == second["image_id"]:
        missed.append("the config change did not change the image")
    figure = (f"containerize --build after a config-only change = {ratio:.2f}x the first build "
              f"({sides['config_only_change']['seconds']:.1f} s vs {sides['first']['seconds']:.1f} s; podman build "
              f"alone {build_ratio:.2f}x; {shared} of {len(second['layers'])} layers reused; target <= {TARGET}x). "
              f"Podman's cache lookup of the weights' COPY alone takes {copy['ratio']:.2f}x that step uncached")
    forget_built_images(env)
    return finish("rebuild", {"sides": sides, "podman_build_seconds": {k: v["seconds"] for k, v in images.items()},
                              "cached_steps": {k: v["cached_steps"] for k, v in images.items()},
                              "layers": {k: v["layers"] for k, v in images.items()}, "shared_layers": shared,
                              "weights_bytes": weights_bytes, "weights_copy_step_seconds": copy, "ratio": ratio, "podman_build_ratio": build_ratio,
                              "target": TARGET}, missed=missed, figure=figure)


if __name__ == "__main__":
    sys.exit(main())
