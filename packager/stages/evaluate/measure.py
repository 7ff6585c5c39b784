"""One model on the held-out conversations: greedy answers scored, and the loss on assistant tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from packager.config import EvalConfig, PackagerConfig
from packager.models.inference import greedy_answers, load_causal_lm, teacher_forced_logits
from packager.models.reasoning import reasoning_format
from packager.run.directory import Run
from packager.stages.data.masks import tokenize_with_assistant_mask
from packager.stages.evaluate.calls import evaluate_calls
from packager.stages.evaluate.metrics import score


def assistant_loss(model, tokenizer, conversations: list[list[dict]],
                   tools: list[list[dict] | None] | None = None) -> float:
    """Mean cross-entropy over assistant tokens (teacher forcing), the same tokens training learns."""
    import torch

    total, count = 0.0, 0
    for conv, conv_tools in zip(conversations, tools or [None] * len(conversations)):
        enc = tokenize_with_assistant_mask(tokenizer, conv, conv_tools)
        (logits,) = teacher_forced_logits(model, [enc["input_ids"]])
        target = torch.tensor(enc["input_ids"][1:], device=logits.device)
        keep = torch.tensor(enc["assistant_masks"][1:], device=logits.device) == 1
        total += torch.nn.functional.cross_entropy(logits[:-1][keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return total / max(1, count)


def evaluate_model(model, tokenizer, conversations: list[list[dict]], cfg: EvalConfig, *,
                   tools: list[list[dict] | None] | None = None, label: str = "answering",
                   prompting: Callable[[list[dict]], list[dict]] | None = None) -> tuple[dict, list[str], list[dict]]:
    """Greedy answers scored on what the user sees (a reasoning model's thinking left out, see
    :mod:`packager.models.reasoning`), the loss on assistant tokens, and, for rows that call tools, call
    accuracy (:mod:`packager.stages.evaluate.calls`). ``tools``: each row's tools, in its prompt as in
    training. ``prompting`` rewrites each prompt (the prompted base, :mod:`packager.stages.evaluate.prompting`);
    the loss, a measure of the model on the data as written, is then left out.
    Returns (metrics, the answers, the call predictions)."""
    prompts = [prompting(c[:-1]) if prompting else c[:-1] for c in conversations]
    references = [c[-1]["content"] for c in conversations]
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, progress=label,
                             tools=tools)
    reasoning = reasoning_format(tokenizer.chat_template)
    if reasoning is not None:  # a reference written with its own thinking is compared on its answer too
        answers = [reasoning.visible(a) for a in answers]
        references = [reasoning.visible(r) if reasoning.end in r else r for r in references]
    metrics = score(answers, references, cfg)
    if reasoning is not None:
        metrics["reasoning"] = reasoning.describe()
    call_metrics, calls = evaluate_calls(model, tokenizer, conversations, tools or [None] * len(conversations),
                                         max_new_tokens=cfg.max_new_tokens, label=label, reprompt=prompting)
    metrics.update(call_metrics)
    if prompting:
        return metrics, answers, calls
    metrics["eval_loss"] = assistant_loss(model, tokenizer, conversations, tools)
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    return metrics, answers, calls


def load_finetuned(run: Run, cfg: PackagerConfig, *, base_path: Path):
    model_dir, adapter_dir = run.path / "train" / "model", run.path / "train" / "adapter"
    if model_dir.is_dir():
        return load_causal_lm(model_dir)
    return load_causal_lm(base_path, adapter_dir=adapter_dir, trust_remote_code=cfg.base.trust_remote_code)
