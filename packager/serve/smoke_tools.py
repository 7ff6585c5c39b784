"""The smoke test's requests with tools: held-out call cases sent with their tools, which must come back as parsed
``tool_calls`` calling what the served model called when it was made (recorded then), not as text."""

from __future__ import annotations

import json

from packager.models.tool_calls import as_json, openai_messages, same_calls, split_call_cases
from packager.serve.llama_tools import TOOL_CASES, TOOL_MAX_TOKENS


def tool_cases(run, target: str) -> list[dict]:
    """Held-out requests with tools, and the calls the served model made on them, recorded when it was made: the
    GGUF's, by llama-server at export, for Ollama; the fine-tune's, at eval, for vLLM. [] for a run without."""
    cases = split_call_cases(run.path / "data" / "eval.jsonl")
    if target == "ollama":
        stage = run.manifest.stages.get("export-gguf")
        made = ((stage.metrics.get("tool_calls") or {}).get("golden") or []) if stage else []
    else:
        recorded = run.path / "eval" / "calls.jsonl"
        lines = recorded.read_text(encoding="utf-8").splitlines() if recorded.is_file() else []
        made = [{"case": n, "calls": row["finetuned"]["calls"]} for n, row in enumerate(map(json.loads, lines))
                if row["finetuned"].get("calls")]
    return [{"messages": cases[m["case"]].prompt, "tools": cases[m["case"]].tools, "calls": m["calls"]}
            for m in made if m["case"] < len(cases)][:TOOL_CASES]


def check_tool_calls(report, client, model: str, expect) -> None:
    """Each request with tools comes back with the recorded calls' functions as parsed ``tool_calls``
    (finish_reason ``tool_calls``), not as text; identical arguments are counted (a quantized model may word a
    free-text argument differently)."""
    returned = identical = 0
    wrong = ""
    for case in expect.tool_cases:
        try:
            response = client.chat.completions.create(
                model=model, messages=openai_messages(case["messages"]), tools=case["tools"], temperature=0, seed=0,
                max_tokens=TOOL_MAX_TOKENS, extra_body=expect.request_options or None)
        except Exception as exc:
            report.add("tool calls", False, f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        choice = response.choices[0]
        calls = [{"name": c.function.name, "arguments": as_json(c.function.arguments)}
                 for c in choice.message.tool_calls or []]
        names = [c["name"] for c in case["calls"]]
        if choice.finish_reason == "tool_calls" and [c["name"] for c in calls] == names:
            returned += 1
            identical += same_calls(calls, case["calls"])
        elif not wrong:
            wrong = (f"{case['messages'][-1]['content'][:80]!r}: the model calls {names}, and the endpoint returned "
                     f"finish_reason {choice.finish_reason!r}, tool_calls {calls}, text "
                     f"{(choice.message.content or '')[:120]!r}")
    n = len(expect.tool_cases)
    report.add("tool calls", returned == n, wrong or f"{n} requests with tools came back as tool_calls (finish_reason "
               f"'tool_calls') calling what the model called when recorded; {identical}/{n} with identical arguments")

