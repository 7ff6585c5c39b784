"""Tool calls through llama.cpp's own server: a request with ``tools`` must come back with the model's calls as
structured ``tool_calls`` (finish_reason ``tool_calls``), not as text.

For each held-out case that calls tools, llama-server (``--jinja``: the GGUF's own template, and llama.cpp's
chat parser for the format it writes) is asked twice, greedily: once as a raw completion of the prompt it makes
of the request (``/apply-template`` with the tools, then ``/completion``), which is what the model writes; once as
a chat completion with the tools, which is what a client receives. Where the model's own output is a call in the
template's format (:mod:`packager.models.tool_calls`, as vLLM's parser of that name reads it), the chat
completion must return exactly those calls. Whether the model calls at all is the model's quality (eval's call
accuracy); this checks the server returns the calls it makes. The calls are recorded (``golden``): what an Ollama
endpoint serving the GGUF must return to the smoke test.
"""

from __future__ import annotations

import json
from pathlib import Path

from packager.errors import StageError
from packager.models.tool_calls import CallCase, ToolCallFormat, as_json, same_calls
from packager.serve.llama_server import LlamaServer, llama_server_version

TOOL_CASES, TOOL_MAX_TOKENS = 3, 128
"""How many held-out call cases the export and the smoke test send with tools, and the tokens a call may take."""


def check_llama_cpp_tool_calls(gguf: Path, cases: list[CallCase], fmt: ToolCallFormat, *, max_tokens: int,
                               binary: Path | None = None, context: int = 2048) -> dict:
    """The record of the check (cases, calls the model made, how llama-server returned each).

    Raises:
        StageError: the model's output is a call and llama-server returns something else (text, or other calls).
    """
    made, returned, notes, golden = 0, 0, [], []
    with LlamaServer(gguf, binary=binary, ctx_size=context, threads=2) as server:
        for n, case in enumerate(cases, 1):
            raw = server.complete(server.apply_template(case.prompt, case.tools), max_tokens)
            choice = server.chat(case.prompt, max_tokens, tools=case.tools)
            calls = [{"name": c["function"]["name"], "arguments": as_json(c["function"].get("arguments"))}
                     for c in choice["message"].get("tool_calls") or []]
            written = fmt.parse(raw)
            if written is None:
                if calls:  # llama-server's call grammar made a call of output that does not parse as one
                    notes.append(f"case {n}: the model's output is not a call ({raw[:80]!r}), and llama-server "
                                 f"returned calls {calls}")
                continue
            made += 1
            if not (calls and same_calls(calls, written.calls) and choice.get("finish_reason") == "tool_calls"):
                raise StageError("llama.cpp tool calls",
                                 f"case {n} (eval row {case.row + 1}): the model called {written.calls} "
                                 f"({raw[:120]!r}), and llama-server returned "
                                 f"{json.dumps(choice['message'])[:300]} (finish_reason "
                                 f"{choice.get('finish_reason')!r})",
                                 hint="clients of llama-server (and of Ollama's llama.cpp runner) would get the call "
                                      "as text; report the template's call format to llama.cpp")
            returned += 1
            golden.append({"case": n - 1, "row": case.row, "calls": written.calls})
        return {"cases": len(cases), "calls_made": made, "returned_as_tool_calls": returned, "notes": notes,
                "golden": golden,
                "format": fmt.name, "engine": llama_server_version(server.binary),
                "checked_with": "llama-server --jinja: /completion (the model's output) vs /v1/chat/completions "
                                "with tools"}

