"""A causal LM run the way every check needs it: loaded in float32, greedy answers, teacher-forced logits.

The one home for what evaluation, the golden answers, the base check, the merge verification and the GGUF
parity reference do with a transformers model, so they all load, prompt and decode alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.models.tokenizer import chat_ids


def load_causal_lm(model_dir: Path | str, *, dtype: str = "float32", trust_remote_code: bool = False,
                   adapter_dir: Path | str | None = None, vocab_size: int | None = None):
    """A checkpoint for inference (float32 by default: what every comparison is made against), with a PEFT
    adapter unmerged on top when ``adapter_dir`` is given; ``vocab_size`` grows the embeddings first, for
    adapters trained with added tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                 trust_remote_code=trust_remote_code)
    if adapter_dir is not None:
        from peft import PeftModel

        if vocab_size is not None and model.get_input_embeddings().weight.shape[0] < vocab_size:
            model.resize_token_embeddings(vocab_size)
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # generated, up to (without) the first stop token
    stopped: bool  # a stop token ended it before the token limit


def greedy_generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
                    stop_ids: list[int] | None = None, batch_size: int = 1, progress: str | None = None,
                    tools: list[list[dict] | None] | None = None) -> list[Generation]:
    """Greedy continuations of prompts (conversations ending before the answer), in left-padded batches.

    ``stop_ids``: the tokens that end an answer (default: the model's generation config eos). ``progress``:
    a label for a progress bar over the batches, shown on a terminal only. ``tools``: each conversation's
    tools (None where it has none), rendered into its prompt by the template.
    """
    tools = tools or [None] * len(conversations)
    import torch
    from tqdm.auto import tqdm

    stops = list(stop_ids) if stop_ids is not None else _eos_ids(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    generate_kwargs = {"eos_token_id": stop_ids} if stop_ids is not None else {}
    was_training = model.training
    model.eval()
    results = []
    try:
        starts = range(0, len(conversations), batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", leave=False, disable=None if progress else True):
            prompts = [chat_ids(tokenizer, c, generation_prompt=True, tools=t)
                       for c, t in zip(conversations[start:start + batch_size], tools[start:start + batch_size])]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, **generate_kwargs)
            for row in out[:, width:].tolist():
                end = next((i for i, token in enumerate(row) if token in stops), None)
                results.append(Generation(row if end is None else row[:end], end is not None))
    finally:
        model.train(was_training)
    return results


def greedy_answers(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int, batch_size: int = 8,
                   progress: str | None = None, tools: list[list[dict] | None] | None = None) -> list[str]:
    """Greedy answers as the user reads them: decoded without special tokens, stripped."""
    generations = greedy_generate(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, progress=progress, tools=tools)
    return [tokenizer.decode(g.tokens, skip_special_tokens=True).strip() for g in generations]


def teacher_forced_logits(model, sequences: list[list[int]]) -> list:
    """float32 logits ``[positions, vocab]`` of each token sequence, one forward pass each (no padding)."""
    import torch

    model.eval()
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float() for ids in sequences]


def _eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else list(eos or [])
