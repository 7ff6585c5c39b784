"""Training throughput benchmark: `packager train` vs a plain TRL SFTTrainer with default settings.

    python bench/train.py [--steps 16] [--batch-size 8]

Same model (the real SmolLM2-135M-Instruct), same data (the train split packager writes from
examples/data/tickets.jsonl), same number of optimizer steps and batch size, the same LoRA
(r=16, alpha=16, all linear projections) and learning rate, each in a fresh process:
(a) `packager train` with its defaults, (b) TRL's SFTTrainer with its defaults otherwise, given the
same split as a `messages` dataset, and (c) `packager train` with `train.packing: true` (TRL's best-fit
packing; on a CPU each packed row stays a row with attention per sequence, see packager.stages.train.packing).
Tokens are the non-padding tokens the Trainer itself counted on every side
(`include_num_input_tokens_seen="non_padding"`; without an attention mask, packed rows are counted as tokens
other than the pad token, which for SmolLM2 is also <|im_end|>, so (c) is undercounted by about 4%).
The compared figure is tokens per second of the training steps: `trainer.train()`'s seconds, less what
packager does there that plain TRL does not (its evaluations and sample generations, which it records as
eval_seconds and sample_seconds; the best checkpoint's saving and reloading stay in). The whole-run
figure is printed too. Process wall time and peak RSS are recorded.

Writes bench/results/train-<time>.json; exits 1 if (a) < 1.0x (b), or (c) < 1.5x (b).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import PY, WORKDIR, finish, measure, run_config

TARGET, TARGET_PACKED = 1.0, 1.5

PLAIN_TRL = r"""
import json, sys, time
import torch
from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

model, data, out, steps, batch, lr = sys.argv[1:7]
dataset = load_dataset("json", data_files=data, split="train")
args = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                 learning_rate=float(lr), report_to="none", include_num_input_tokens_seen="non_padding",
                 use_cpu=not torch.cuda.is_available())  # TRL refuses its own bf16 default on CPU without it
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                     peft_config=LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
started = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - started
print(json.dumps({"tokens_seen": int(trainer.state.num_input_tokens_seen), "train_seconds": seconds,
                  "global_step": trainer.state.global_step,
                  "settings": {k: getattr(args, k) for k in ("gradient_checkpointing", "bf16", "packing",
                                                             "padding_free", "max_length", "use_cpu")}}))
"""


def packager_side(name: str, *, steps: int, batch_size: int, packing: bool) -> dict:
    directory = WORKDIR / "train" / name
    config = run_config(directory, name=name, steps=steps, batch_size=batch_size, packing=packing)
    process = measure([PY, "-m", "packager", "train", "-c", str(config)])
    run_dir = directory / "runs" / name
    metrics = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["metrics"]
    return {"process": process, "run_dir": str(run_dir),
            **{k: metrics[k] for k in ("tokens_seen", "train_seconds", "global_step", "eval_seconds", "sample_seconds",
                                       "step_seconds", "precision")},
            "whole_tokens_per_second": metrics["tokens_seen"] / metrics["train_seconds"],
            "tokens_per_second": metrics["tokens_seen"] / metrics["step_seconds"]}


def trl_side(model: Path, data: Path, *, steps: int, batch_size: int, lr: float) -> dict:
    import subprocess
    import time

    out = WORKDIR / "train" / "plain-trl"
    started = time.perf_counter()
    proc = subprocess.run([PY, str(Path(__file__).parent / "measure.py"), PY, "-c", PLAIN_TRL, str(model),
                           str(data), str(out), str(steps), str(batch_size), str(lr)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or len(lines) < 2:
        raise SystemExit(f"plain TRL failed ({time.perf_counter() - started:.0f} s):\n{proc.stderr[-3000:]}")
    result, process = json.loads(lines[-2]), json.loads(lines[-1])
    result["process"] = process
    result["tokens_per_second"] = result["whole_tokens_per_second"] = result["tokens_seen"] / result["train_seconds"]
    return result


def padding_share(run_dir: Path, base: Path, *, batch_size: int, draws: int = 2000) -> dict:
    """The share of a random unpacked batch that is padding (rows padded to the batch's longest): what
    packing removes, worth 1 / (1 - share) over the same steps unpacked. (Packing also makes each step
    about 3x larger here, which spreads the per-step costs: the measured gain can exceed this.)"""
    import random

    from transformers import AutoTokenizer

    from packager.stages.data.split import read_split

    tokenizer = AutoTokenizer.from_pretrained(base)
    lengths = [len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])
               for c in read_split(run_dir / "data" / "train.jsonl")]
    rng = random.Random(0)
    real = padded = 0
    for _ in range(draws):
        batch = rng.sample(lengths, batch_size)
        real += sum(batch)
        padded += max(batch) * batch_size
    share = 1 - real / padded
    return {"share": round(share, 4), "packing_gain_bound": round(1 / (1 - share), 3),
            "lengths": {"min": min(lengths), "median": sorted(lengths)[len(lengths) // 2], "max": max(lengths)}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sides = {}
    sides["packager"] = packager_side("default", steps=args.steps, batch_size=args.batch_size, packing=False)
    print(f"  packager train            {sides['packager']['tokens_per_second']:>7.0f} tokens/s in its steps "
          f"({sides['packager']['precision']})", flush=True)
    run_dir = Path(sides["packager"]["run_dir"])
    base = Path(json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["parameters"]
                ["config"]["base"]["model"])
    sides["plain_trl"] = trl_side(base, run_dir / "data" / "train.jsonl", steps=args.steps,
                                  batch_size=args.batch_size, lr=5e-4)
    print(f"  plain TRL SFTTrainer      {sides['plain_trl']['tokens_per_second']:>7.0f} tokens/s "
          f"(defaults: {sides['plain_trl']['settings']})", flush=True)
    sides["packager_packing"] = packager_side("packing", steps=args.steps, batch_size=args.batch_size, packing=True)
    print(f"  packager train, packing   {sides['packager_packing']['tokens_per_second']:>7.0f} tokens/s in its steps",
          flush=True)
    for name, side in sides.items():
        extra = (f" ({side['step_seconds']:.1f} s of steps, evaluation {side['eval_seconds']:.1f} s, samples "
                 f"{side['sample_seconds']:.1f} s)") if "step_seconds" in side else ""
        print(f"    {name:<17} {side['tokens_seen']:>7} tokens in {side['train_seconds']:.1f} s of training{extra}, "
              f"{side['process']['seconds']:.1f} s process, {side['process']['peak_rss_mb']:.0f} MB peak RSS")
    reference = sides["plain_trl"]["tokens_per_second"]
    ratios = {"packager_vs_trl": round(sides["packager"]["tokens_per_second"] / reference, 3),
              "packager_packing_vs_trl": round(sides["packager_packing"]["tokens_per_second"] / reference, 3),
              "whole_train_packager_vs_trl": round(sides["packager"]["whole_tokens_per_second"] / reference, 3),
              "whole_train_packing_vs_trl": round(sides["packager_packing"]["whole_tokens_per_second"] / reference, 3),
              "process_time_packager_vs_trl": round(sides["packager"]["process"]["seconds"]
                                                    / sides["plain_trl"]["process"]["seconds"], 3)}
    padding = padding_share(run_dir, base, batch_size=args.batch_size)
    ceiling = round(ratios["packager_vs_trl"] * padding["packing_gain_bound"], 3)
    gain = sides["packager_packing"]["tokens_per_second"] / sides["packager"]["tokens_per_second"]
    print(f"    padding in a random unpacked batch of {args.batch_size}: {padding['share']:.1%} (conversation "
          f"lengths {padding['lengths']}); removing it is worth {padding['packing_gain_bound']:.2f}x over the "
          f"unpacked steps ({ceiling:.2f}x TRL); packing measured {gain:.2f}x over them (larger steps too)")
    ratios["packing_vs_unpacked"] = round(gain, 3)
    missed = []
    if ratios["packager_vs_trl"] < TARGET:
        missed.append(f"packager {ratios['packager_vs_trl']:.2f}x TRL tokens/s")
    if ratios["packager_packing_vs_trl"] < TARGET_PACKED:
        missed.append(f"packager with packing {ratios['packager_packing_vs_trl']:.2f}x TRL tokens/s")
    figure = (f"packager train = {ratios['packager_vs_trl']:.2f}x plain TRL tokens/s in the training steps "
              f"(target >= {TARGET}x; {ratios['whole_train_packager_vs_trl']:.2f}x with its evaluation and samples), "
              f"with packing {ratios['packager_packing_vs_trl']:.2f}x (target >= {TARGET_PACKED}x; "
              f"{ratios['whole_train_packing_vs_trl']:.2f}x whole)")
    return finish("train", {"steps": args.steps, "batch_size": args.batch_size, "sides": sides, "ratios": ratios,
                            "padding": padding, "padding_removed_vs_trl": ceiling,
                            "targets": {"packager": TARGET, "packing": TARGET_PACKED}}, missed=missed, figure=figure)


if __name__ == "__main__":
    sys.exit(main())
