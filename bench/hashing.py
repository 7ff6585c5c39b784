"""Hashing benchmark: packager's manifest hashing vs Python hashlib vs `sha256sum`, and bytes read per stage.

    python bench/hashing.py [--gigabytes 1] [--repeat 3] [--no-stages]

Throughput, on the same files (random bytes, 4 files, already in the page cache so every side hashes from
memory alike), each side in a fresh process, interleaved, best of --repeat:
(a) `sha256sum FILES`, (b) a plain Python hashlib loop (1 MiB reads, `h.update`), (c) packager's
`sha256_file` (what the manifest calls), (d) `packager verify` on a run that records the files (the
whole manifest path: read the manifest, re-hash every file, look for unrecorded files), (e) recording
the files as a stage's inputs in a fresh run (hash cache empty).

Bytes read per stage, measured, not assumed: for each stage, the process's `rchar` (bytes returned by
read syscalls, /proc/self/io) and the bytes packager's hashing layer read are divided by the bytes the
stage consumed and produced. The stages are: writing the files as a stage's outputs (hashed while
writing), consuming them in a later stage (hash cache), `verify`, and the real `packager merge` and
`packager export --format safetensors` on a SmolLM2 run.

Writes bench/results/hashing-<time>.json; exits 1 if (c) or (d) is slower than 0.9x hashlib's
throughput, or a stage reads an output byte again to hash it, or reads an input byte more than once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import PY, ROOT, WORKDIR, finish, merged_run

TARGET = 0.9
FILES = 4

HASHLIB = """
import hashlib, sys, time
started = time.perf_counter()
for name in sys.argv[1:]:
    h = hashlib.sha256()
    with open(name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    print(h.hexdigest(), name)
print(time.perf_counter() - started, file=sys.stderr)
"""
PACKAGER_FILE = """
import sys, time
from packager.run.hashing import sha256_file
started = time.perf_counter()
for name in sys.argv[1:]:
    print(sha256_file(name).sha256, name)
print(time.perf_counter() - started, file=sys.stderr)
"""
PACKAGER_VERIFY = """
import sys, time
from packager.run.verify import verify_run
started = time.perf_counter()
report = verify_run(sys.argv[1])
assert report.ok, report.problems
print(time.perf_counter() - started, file=sys.stderr)
"""
PACKAGER_RECORD = """
import shutil, sys, time
from pathlib import Path
from packager.run.directory import Run
run_dir = Path(sys.argv[1])
shutil.rmtree(run_dir, ignore_errors=True)
run = Run.create(run_dir, name="record")
started = time.perf_counter()
with run.stage("consume") as st:
    for name in sys.argv[2:]:
        st.add_input(Path(name))
print(time.perf_counter() - started, file=sys.stderr)
"""


def make_files(directory: Path, total_bytes: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / f"shard-{i}.bin" for i in range(FILES)]
    each = total_bytes // FILES
    for f in files:
        if not f.is_file() or f.stat().st_size != each:
            with open(f, "wb") as out:
                for _ in range(each // (16 << 20)):
                    out.write(os.urandom(16 << 20))
                out.write(os.urandom(each % (16 << 20)))
    return files


def payload_run(run_dir: Path, files: list[Path]) -> Path:
    """A run recording copies of the files as one stage's outputs, for `verify` to re-hash."""
    import shutil

    from packager.run.directory import Run

    if (run_dir / "manifest.json").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    run = Run.create(run_dir, name="payload")
    with run.stage("payload") as st:
        out = st.output_dir("payload")
        for f in files:
            os.link(f, out / f.name)  # the same bytes, same inodes: the same page cache for every side
    return run_dir


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds of the process, seconds the process itself reports for the hashing)."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    inner = proc.stderr.strip().splitlines()[-1] if cmd[0] == PY else ""
    return wall, float(inner) if inner else wall


def throughput(files: list[Path], run_dir: Path, record_dir: Path, repeat: int) -> dict:
    names = [str(f) for f in files]
    total = sum(f.stat().st_size for f in files)
    sides = {
        "sha256sum": ["sha256sum", *names],
        "hashlib": [PY, "-c", HASHLIB, *names],
        "packager_sha256_file": [PY, "-c", PACKAGER_FILE, *names],
        "packager_verify": [PY, "-c", PACKAGER_VERIFY, str(run_dir)],
        "packager_record_inputs": [PY, "-c", PACKAGER_RECORD, str(record_dir), *names],
    }
    subprocess.run(["cat", *names], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for _ in range(repeat):
        for name, cmd in sides.items():
            samples[name].append(timed(cmd))
    result = {}
    for name, s in samples.items():
        inner = min(i for _, i in s)
        wall = min(w for w, _ in s)
        result[name] = {"seconds": round(inner, 3), "process_seconds": round(wall, 3),
                        "mb_per_s": round(total / inner / 1e6, 1)}
        print(f"  {name:<24} {inner:>6.2f} s hashing  ({total / inner / 1e6:>6.0f} MB/s; "
              f"{wall:.2f} s with process start)", flush=True)
    return result


# ---------------------------------------------------------------- bytes read per stage

# Prepended to both scripts: counts the bytes packager hashes, and reads the process's rchar.
COUNTING = r"""
import packager.run.hashing as hashing

hashed = {"bytes": 0}
_sha256_file = hashing.sha256_file
def counting_sha256_file(path):
    d = _sha256_file(path)
    hashed["bytes"] += d.size
    return d
hashing.sha256_file = counting_sha256_file
import packager.run.directory as directory
import packager.run.verify as verify
directory.sha256_file = counting_sha256_file
verify.sha256_file = counting_sha256_file
import packager.run.hash_cache as hash_cache
hash_cache.sha256_file = counting_sha256_file

def rchar():
    return int(next(l for l in open("/proc/self/io") if l.startswith("rchar:")).split()[1])
"""

STAGES = COUNTING + r"""
import json, os, shutil, sys
from pathlib import Path

def measured(fn):
    before, hashed_before = rchar(), hashed["bytes"]
    fn()
    return {"rchar": rchar() - before, "hashed": hashed["bytes"] - hashed_before}

files = [Path(p) for p in sys.argv[2:]]
total = sum(f.stat().st_size for f in files)
work = Path(sys.argv[1]); shutil.rmtree(work, ignore_errors=True)
run = directory.Run.create(work, name="bytes")
chunks = {f: f.read_bytes() for f in files}  # the payload, in memory: the write stage produces it from nothing
results = {}

def write_stage():
    from packager.run.hashing import HashingWriter
    with run.stage("write") as st:
        out = st.output_dir("payload")
        for f, data in chunks.items():
            with open(out / f.name, "wb") as dst:
                w = HashingWriter(dst)
                for i in range(0, len(data), 4 << 20):
                    w.write(data[i:i + (4 << 20)])
            st.known_digest(out / f.name, w.digest())
results["write outputs (hashed while writing)"] = {**measured(write_stage), "consumed": 0, "produced": total}

def consume_stage():
    with run.stage("consume") as st:
        for f in files:
            st.add_input(work / "payload" / f.name)
        st.write_output_text("consumed.txt", "ok\n")
results["consume them in a later stage (hash cache)"] = {**measured(consume_stage), "consumed": total,
                                                         "produced": 3}

def verify():
    assert verify.verify_run(work).ok
results["verify (re-hash everything, no cache)"] = {**measured(verify), "consumed": total, "produced": 0}
print(json.dumps(results))
"""

REAL_STAGE = COUNTING + r"""
import json, sys
from pathlib import Path
import torch, transformers, peft, safetensors.torch  # imported before counting: module files are not the stage
from transformers import AutoModelForCausalLM, AutoTokenizer
import packager.stages.merge.stage, packager.stages.export.formats, packager.models.checkpoint, packager.stages.data.split
from packager.cli import cli

args = sys.argv[1:]
before, hashed_before = rchar(), hashed["bytes"]
try:
    cli.main(args, standalone_mode=False)
finally:
    print(json.dumps({"rchar": rchar() - before, "hashed": hashed["bytes"] - hashed_before}))
"""


def bytes_per_stage(files: list[Path]) -> dict:
    out = subprocess.run([PY, "-c", STAGES, str(WORKDIR / "hashing" / "bytes-run"), *map(str, files)],
                         capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def real_stages(*, with_merge: bool) -> dict:
    """`packager merge` and `packager export --format safetensors` on a SmolLM2 run, counted in-process."""
    import json
    import shutil

    source = merged_run()
    run_dir = WORKDIR / "hashing" / "smol"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("lock", ".partial-*", "gguf-work-*"))
    # copytree keeps sizes and mtimes: move the hash cache to the new paths, as if the run had been made here
    cache = run_dir / ".packager" / "hash-cache.json"
    if cache.is_file():
        entries = json.loads(cache.read_text())
        cache.write_text(json.dumps({k.replace(str(source.resolve()), str(run_dir.resolve()), 1): v
                                     for k, v in entries.items()}))
    stages = [("packager export --format safetensors", ["export", str(run_dir), "--format", "safetensors"])]
    if with_merge:
        stages.insert(0, ("packager merge", ["merge", str(run_dir), "--dtype", "float16"]))
    results = {}
    for name, args in stages:
        proc = subprocess.run([PY, "-c", REAL_STAGE, *args], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        counts = json.loads(proc.stdout.strip().splitlines()[-1])
        stage = {"packager merge": "merge", "packager export --format safetensors": "export-safetensors"}[name]
        record = json.loads((run_dir / "manifest.json").read_text())["stages"][stage]
        weights = [i for i in record["inputs"] if i["path"].endswith(".safetensors")]
        counts["consumed"] = sum(i["size"] for i in record["inputs"])
        counts["consumed_weights"] = sum(i["size"] for i in weights)
        counts["produced"] = sum(o["size"] for o in record["outputs"])
        results[name] = counts
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-stages", action="store_true", help="skip the real merge/export stages")
    parser.add_argument("--no-merge-stage", action="store_true", help="of the real stages, skip merge (slow)")
    args = parser.parse_args()
    files = make_files(WORKDIR / "hashing" / "files", int(args.gigabytes * 2**30))
    run_dir = payload_run(WORKDIR / "hashing" / "payload-run", files)
    speeds = throughput(files, run_dir, WORKDIR / "hashing" / "record-run", args.repeat)
    hashlib_s = speeds["hashlib"]["seconds"]
    ratios = {name: round(hashlib_s / speeds[name]["seconds"], 3)
              for name in ("packager_sha256_file", "packager_verify", "packager_record_inputs", "sha256sum")}

    stages = bytes_per_stage(files)
    if not args.no_stages:
        stages.update(real_stages(with_merge=not args.no_merge_stage))
    missed = [f"{name} {ratios[name]:.2f}x hashlib throughput" for name in
              ("packager_sha256_file", "packager_verify") if ratios[name] < TARGET]
    print("  bytes read per stage (rchar: all read syscalls; hashed: read by the hashing layer):")
    for name, s in stages.items():
        s["rchar_per_consumed_byte"] = round(s["rchar"] / s["consumed"], 3) if s["consumed"] else None
        s["hash_reads_per_byte"] = round(s["hashed"] / (s["consumed"] + s["produced"]), 3)
        print(f"    {name:<46} consumed {s['consumed'] / 1e6:>7.1f} MB, produced {s['produced'] / 1e6:>7.1f} MB: "
              f"read {s['rchar'] / 1e6:>7.1f} MB ({s['rchar_per_consumed_byte']}x consumed), "
              f"hashed from disk {s['hashed'] / 1e6:>7.1f} MB", flush=True)
        if s["consumed"] and s["rchar"] > 1.05 * s["consumed"] + (8 << 20):
            missed.append(f"{name} reads {s['rchar_per_consumed_byte']}x what it consumes")
        if s["hashed"] > s["consumed"] and s["produced"]:
            missed.append(f"{name} re-reads outputs to hash them")
    figure = (f"packager sha256_file = {ratios['packager_sha256_file']:.2f}x, packager verify = "
              f"{ratios['packager_verify']:.2f}x, sha256sum = {ratios['sha256sum']:.2f}x hashlib throughput "
              f"(target >= {TARGET}x); every stage reads each byte at most once, outputs hashed while written")
    if any("read" in m for m in missed):
        figure = figure.replace("every stage reads each byte at most once", "some stage reads bytes twice")
    return finish("hashing", {"bytes": sum(f.stat().st_size for f in files), "throughput": speeds,
                              "ratios_vs_hashlib": ratios, "bytes_read_per_stage": stages, "target": TARGET},
                  missed=missed, figure=figure)


if __name__ == "__main__":
    sys.exit(main())
