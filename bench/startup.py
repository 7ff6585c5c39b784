"""Startup benchmark: `packager --help` and `packager verify --help` vs `python -c "import torch, transformers"`.

    python bench/startup.py [--repeat 7]

Each command runs --repeat times in a fresh process, interleaved so that load from other processes hits
all of them alike; the median wall time counts. Also records which heavy modules `packager verify --help`
imports (it must import none). Writes bench/results/startup-<time>.json and exits 1 if either command
takes more than 0.1x the time of importing torch and transformers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import PY, finish, median

TARGET = 0.1
HEAVY = ("torch", "transformers", "trl", "peft", "llama_cpp", "datasets", "accelerate", "numpy")
COMMANDS = {
    "packager --help": [PY, "-m", "packager", "--help"],
    "packager verify --help": [PY, "-m", "packager", "verify", "--help"],
    "import torch, transformers": [PY, "-c", "import torch, transformers"],
}
IMPORTED = ("import sys, runpy; sys.argv = ['packager', 'verify', '--help']\n"
            "try:\n    runpy.run_module('packager', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")


def time_once(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for cmd in COMMANDS.values():
        time_once(cmd)  # warm the page cache for every side
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            samples[name].append(time_once(cmd))
    medians = {name: round(median(s), 4) for name, s in samples.items()}
    reference = medians["import torch, transformers"]
    ratios = {name: round(medians[name] / reference, 4) for name in ("packager --help", "packager verify --help")}
    modules = subprocess.run([PY, "-c", IMPORTED], capture_output=True, text=True, check=True).stderr.split()
    heavy = [m for m in HEAVY if m in modules]
    for name in COMMANDS:
        print(f"  {name:<28} median {medians[name] * 1000:>7.0f} ms  "
              f"(min {min(samples[name]) * 1000:.0f}, max {max(samples[name]) * 1000:.0f})")
    print(f"  heavy modules imported by `packager verify --help`: {', '.join(heavy) or 'none'}")
    missed = [f"{name} {r:.3f}x > {TARGET}x" for name, r in ratios.items() if r > TARGET]
    missed += [f"verify --help imports {', '.join(heavy)}"] if heavy else []
    figure = (f"packager --help = {ratios['packager --help']:.3f}x, packager verify --help = "
              f"{ratios['packager verify --help']:.3f}x the time of import torch, transformers "
              f"({medians['packager --help'] * 1000:.0f} / {medians['packager verify --help'] * 1000:.0f} / "
              f"{reference * 1000:.0f} ms; target <= {TARGET}x)")
    return finish("startup", {"seconds": samples, "median_seconds": medians, "ratios": ratios,
                              "heavy_modules_imported_by_verify_help": heavy, "target": TARGET},
                  missed=missed, figure=figure)


if __name__ == "__main__":
    sys.exit(main())
