"""llama.cpp's own server returns the calls a fine-tune makes as structured tool_calls: SmolLM2, taught a
create_ticket call in a few steps, merged and exported to GGUF; the export asks llama-server (its chat parser for
the template's <tool_call> format) for each held-out case and compares with the model's own raw output."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from support.runs import write_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CALL = {"category": "bug", "priority": "high", "summary": "App crashes"}


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
                          eval_extra={"format_regex": None}, max_steps=12, learning_rate=2e-3, batch_size=2,
                          eval_steps=12, sample_every=100)
    run_dir = load_config(config).run_dir
    for args in (["train", "-c", str(config)], ["merge", str(run_dir)],
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
