"""Every GGUF loaded back with llama.cpp and compared with the model it came from, in float32: teacher-forced
top-1 agreement and KL, perplexity, and greedy answers to the golden prompts, against thresholds per type."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from packager.errors import StageError
from packager.models.gguf import read_gguf_metadata
from packager.models.golden import GOLDEN_TOKENS, golden_questions, golden_record, token_agreement, torch_golden
from packager.models.inference import load_causal_lm, teacher_forced_logits
from packager.models.tokenizer import chat_ids


# Parity thresholds against the merged checkpoint (float32): teacher-forced top-1 agreement, mean KL
# divergence per position, and greedy answers to golden prompts (share of tokens before they diverge).
# Greedy answers diverge at near-ties even for good quants (q8_0 of SmolLM2 starts "Paris, France" where
# bf16 starts "The capital..."), so greedy is a looser check than the teacher-forced ones.
PARITY_THRESHOLDS = {
    "f16": {"min_top1": 0.98, "max_kl": 0.01, "min_greedy": 0.75},
    "bf16": {"min_top1": 0.98, "max_kl": 0.01, "min_greedy": 0.75},
    "q8_0": {"min_top1": 0.95, "max_kl": 0.02, "min_greedy": 0.5},
    "Q6_K": {"min_top1": 0.90, "max_kl": 0.05, "min_greedy": 0.5},
    "Q5_K_M": {"min_top1": 0.90, "max_kl": 0.05, "min_greedy": 0.5},
    "Q4_K_M": {"min_top1": 0.90, "max_kl": 0.05, "min_greedy": 0.5},
}


def check_gguf_carries_chat_format(path: Path, *, chat_template: str, stop_ids: list[int]) -> dict:
    meta = read_gguf_metadata(path)
    if meta["chat_template"] != chat_template:
        raise StageError("export", f"{path.name} lost the chat template (GGUF tokenizer.chat_template differs "
                                   "from the merged tokenizer's)")
    if meta["eos_token_id"] not in stop_ids:
        raise StageError("export", f"{path.name} has EOS token id {meta['eos_token_id']}, not one of the chat "
                                   f"template's stop tokens {stop_ids}")
    return meta


@dataclass
class Reference:
    """What the merged checkpoint (float32) says, computed once and compared with every GGUF."""

    sequences: list[list[int]]
    logprobs: list  # per sequence: [positions, vocab] float64 numpy arrays
    prompts: list[list[int]]
    greedy: list[list[int]]
    questions: list[list[dict]]
    stop_ids: list[int]
    perplexity: float


def _log_softmax(x):
    import numpy as np

    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _perplexity(logprobs_per_seq, sequences) -> float:
    nll, count = 0.0, 0
    for lp, ids in zip(logprobs_per_seq, sequences):
        nll -= sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1))
        count += len(ids) - 1
    return math.exp(nll / max(1, count))


def reference_outputs(model_dir: Path, conversations: list[list[dict]], *, stop_ids: list[int],
                      greedy: list[list[int]] | None = None, adapter_dir: Path | None = None,
                      tokenizer_dir: Path | None = None) -> Reference:
    """A model in float32 on the parity prompts: the merged model, or with ``adapter_dir`` the base at
    ``model_dir`` plus that LoRA unmerged (what a LoRA GGUF on the base GGUF computes; a bf16 merge rounds
    it). ``greedy``: its greedy answers to ``golden_questions(conversations)`` when already known (the
    merge stage records the merged model's), which are then not generated again."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    model = load_causal_lm(model_dir, adapter_dir=adapter_dir, vocab_size=len(tokenizer))
    sequences = [chat_ids(tokenizer, c) for c in conversations]
    questions = golden_questions(conversations)
    prompts = [chat_ids(tokenizer, q, generation_prompt=True) for q in questions]
    logprobs = [_log_softmax(logits.numpy()) for logits in teacher_forced_logits(model, sequences)]
    if greedy is None:
        greedy = [g["tokens"] for g in torch_golden(model, tokenizer, questions, stop_ids=stop_ids)]
    return Reference(sequences, logprobs, prompts, greedy, questions, stop_ids, _perplexity(logprobs, sequences))


def gguf_parity(gguf_path: Path, ref: Reference, *, lora_path: Path | None = None) -> dict:
    """Teacher-forced top-1 agreement and KL, perplexity, and greedy agreement of a GGUF vs the reference."""
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(max(map(len, ref.sequences)), max(map(len, ref.prompts)) + GOLDEN_TOKENS) + 8
    llm = Llama(model_path=str(gguf_path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False,
                lora_path=str(lora_path) if lora_path else None)
    agree, positions, kl_sum, logprobs = 0, 0, 0.0, []
    for ids, ref_lp in zip(ref.sequences, ref.logprobs):
        llm.reset()
        llm.eval(ids)  # a fresh evaluation each time: llama.cpp logits depend on batch shape
        lp = _log_softmax(np.array(llm.scores[: len(ids)]))
        logprobs.append(lp)
        agree += int((lp.argmax(-1) == ref_lp.argmax(-1)).sum())
        kl_sum += float((np.exp(ref_lp) * (ref_lp - lp)).sum())
        positions += len(ids)
    greedy_scores, golden = [], []
    for prompt, expected, messages in zip(ref.prompts, ref.greedy, ref.questions):
        llm.reset()
        llm.eval(prompt)
        got, stopped = [], False
        for _ in range(GOLDEN_TOKENS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in ref.stop_ids:
                stopped = True
                break
            got.append(token)
            llm.eval([token])
        greedy_scores.append(token_agreement(expected, got))
        golden.append(golden_record(messages, got, llm.detokenize(got).decode("utf-8", "replace"), stopped=stopped))
    del llm
    ppl = _perplexity(logprobs, ref.sequences)
    return {"top1_agreement": agree / positions, "mean_kl": kl_sum / positions, "positions": positions,
            "perplexity": ppl, "reference_perplexity": ref.perplexity, "perplexity_ratio": ppl / ref.perplexity,
            "greedy_agreement": sum(greedy_scores) / len(greedy_scores), "greedy_per_prompt": greedy_scores,
            "golden_answer": golden[-1]["text"], "golden": golden}


def parity_failures(quant: str, parity: dict) -> list[str]:
    t = PARITY_THRESHOLDS[quant]
    failures = []
    if parity["top1_agreement"] < t["min_top1"]:
        failures.append(f"teacher-forced top-1 agreement {parity['top1_agreement']:.3f} < {t['min_top1']}")
    if parity["mean_kl"] > t["max_kl"]:
        failures.append(f"mean KL {parity['mean_kl']:.4f} > {t['max_kl']}")
    if parity["greedy_agreement"] < t["min_greedy"]:
        failures.append(f"greedy answers agree on {parity['greedy_agreement']:.2f} of tokens < {t['min_greedy']} "
                        f"(golden question answered {parity['golden_answer']!r})")
    if failures and parity.get("fallback_tensors"):
        failures.append(f"why: llama.cpp fell back to legacy quant types for {parity['fallback_tensors']} of "
                        f"{parity['total_tensors']} tensors (k-quants need row sizes divisible by 256; "
                        f"golden question answered {parity['golden_answer']!r})")
    return failures
