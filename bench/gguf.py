"""GGUF export benchmark: `packager export --format gguf` vs calling llama.cpp's converter directly.

    python bench/gguf.py [--quant f16] [--repeat 2]

On a SmolLM2-135M run trained for a few steps and merged (made once under the work directory), each in a
fresh process, interleaved, best of --repeat: (a) llama.cpp's pinned converter on MERGED --outtype QUANT
(what a user would otherwise run; it writes the file and nothing else), and (b) `packager export RUN
--format gguf --quant QUANT`, which also checks the chat template and stop token in the file, loads it
back with llama.cpp and compares it with the merged model in float32 (teacher-forced top-1, KL,
perplexity, golden greedy answers), and records it in the manifest with its sha256. The float32
reference runs while the converter does (greedy answers taken from the merge stage's record when the
merged files are the ones it recorded); the parity check needs the finished file and runs after it.
The breakdown inside (b) is printed and saved: conversion, reference, parity.

Writes bench/results/gguf-<time>.json; exits 1 if (b) takes more than 1.1x the time of (a).
"""

from __future__ import annotations

import argparse
import json
import sys

from common import PY, WORKDIR, finish, measure, merged_run

TARGET = 1.1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quant", default="f16")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    run_dir = merged_run()
    direct_out = WORKDIR / "gguf" / f"direct-{args.quant}.gguf"
    direct_out.parent.mkdir(parents=True, exist_ok=True)
    from packager.stages.export.convert import converter_command

    converter, converter_env = converter_command(run_dir / "merged", direct_out, outtype=args.quant)
    sides = {
        "converter": converter,
        "packager_export": [PY, "-m", "packager", "export", str(run_dir), "--format", "gguf", "--quant", args.quant],
    }
    samples: dict[str, list[dict]] = {k: [] for k in sides}
    stage_seconds = []
    for _ in range(args.repeat):
        for name, cmd in sides.items():
            samples[name].append(measure(cmd, env=converter_env if name == "converter" else None))
            print(f"  {name:<16} {samples[name][-1]['seconds']:>6.1f} s  {samples[name][-1]['peak_rss_mb']:>6.0f} MB",
                  flush=True)
            if name == "packager_export":
                metrics = json.loads((run_dir / "manifest.json").read_text())["stages"]["export-gguf"]["metrics"]
                stage_seconds.append({"conversion": metrics["seconds"][args.quant],
                                      "reference_overlapped": metrics["reference_seconds"],
                                      "reference_greedy": metrics["reference_greedy"],
                                      "parity": metrics["parity"][args.quant]["seconds"]})
                print(f"    inside it: conversion {stage_seconds[-1]['conversion']} s, float32 reference "
                      f"{stage_seconds[-1]['reference_overlapped']} s meanwhile (greedy answers "
                      f"{stage_seconds[-1]['reference_greedy']}), parity in llama.cpp {stage_seconds[-1]['parity']} s",
                      flush=True)
    best = {name: min(s["seconds"] for s in runs) for name, runs in samples.items()}
    ratio = round(best["packager_export"] / best["converter"], 3)
    parity = json.loads((run_dir / "manifest.json").read_text())["stages"]["export-gguf"]["metrics"]["parity"]
    conversion = min(s["conversion"] for s in stage_seconds) / best["converter"]
    parity_alone = min(s["parity"] for s in stage_seconds) / best["converter"]
    missed = [f"packager export {ratio:.2f}x the converter's time"] if ratio > TARGET else []
    figure = (f"packager export --format gguf = {ratio:.2f}x the time of convert_hf_to_gguf alone "
              f"({best['packager_export']:.1f} s vs {best['converter']:.1f} s for {args.quant}, parity checked; "
              f"target <= {TARGET}x). Its conversion alone is {conversion:.2f}x the converter; the parity check "
              f"in llama.cpp alone is {parity_alone:.2f}x")
    return finish("gguf", {"quant": args.quant, "samples": samples, "best_seconds": best, "ratio": ratio,
                           "inside_packager": stage_seconds,
                           "conversion_vs_converter": round(conversion, 3), "parity_vs_converter": round(parity_alone, 3),
                           "parity": {k: {m: v[m] for m in ("top1_agreement", "mean_kl", "passed")}
                                      for k, v in parity.items()},
                           "gguf_bytes": direct_out.stat().st_size, "target": TARGET},
                  missed=missed, figure=figure)


if __name__ == "__main__":
    sys.exit(main())
