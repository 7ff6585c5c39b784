"""The merge proven: logits of the merged checkpoint against base + adapter unmerged (PEFT) and against the
base alone, on fixed prompts, within the output dtype's tolerance; and the merged model's golden answers."""

from __future__ import annotations

from pathlib import Path

from packager.errors import StageError
from packager.models.golden import golden_questions, torch_golden
from packager.models.inference import load_causal_lm, teacher_forced_logits
from packager.models.tokenizer import chat_ids


# Greedy-token agreement and logit tolerances, per output dtype: bf16 keeps 8 mantissa bits, fp16 11.
# The mean |logit difference| is measured relative to the standard deviation of the reference logits.
TOLERANCE = {"bfloat16": {"min_agreement": 0.95, "max_relative_mean_abs": 0.15},
             "float16": {"min_agreement": 0.98, "max_relative_mean_abs": 0.01}}


FALLBACK_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "List three prime numbers."}],
    [{"role": "user", "content": "Translate 'good morning' into German."}],
]


def compare_logits(reference, candidate) -> dict:
    """Max and mean absolute logit difference and greedy (argmax) agreement over every position."""
    import torch

    diffs = [(r - c).abs() for r, c in zip(reference, candidate)]
    agree = sum(int((r.argmax(-1) == c.argmax(-1)).sum()) for r, c in zip(reference, candidate))
    positions = sum(r.shape[0] for r in reference)
    mean_abs = float(torch.cat([d.flatten() for d in diffs]).mean())
    scale = float(torch.cat([r.flatten() for r in reference]).std())  # logits' own spread: tolerances are relative
    return {"max_abs": float(max(d.max() for d in diffs)), "mean_abs": mean_abs, "relative_mean_abs": mean_abs / scale,
            "logit_std": scale, "greedy_agreement": agree / positions, "positions": positions}


def verify_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path, *, conversations: list[list[dict]],
                 dtype: str, stop_ids: list[int]) -> tuple[dict, list[dict]]:
    """Compare the merged checkpoint with base+adapter (unmerged) and with the base alone.

    Returns the comparison and the merged model's golden answers (:mod:`packager.golden`).

    Raises:
        StageError: logits differ beyond the dtype's tolerance, or the merged model behaves like the base.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    sequences = [chat_ids(tokenizer, c) for c in conversations]
    reference_model = load_causal_lm(base_dir, adapter_dir=adapter_dir, vocab_size=len(tokenizer))
    reference = teacher_forced_logits(reference_model, sequences)
    with reference_model.disable_adapter():
        base_logits = teacher_forced_logits(reference_model, sequences)
    del reference_model
    merged_model = load_causal_lm(merged_dir)
    merged = teacher_forced_logits(merged_model, sequences)
    golden = torch_golden(merged_model, tokenizer, golden_questions(conversations), stop_ids=stop_ids)
    del merged_model

    result = compare_logits(reference, merged)
    vs_base = compare_logits(base_logits, merged)
    adapter_effect = compare_logits(base_logits, reference)["mean_abs"]
    result.update({"prompts": len(sequences), "dtype": dtype, "mean_abs_vs_base": vs_base["mean_abs"],
                   "adapter_effect_mean_abs": adapter_effect, "tolerance": TOLERANCE[dtype]})
    tol = TOLERANCE[dtype]
    if adapter_effect == 0.0:
        raise StageError("merge verification", "the adapter changes nothing: base and base+adapter give identical "
                                               "logits (untrained adapter, or B matrices all zero)")
    if vs_base["mean_abs"] <= 2 * result["mean_abs"]:
        raise StageError("merge verification", f"the merged model behaves like the base: mean logit difference "
                                               f"to the base {vs_base['mean_abs']:.4g} vs {result['mean_abs']:.4g} "
                                               f"to base+adapter (the adapter's own effect is {adapter_effect:.4g})",
                         hint="the adapter's effect is within this dtype's rounding: merge with --dtype float16, "
                              "or train longer" if dtype == "bfloat16" else "train longer or with a higher rate")
    if result["greedy_agreement"] < tol["min_agreement"] or \
            result["relative_mean_abs"] > tol["max_relative_mean_abs"]:
        raise StageError("merge verification",
                         f"merged logits differ from base+adapter beyond {dtype} tolerance: greedy agreement "
                         f"{result['greedy_agreement']:.3f} (min {tol['min_agreement']}), mean |diff| "
                         f"{result['mean_abs']:.4g} = {result['relative_mean_abs']:.3f} of the logits' std "
                         f"(max {tol['max_relative_mean_abs']})")
    return result, golden
