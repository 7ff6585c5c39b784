"""Reasoning models: what the user sees of an answer that opens with a thinking block.

Qwen 3 (and the models trained on its template) answer ``<think>...</think>`` and then the answer. A server
that knows the format hands the thinking out separately, so JSON and format checks must look at what is left.
packager applies the rule of vLLM's ``qwen3`` reasoning parser (``vllm/parser/qwen3.py``: a parser engine that
starts in the reasoning state; ``<think>`` inside it is dropped; the first ``</think>`` ends the reasoning and
every later ``</think>`` is dropped from the content; an answer that never closes its thinking has no
content), checked against vLLM's own parser in ``tests/stages/test_reasoning.py``. The same format makes
``vllm serve`` run with ``--reasoning-parser qwen3`` so the endpoint applies it too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningFormat:
    start: str
    end: str
    vllm_parser: str  # vllm serve --reasoning-parser NAME

    def visible(self, text: str) -> str:
        """The answer's content, as vLLM's parser gives it to the user: "" while the thinking is open."""
        if self.end not in text:
            return ""
        return text.split(self.end, 1)[1].replace(self.end, "")

    def describe(self) -> str:
        return (f"{self.start}...{self.end} thinking left out of answers, as vLLM's {self.vllm_parser} "
                "reasoning parser does")


THINK = ReasoningFormat("<think>", "</think>", "qwen3")


def reasoning_format(chat_template: str | None) -> ReasoningFormat | None:
    """The thinking format a chat template writes (Qwen 3's ``<think>`` blocks), or None."""
    if isinstance(chat_template, str) and THINK.start in chat_template and THINK.end in chat_template:
        return THINK
    return None


def thinking_in_answers(conversations: list[list[dict]], fmt: ReasoningFormat) -> int:
    """How many conversations have an assistant answer with its own thinking block in the training data."""
    return sum(any(m["role"] == "assistant" and fmt.end in m["content"] for m in c) for c in conversations)
