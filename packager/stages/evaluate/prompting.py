"""The prompted base: would a good prompt do what the fine-tune is for?

The base model gets the task's system prompt (``eval.prompting.system_prompt``, else each row's own) and
``eval.prompting.shots`` solved examples as earlier turns of the conversation, then the held-out prompt. The
examples are whole training conversations (their system message left out), chosen from the training split
only, in the order of their SHA-256 (deterministic, independent of the file's order, and not the first rows
a generator happened to write), skipping any that repeat the answer of one already chosen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from packager.config.evaluation import PromptingConfig


@dataclass(frozen=True)
class Prompting:
    """How a held-out prompt is turned into the prompted one; callable on a conversation's messages."""

    shots: list[list[dict]]  # each example's messages, system message left out
    rows: list[int]  # their indices in the training split
    system_prompt: str | None

    def __call__(self, messages: list[dict]) -> list[dict]:
        own_system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        rest = messages[1:] if own_system is not None else messages
        system = self.system_prompt if self.system_prompt is not None else own_system
        head = [{"role": "system", "content": system}] if system is not None else []
        return head + [m for shot in self.shots for m in shot] + rest

    def describe(self) -> dict:
        return {"shots": len(self.shots), "train_rows": self.rows, "system_prompt": self.system_prompt}


def choose_prompting(train_split: Path, cfg: PromptingConfig) -> Prompting:
    """The examples for the prompted base, from ``data/train.jsonl`` (never the eval split)."""
    lines = [line for line in Path(train_split).read_text(encoding="utf-8").splitlines() if line.strip()]
    order = sorted(range(len(lines)), key=lambda i: hashlib.sha256(lines[i].encode()).hexdigest())
    shots, rows, answers = [], [], set()
    for i in order:
        if len(shots) == cfg.shots:
            break
        messages = [m for m in json.loads(lines[i])["messages"] if m["role"] != "system"]
        answer = json.dumps(messages[-1], sort_keys=True)
        if answer in answers:
            continue
        answers.add(answer)
        shots.append(messages)
        rows.append(i)
    return Prompting(shots, rows, cfg.system_prompt)
