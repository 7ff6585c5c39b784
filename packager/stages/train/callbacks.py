"""What the trainer does besides training: sample answers every N steps, and one quiet progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

from packager.config import PackagerConfig
from packager.models.inference import greedy_answers


SAMPLE_PROMPTS = 3
SAMPLE_MAX_NEW_TOKENS = 64


def sample_prompts(conversations: list[list[dict]], tools: list[list[dict] | None]) -> list[list[dict]]:
    """What the samples ask: the conversation before its last answer, or, where it calls tools, before its first
    call (the call is the task there)."""
    def before(messages: list[dict], row_tools) -> list[dict]:
        calling = [k for k, m in enumerate(messages) if m["role"] == "assistant" and m.get("tool_calls")]
        return messages[:calling[0]] if row_tools and calling else messages[:-1]

    return [before(c, t) for c, t in zip(conversations, tools)]


def make_callbacks(cfg: PackagerConfig, *, tokenizer, eval_conversations, samples_file: Path, dry_run: bool,
                   eval_tools: list[list[dict] | None] | None = None):
    from transformers import EarlyStoppingCallback, TrainerCallback

    tools = (eval_tools or [None] * len(eval_conversations))[:SAMPLE_PROMPTS]
    prompts = sample_prompts(eval_conversations[:SAMPLE_PROMPTS], tools)
    every = 1 if dry_run else cfg.train.sample_every

    class SampleGenerations(TrainerCallback):
        """Greedy answers to fixed eval prompts every N steps, so format collapse is visible in the run."""

        generating_seconds = 0.0  # spent generating, reported apart from the training steps' time

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step % every == 0:
                self._sample(state.global_step, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                self._sample(state.global_step, model, final=True)

        def _sample(self, step: int, model, final: bool = False) -> None:
            started = time.perf_counter()
            answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=SAMPLE_MAX_NEW_TOKENS, tools=tools)
            self.generating_seconds += time.perf_counter() - started
            with open(samples_file, "a", encoding="utf-8") as f:
                for prompt, answer in zip(prompts, answers):
                    f.write(json.dumps({"step": step, "final": final, "prompt": prompt[-1]["content"],
                                        "answer": answer}, ensure_ascii=False) + "\n")

    callbacks = [SampleGenerations()]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return callbacks


def quiet_progress():
    """The step bar with the latest losses as its postfix, in place of a printed dict for every logged step
    (every log entry is still in train/log.json) and of a bar per evaluation. Replaces transformers'
    ProgressCallback."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: f"{logs[k]:.4f}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), float)}
                if shown:
                    self.training_bar.set_postfix(shown, refresh=False)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            pass  # no second bar per evaluation: its loss shows on the step bar

    return QuietProgress()
