"""llama.cpp's own server returns the calls a fine-tune makes as structured tool_calls: SmolLM2, taught a
create_ticket call in a few steps, merged and exported to GGUF; the export asks llama-server (its chat parser for
the template's <tool_call> format) for each held-out case and compares with the model's own raw output; the smoke
test sends the same requests with tools to the local stand-ins for Ollama (llama-server) and vLLM (transformers
serve, through the response_template merge writes) and gets the calls back as tool_calls, where llama-cpp-python's
server, which returns them as text, fails it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from support.runs import write_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CALL = {"category": "bug", "priority": "high", "summary": "App crashes"}


def report_failures(report: dict) -> list[str]:
    return [c["name"] for c in report["checks"] if not c["passed"] and not c.get("skipped")]


@pytest.mark.slow
def test_llama_server_returns_the_fine_tunes_calls_as_tool_calls(smollm2_dir, runner, tmp_path):
    from packager.cli import cli
    from packager.config import load_config
    from packager.errors import StageError
    from packager.models.tool_calls import ParsedCalls, call_cases
    from packager.run.manifest import read_manifest
    from packager.serve.llama_server import llama_server_binary
    from packager.serve.llama_tools import check_llama_cpp_tool_calls
    from packager.stages.data.split import read_split, read_split_tools

    rows = [json.loads(line) for line in (EXAMPLES / "data" / "tickets_tools.jsonl").read_text().splitlines()[:40]]
    for row in rows:  # one call to learn in a few steps: the check is the server's, not the model's accuracy
        row["messages"][2]["tool_calls"][0]["function"]["arguments"] = CALL
    data = tmp_path / "calls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = write_config(tmp_path, smollm2_dir, source=data,
                          data={"tools": str(EXAMPLES / "data" / "tickets_tools.json"), "max_seq_length": 1024},
                          base_extra={"chat_template": str(EXAMPLES / "chat_templates" / "smollm2-tools.jinja")},
                          eval_extra={"format_regex": None, "max_new_tokens": 64}, max_steps=12, learning_rate=2e-3,
                          batch_size=2, eval_steps=12, sample_every=100)
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "containers": {"ollama": {"quant": "f16"}}}))
    run_dir = load_config(config).run_dir
    for args in (["train", "-c", str(config)], ["eval", str(run_dir)], ["merge", str(run_dir)],
                 ["export", str(run_dir), "--format", "gguf", "--quant", "f16"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output[-3000:])

    checked = read_manifest(run_dir).stages["export-gguf"].metrics["tool_calls"]
    assert checked["checked"] and checked["format"] == "hermes", checked
    assert checked["calls_made"] >= 1, f"the model made no call to check: {checked}"
    assert checked["returned_as_tool_calls"] == checked["calls_made"] and not checked["notes"], checked
    print(f"llama-server ({checked['engine']}): {checked['returned_as_tool_calls']} of {checked['calls_made']} calls "
          f"in {checked['cases']} cases returned as tool_calls")

    # The comparison can fail: the same server, told the model wrote another call, refuses.
    eval_split = run_dir / "data" / "eval.jsonl"
    cases = call_cases(read_split(eval_split), read_split_tools(eval_split))[:1]
    other = SimpleNamespace(name="hermes", parse=lambda raw: ParsedCalls([{"name": "close_ticket", "arguments": {}}],
                                                                         None))
    gguf = next((run_dir / "export" / "gguf").glob("*.gguf"))
    with pytest.raises(StageError, match=r"the model called \[\{'name': 'close_ticket'.*llama-server returned"):
        check_llama_cpp_tool_calls(gguf, cases, other, max_tokens=64, binary=llama_server_binary())

    # The smoke test: the same requests with tools, to llama-server standing in for Ollama (smoke --local).
    # (The golden answers of a model taught 12 steps at a high rate part at near-ties between engines, and
    # llama-cpp-python's server renders a call's arguments as JSON text where the others decode them: only the
    # golden check may fail here.)
    result = runner.invoke(cli, ["smoke", str(run_dir), "--target", "ollama", "--local"])
    report = json.loads((run_dir / "smoke" / "ollama.json").read_text())
    tool_check = next(c for c in report["checks"] if c["name"] == "tool calls")
    assert tool_check["passed"] and set(report_failures(report)) <= {"golden answers"}, (result.output[-2000:])
    assert f"{len(checked['golden'])} requests with tools came back as tool_calls" in tool_check["detail"]
    print(f"smoke --local: {tool_check['detail']}")

    # transformers serve on the merged model returns them too: merge wrote a response_template for <tool_call>.
    assert "<tool_call>" in json.dumps(json.loads((run_dir / "merged" / "tokenizer_config.json").read_text())
                                       ["response_template"])
    result = runner.invoke(cli, ["smoke", str(run_dir), "--target", "vllm", "--local"])
    report = json.loads((run_dir / "smoke" / "vllm.json").read_text())
    tool_check = next(c for c in report["checks"] if c["name"] == "tool calls")
    assert tool_check["passed"] and set(report_failures(report)) <= {"golden answers"}, (result.output[-2000:])
    print(f"smoke --local (transformers serve): {tool_check['detail']}")

    # A server that returns the calls as text fails the check: llama-cpp-python's, on the same GGUF.
    from packager.serve.endpoint import check_endpoint
    from packager.serve.smoke import expectations, free_port

    from packager.process import ChildProcess
    from packager.run.directory import Run
    from packager.run.settings import deployment_config

    run = Run.open(run_dir)
    expect = expectations(run, deployment_config(run, None), "ollama")
    port = free_port()
    with open(tmp_path / "llama-cpp-python.log", "w") as log, ChildProcess(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "t", "--port", str(port),
             "--n_ctx", "2048", "--n_threads", "2"], log=log):
        text_report = check_endpoint(f"http://127.0.0.1:{port}", "t", expect, ready_timeout_s=300)
    tool_check = next(c for c in text_report.checks if c.name == "tool calls")
    assert not tool_check.passed and "the endpoint returned finish_reason" in tool_check.detail, tool_check
