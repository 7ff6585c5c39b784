"""Call accuracy: for held-out rows whose reference is a tool call, does the model make that call?

Each assistant turn of the eval split that calls tools is a case: the conversation before it, with its tools,
is the prompt; the turn's calls are the reference. The model's raw output (special tokens kept, as vLLM keeps
them for its tool parsers) is parsed in the call format the chat template writes
(:mod:`packager.models.tool_calls`), so a call counts only where the server would return it as a call.

Metrics: ``call_accuracy`` (every call right: function and arguments equal as JSON), ``call_argument_accuracy``
(the share of the reference calls' arguments reproduced exactly, as field accuracy is for JSON answers: the
gate's task metric, :func:`packager.models.tool_calls.argument_score`), ``call_name_accuracy`` (the right
functions, in order), ``calls_parsed`` (outputs that parse as calls at all), over ``call_cases``.
"""

from __future__ import annotations

from typing import Callable

from packager.errors import StageError
from packager.models.inference import greedy_generate
from packager.models.tool_calls import argument_score, call_cases, same_calls, tool_call_format


def evaluate_calls(model, tokenizer, conversations: list[list[dict]], tools: list[list[dict] | None], *,
                   max_new_tokens: int, label: str,
                   reprompt: Callable[[list[dict]], list[dict]] | None = None) -> tuple[dict, list[dict]]:
    """Call metrics and each case's prediction; ({}, []) when no eval row calls tools. ``reprompt`` rewrites
    each case's prompt (the prompted base's examples); the cases are still the held-out turns only.

    Raises:
        StageError: rows call tools, and the chat template writes calls in no format packager can read back.
    """
    cases = call_cases(conversations, tools)
    if not cases:
        return {}, []
    fmt = tool_call_format(tokenizer.chat_template)
    if fmt is None:
        raise StageError("eval", "the eval rows call tools, and the chat template writes its calls in a format "
                                 "packager cannot read back (known: <tool_call> JSON, Llama 3 JSON, [TOOL_CALLS])",
                         hint="use a chat template that writes one of them (base.chat_template)")
    prompts = [reprompt(c.prompt) if reprompt else c.prompt for c in cases]
    generations = greedy_generate(model, tokenizer, prompts, tools=[c.tools for c in cases],
                                  max_new_tokens=max_new_tokens, batch_size=8, progress=f"{label}: calls")
    outputs = [tokenizer.decode(g.tokens, skip_special_tokens=False) for g in generations]
    parsed = [fmt.parse(output) for output in outputs]
    right = [p is not None and same_calls(p.calls, c.expected) for p, c in zip(parsed, cases)]
    named = [p is not None and [x["name"] for x in p.calls] == [x["name"] for x in c.expected]
             for p, c in zip(parsed, cases)]
    arguments = [argument_score(p.calls if p else None, c.expected) for p, c in zip(parsed, cases)]
    n = len(cases)
    metrics = {"call_cases": n, "call_format": fmt.name, "call_accuracy": sum(right) / n,
               "call_argument_accuracy": sum(arguments) / n,
               "call_name_accuracy": sum(named) / n, "calls_parsed": sum(p is not None for p in parsed) / n}
    predictions = [{"row": c.row, "expected": c.expected, "output": output, "calls": p.calls if p else None,
                    "correct": ok, "arguments_right": a} for c, output, p, ok, a in zip(cases, outputs, parsed, right,
                                                                                        arguments)]
    return metrics, predictions


CASE_FIELDS = ("output", "calls", "correct", "arguments_right")


def calls_jsonl(finetuned: list[dict], base: list[dict] | None) -> str:
    """``eval/calls.jsonl``: each case's expected calls and the fine-tune's (and the base's) output and calls."""
    import json

    lines = []
    for k, case in enumerate(finetuned):
        row = {"row": case["row"], "expected": case["expected"],
               "finetuned": {key: case.get(key) for key in CASE_FIELDS}}
        if base is not None:
            row["base"] = {key: base[k].get(key) for key in CASE_FIELDS}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)
