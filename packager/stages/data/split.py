"""Stage ``data``: the checked, deterministic train/eval split recorded in the run, before any training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from packager.errors import DatasetError
from packager.models.reasoning import reasoning_format, thinking_in_answers
from packager.run.jsonl import read_jsonl
from packager.stages.data.check import DataReport, check_dataset
from packager.stages.data.rows import Row
from packager.stages.data.tools import read_tools_file


def rows_to_jsonl(rows: list[Row]) -> str:
    return "".join(json.dumps({"messages": row.messages, **({"tools": row.tools} if row.tools else {})},
                              ensure_ascii=False) + "\n" for row in rows)


def read_split(path: Path) -> list[list[dict]]:
    """Read a split file written by :func:`rows_to_jsonl` (already validated): each row's messages."""
    return [record["messages"] for record in read_jsonl(path, missing_ok=False)]


def read_split_tools(path: Path) -> list[list[dict] | None]:
    """Each row's tools (None for a row that calls none), in the order of :func:`read_split`."""
    return [record.get("tools") for record in read_jsonl(path, missing_ok=False)]


def prepare_data(run, data_cfg, *, tokenizer, model_max: int | None = None) -> DataReport:
    """Check the configured data and record the split in the run (stage ``data``) before any training.

    Raises:
        DatasetError: any row has an error (warnings are let through and recorded).
    """
    tools = read_tools_file(data_cfg.tools) if data_cfg.tools else None
    report = check_dataset(data_cfg.train, eval_path=data_cfg.eval, eval_fraction=data_cfg.eval_fraction,
                           seed=data_cfg.seed, max_seq_length=data_cfg.max_seq_length,
                           system_prompt=data_cfg.system_prompt, columns=data_cfg.columns, tokenizer=tokenizer,
                           model_max=model_max, tools=tools)
    if report.errors:
        raise DatasetError(report.errors)
    sources = report.sources
    parameters = {"train": sources["train"].name, "eval": sources["eval"].name if "eval" in sources else None,
                  "eval_fraction": data_cfg.eval_fraction, "seed": data_cfg.seed,
                  "max_seq_length": data_cfg.max_seq_length, "system_prompt": data_cfg.system_prompt,
                  "system_policy": data_cfg.system_policy}
    parameters.update({f"{k}_hub": v.pinned for k, v in sources.items() if v.pinned})  # id, commit, config, split
    if data_cfg.columns:
        parameters["columns"] = dict(data_cfg.columns)
    if data_cfg.tools:
        parameters["tools"] = str(data_cfg.tools)
    texts = {"train.jsonl": rows_to_jsonl(report.train_rows), "eval.jsonl": rows_to_jsonl(report.eval_rows),
             "report.json": json.dumps(report.to_json(), indent=2)}
    if _split_recorded(run, parameters, texts):
        return report  # the same split from the same files: recording it again would only change timestamps
    with run.stage("data", parameters=parameters) as st:
        for file in dict.fromkeys(f for source in sources.values() for f in source.files):
            st.add_input(file)
        if data_cfg.tools:
            st.add_input(data_cfg.tools)
        out = st.output_dir("data")
        for name, text in texts.items():
            (out / name).write_text(text, encoding="utf-8")
        st.metrics.update({"train_rows": len(report.train_rows), "eval_rows": len(report.eval_rows),
                           "warnings": [str(w) for w in report.warnings], "token_stats": report.token_stats})
        if tokenizer is not None and (thinking := thinking_policy(tokenizer, report.train_rows)):
            st.metrics["thinking"] = thinking
    return report


def thinking_policy(tokenizer, rows: list[Row]) -> dict | None:
    """For a template with thinking blocks (Qwen 3): how the training answers treat them."""
    fmt = reasoning_format(tokenizer.chat_template)
    if fmt is None:
        return None
    with_thinking = thinking_in_answers([row.messages for row in rows], fmt)
    policy = "answers with their own thinking" if with_thinking == len(rows) else \
        "answers without thinking (the template writes an empty block before the last one)" if not with_thinking \
        else "some answers with their own thinking, some without"
    return {"format": f"{fmt.start}...{fmt.end}", "policy": policy, "rows_with_thinking": with_thinking,
            "rows": len(rows), "eval": fmt.describe()}


def _split_recorded(run, parameters: dict, texts: dict[str, str]) -> bool:
    """The run records this exact split: same parameters, inputs unchanged, the same files intact."""
    stage = run.manifest.stages.get("data")
    if stage is None or stage.parameters != parameters:
        return False
    if any(not run.resolve(i.path).is_file() or run.digest(run.resolve(i.path)).sha256 != i.sha256
           for i in stage.inputs):
        return False
    expected = {f"data/{name}": hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in texts.items()}
    return {o.path: o.sha256 for o in stage.outputs} == expected and run.outputs_intact("data")
