"""Reasoning models (Qwen 3's <think> blocks): eval and golden answers are what the user sees, by the rule of
vLLM's own qwen3 reasoning parser, which `vllm serve` is told to apply; the data stage records how the training
answers treat thinking."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from packager.config import EvalConfig
from packager.models.reasoning import THINK, reasoning_format
from packager.stages.evaluate import measure

from support.families import TEMPLATES

OUTPUTS = ["<think>\nThe user wants JSON.\n</think>\n\n{\"category\": \"billing\"}", "<think>\n\n</think>\n\nParis.",
           "no thinking at all", "<think>never closed", "reasoning</think>answer", "<think>a</think>b</think>c",
           "x<think>y</think>z", "<think>\n</think>\n\n", "", "</think>"]

VLLM_PARSE = """
import json, sys
from transformers import AutoTokenizer
from vllm.parser.qwen3 import Qwen3Parser
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps([Qwen3Parser(tokenizer).extract_reasoning(text, None)[1] or "" for text in json.load(sys.stdin)]))
"""


def test_the_visible_answer_is_what_vllms_own_qwen3_parser_gives(tmp_path):
    """vLLM 0.33's Qwen3Parser (its parser engine, run in the vLLM venv) on Qwen's tokenizer with its <think>
    tokens: packager's rule gives the same content for every output, including thinking that never closes."""
    from support.checkpoints import qwen_tokenizer
    from support.containers import vllm_python

    tokenizer = qwen_tokenizer()
    tokenizer.add_tokens([THINK.start, THINK.end])  # as Qwen 3's tokenizer.json has them (ids 151667, 151668)
    tokenizer.save_pretrained(tmp_path)
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(vllm_python()), "-c", VLLM_PARSE, str(tmp_path)], input=json.dumps(OUTPUTS),
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    vllm_content = json.loads(result.stdout.strip().splitlines()[-1])
    assert [THINK.visible(text) for text in OUTPUTS] == vllm_content
    assert vllm_content[0] == '\n\n{"category": "billing"}' and vllm_content[3] == ""


def test_only_templates_with_thinking_blocks_have_a_reasoning_format():
    assert reasoning_format((TEMPLATES / "qwen3.jinja").read_text()) is THINK
    for name in ("gemma3.jinja", "llama3.jinja", "phi3.5.jinja", "mistral-v0.3.jinja"):
        assert reasoning_format((TEMPLATES / name).read_text()) is None


def test_eval_scores_what_the_user_sees(monkeypatch):
    """A JSON answer after a thinking block adheres to the format; one whose thinking never closes shows the user
    nothing, so it does not."""
    from types import SimpleNamespace

    answers = ['<think>\nbilling, clearly\n</think>\n\n{"category": "billing", "priority": "high"}',
               '<think>\nstill thinking about {"category": "bug", "priority": "low"}']
    monkeypatch.setattr(measure, "greedy_answers", lambda *a, **k: list(answers))
    monkeypatch.setattr(measure, "assistant_loss", lambda *a, **k: 1.0)
    conversations = [[{"role": "user", "content": "Invoice charged twice"},
                      {"role": "assistant", "content": '{"category": "billing", "priority": "high"}'}],
                     [{"role": "user", "content": "App crashes"},
                      {"role": "assistant", "content": '{"category": "bug", "priority": "low"}'}]]
    cfg = EvalConfig(format_regex=r'\s*\{"category": "\w+", "priority": "\w+"\}')
    tokenizer = SimpleNamespace(chat_template=(TEMPLATES / "qwen3.jinja").read_text())
    metrics, seen, _ = measure.evaluate_model(None, tokenizer, conversations, cfg)
    assert seen == ['\n\n{"category": "billing", "priority": "high"}', ""]
    assert metrics["format_adherence"] == 0.5 and metrics["exact_match"] == 0.5
    assert "vLLM's qwen3 reasoning parser" in metrics["reasoning"]
    plain = SimpleNamespace(chat_template=(TEMPLATES / "llama3.jinja").read_text())
    metrics, seen, _ = measure.evaluate_model(None, plain, conversations, cfg)
    assert seen == answers and metrics["format_adherence"] == 0.0 and "reasoning" not in metrics
