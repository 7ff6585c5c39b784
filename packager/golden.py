"""Golden answers: greedy outputs to fixed prompts, recorded when a model is made, replayed by the smoke test.

The merge stage records them from the merged checkpoint, the GGUF export from each GGUF (through llama.cpp).
A served endpoint must reproduce them, which catches what ``/health`` never will: a container that loads the
wrong weights, the base instead of the fine-tune, or a template that lost its stop token [vllm 36960].
"""

from __future__ import annotations

GOLDEN_QUESTIONS = ["What is the capital of France?"]
GOLDEN_TOKENS = 64
"""Greedy tokens generated per prompt; answers that stop earlier are recorded as stopped."""


def golden_questions(conversations: list[list[dict]]) -> list[list[dict]]:
    """The prompts: each held-out conversation up to its answer, plus a general question."""
    questions = [c[:-1] if c and c[-1]["role"] == "assistant" else list(c) for c in conversations]
    return questions + [[{"role": "user", "content": q}] for q in GOLDEN_QUESTIONS]


def golden_record(messages: list[dict], tokens: list[int], text: str, *, stopped: bool) -> dict:
    return {"messages": messages, "tokens": tokens, "text": text, "stopped": stopped}


def torch_golden(model, tokenizer, questions: list[list[dict]], *, stop_ids: list[int]) -> list[dict]:
    """Greedy answers of a transformers model, without the stop token."""
    import torch

    records = []
    with torch.inference_mode():
        for messages in questions:
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                return_dict=True)["input_ids"]
            out = model.generate(torch.tensor([ids]), max_new_tokens=GOLDEN_TOKENS, do_sample=False,
                                 eos_token_id=stop_ids, pad_token_id=stop_ids[0])[0, len(ids):].tolist()
            stopped = bool(out) and out[-1] in stop_ids
            tokens = [t for t in out if t not in stop_ids]
            records.append(golden_record(messages, tokens, tokenizer.decode(tokens), stopped=stopped))
    return records


def token_agreement(expected: list[int], got: list[int]) -> float:
    """Share of the expected tokens reproduced before the first difference (1.0 when identical)."""
    if got == expected:
        return 1.0
    common = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return common / max(1, len(expected))
