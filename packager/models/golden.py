"""Golden answers: greedy outputs to fixed prompts, recorded when a model is made, replayed by the smoke test.

The merge stage records them from the merged checkpoint, the GGUF export from each GGUF (through llama.cpp).
A served endpoint must reproduce them, which catches what ``/health`` never will: a container that loads the
wrong weights, the base instead of the fine-tune, or a template that lost its stop token [vllm 36960].
"""

from __future__ import annotations

from packager.models.inference import greedy_generate
from packager.models.reasoning import ReasoningFormat, reasoning_format


GOLDEN_QUESTIONS = ["What is the capital of France?"]
GOLDEN_TOKENS = 64
"""Greedy tokens generated per prompt; answers that stop earlier are recorded as stopped."""


def golden_questions(conversations: list[list[dict]]) -> list[list[dict]]:
    """The prompts: each held-out conversation up to its answer, plus a general question."""
    questions = [c[:-1] if c and c[-1]["role"] == "assistant" else list(c) for c in conversations]
    return questions + [[{"role": "user", "content": q}] for q in GOLDEN_QUESTIONS]


def golden_record(messages: list[dict], tokens: list[int], text: str, *, stopped: bool,
                  reasoning: ReasoningFormat | None = None) -> dict:
    """One golden answer; for a reasoning model also ``visible``, the content a server that parses the thinking
    out (vLLM's --reasoning-parser) answers with."""
    record = {"messages": messages, "tokens": tokens, "text": text, "stopped": stopped}
    if reasoning is not None:
        record["visible"] = reasoning.visible(text)
    return record


def torch_golden(model, tokenizer, questions: list[list[dict]], *, stop_ids: list[int]) -> list[dict]:
    """Greedy answers of a transformers model, without the stop token."""
    answers = greedy_generate(model, tokenizer, questions, max_new_tokens=GOLDEN_TOKENS, stop_ids=stop_ids)
    reasoning = reasoning_format(tokenizer.chat_template)
    return [golden_record(q, a.tokens, tokenizer.decode(a.tokens), stopped=a.stopped, reasoning=reasoning)
            for q, a in zip(questions, answers)]


def token_agreement(expected: list[int], got: list[int]) -> float:
    """Share of the expected tokens reproduced before the first difference (1.0 when identical)."""
    if got == expected:
        return 1.0
    common = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return common / max(1, len(expected))
