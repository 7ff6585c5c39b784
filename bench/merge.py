"""Merge benchmark: packager's streaming merge vs PEFT merge_and_unload vs `cp -r`, at two model sizes.

    python bench/merge.py [--sizes 1.5,3] [--workdir /tmp/packager-bench]

Builds bf16 random Llamas of about 1.5 GB and 3 GB (2+ shards) and a rank-16
all-linear LoRA for each, then times, in fresh processes on the same files:
(a) `cp -r` of the base, (b) PEFT load + merge_and_unload + save_pretrained,
(c) packager's streaming merge (the write path), and (d) the full
`packager merge` command, whose verification loads the models to compare logits.
Prints ratios, writes bench/results/merge-<time>.json, and exits 1 if a target
is missed: (c) <= 0.5x PEFT time, <= 0.5x PEFT peak RSS, RSS growth <= 1.2x
when the model doubles.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PY = sys.executable


def build(directory: Path, gigabytes: float) -> Path:
    """A random bf16 Llama of about `gigabytes` GB plus a random rank-16 all-linear adapter."""
    if (directory / "adapter" / "adapter_model.safetensors").is_file():
        return directory
    script = f"""
import torch, json
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM, GenerationConfig
from peft import LoraConfig, get_peft_model
import sys; sys.path.insert(0, {str(HERE.parent / 'tests')!r})
from support.models import build_tokenizer
d = Path({str(directory)!r})
hidden, inter, vocab = 2048, 5632, 32000
per_layer = 4 * hidden * hidden + 3 * hidden * inter
layers = max(2, round(({gigabytes} * 1e9 / 2 - vocab * hidden) / per_layer))
cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=16,
                  num_key_value_heads=16, vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=512)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
model = LlamaForCausalLM(cfg)
model.generation_config = GenerationConfig(eos_token_id=2)
model.save_pretrained(d / "base", max_shard_size="700MB")
tok = build_tokenizer(d / "base")
peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
peft.save_pretrained(d / "adapter")
print(layers, "layers")
"""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([PY, "-c", script], check=True)
    return directory


PEFT_MERGE = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
"""

STREAM_MERGE = """
import sys
from pathlib import Path
from packager.models.checkpoint import inspect_checkpoint
from packager.models.adapter import read_adapter
from packager.stages.merge.stream import stream_merge
base, adapter, out = map(Path, sys.argv[1:4])
out.mkdir()
stream_merge(inspect_checkpoint(base), read_adapter(adapter), out, dtype="bfloat16", shard_bytes=2 * 10**9)
"""


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([PY, str(HERE / "measure.py"), *cmd], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return result


def run_size(directory: Path, gigabytes: float) -> dict:
    build(directory, gigabytes)
    base, adapter = directory / "base", directory / "adapter"
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    results = {"base_bytes": size}
    for name, cmd in [
        ("cp", ["cp", "-r", str(base), str(directory / "out-cp")]),
        ("peft", [PY, "-c", PEFT_MERGE, str(base), str(adapter), str(directory / "out-peft")]),
        ("packager_stream", [PY, "-c", STREAM_MERGE, str(base), str(adapter), str(directory / "out-stream")]),
        ("packager_merge_cli", [PY, "-m", "packager", "merge", "--adapter", str(adapter), "--base", str(base),
                                "--out", str(directory / "out-run")]),
    ]:
        for leftover in directory.glob("out-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        results[name] = measure(cmd)
        print(f"  {gigabytes} GB  {name:<20} {results[name]['seconds']:>8.1f} s  "
              f"{results[name]['peak_rss_mb']:>8.0f} MB", flush=True)
    for leftover in directory.glob("out-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1.5,3")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/packager-bench"))
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    results = {str(s): run_size(args.workdir / f"llama-{s}gb", s) for s in sizes}
    missed = []
    for s, r in results.items():
        time_ratio = r["packager_stream"]["seconds"] / r["peft"]["seconds"]
        rss_ratio = r["packager_stream"]["peak_rss_mb"] / r["peft"]["peak_rss_mb"]
        r["ratios"] = {"stream_vs_peft_time": round(time_ratio, 3), "stream_vs_peft_rss": round(rss_ratio, 3),
                       "cli_vs_peft_time": round(r["packager_merge_cli"]["seconds"] / r["peft"]["seconds"], 3),
                       "cli_vs_peft_rss": round(r["packager_merge_cli"]["peak_rss_mb"] / r["peft"]["peak_rss_mb"], 3),
                       "stream_vs_cp_time": round(r["packager_stream"]["seconds"] / r["cp"]["seconds"], 3)}
        print(f"{s} GB: streaming merge = {time_ratio:.2f}x PEFT time, {rss_ratio:.2f}x PEFT peak RSS; "
              f"full command with verification = {r['ratios']['cli_vs_peft_time']:.2f}x time, "
              f"{r['ratios']['cli_vs_peft_rss']:.2f}x RSS")
        missed += [f"{s} GB time" for _ in [0] if time_ratio > 0.5] + [f"{s} GB RSS" for _ in [0] if rss_ratio > 0.5]
    if len(sizes) >= 2:
        small, large = results[str(sizes[0])], results[str(sizes[-1])]
        growth = large["packager_stream"]["peak_rss_mb"] / small["packager_stream"]["peak_rss_mb"]
        results["rss_growth_when_doubled"] = round(growth, 3)
        print(f"streaming merge peak RSS growth from {sizes[0]} GB to {sizes[-1]} GB: {growth:.2f}x")
        if growth > 1.2:
            missed.append("RSS growth")
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / f"merge-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    print("targets missed: " + ", ".join(missed) if missed else "all targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
