"""Stage ``eval-base``: the base model on the held-out split, evaluated once per run and reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from packager.config import EvalConfig, PackagerConfig
from packager.errors import StageError
from packager.models.checkpoint import resolve_base
from packager.models.inference import load_causal_lm
from packager.models.tokenizer import load_tokenizer
from packager.run.directory import Run
from packager.stages.data.split import read_split, read_split_tools
from packager.stages.evaluate.measure import evaluate_model
from packager.stages.evaluate.metrics import METRICS, task_metric_name


BASE_STAGE = "eval-base"


def _base_eval_parameters(run: Run, ckpt, ecfg: EvalConfig, *, chat_template: str, rows: int) -> dict:
    """What the base's answers depend on: its files, the prompts, the template and the decoding settings; and the
    metrics scored, so a base scored before a metric existed is scored again."""
    return {"base_files": {f.name: run.digest(f).sha256 for f in ckpt.files},
            "eval_split": run.digest(run.path / "data" / "eval.jsonl").sha256, "rows": rows,
            "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest(),
            "max_new_tokens": ecfg.max_new_tokens, "format_regex": ecfg.format_regex,
            "json_schema": run.digest(Path(ecfg.json_schema)).sha256 if ecfg.json_schema else None,
            "decoding": "greedy", "metrics": list(METRICS)}


def _recorded_base_eval(run: Run, parameters: dict) -> tuple[dict, list[str], list[dict]] | None:
    stage = run.manifest.stages.get(BASE_STAGE)
    if stage is None or stage.parameters != parameters or not run.outputs_intact(BASE_STAGE):
        return None
    answers = [row["base"] for row in _jsonl(run.path / BASE_STAGE / "predictions.jsonl")]
    calls = _jsonl(run.path / BASE_STAGE / "calls.jsonl")
    return stage.metrics["base"], answers, calls


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def evaluate_base(run: Run, ckpt, ecfg: EvalConfig, *, tokenizer, conversations: list[list[dict]],
                  tools: list[list[dict] | None] | None = None,
                  trust_remote_code: bool = False) -> tuple[dict, list[str], list[dict], bool]:
    """The base model's metrics and answers on the held-out split, recorded as stage ``eval-base``.

    Reused while the base files, the split, the chat template and the decoding settings are the same, so
    the base is evaluated once per run: before training (``packager demo``) or at the first ``eval``.
    Returns (metrics, answers, call predictions, reused).
    """
    parameters = _base_eval_parameters(run, ckpt, ecfg, chat_template=tokenizer.chat_template,
                                       rows=len(conversations))
    recorded = _recorded_base_eval(run, parameters)
    if recorded is not None:
        return (*recorded, True)
    model = load_causal_lm(ckpt.path, trust_remote_code=trust_remote_code)
    metrics, answers, calls = evaluate_model(model, tokenizer, conversations, ecfg, tools=tools,
                                             label="the base answers")
    del model
    with run.stage(BASE_STAGE, parameters=parameters) as st:
        st.add_input(run.path / "data" / "eval.jsonl")
        for file in ckpt.files:
            st.add_input(file)
        out = st.output_dir(BASE_STAGE)
        rows = [{"prompt": c[-2]["content"], "reference": c[-1]["content"], "base": a}
                for c, a in zip(conversations, answers)]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
        if calls:
            (out / "calls.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in calls),
                                             encoding="utf-8")
        st.metrics.update({"base": metrics, "task_metric": task_metric_name(metrics)})
    return metrics, answers, calls, False


def evaluate_base_run(run_dir: Path | str, cfg: PackagerConfig) -> tuple[dict, list[str]]:
    """Evaluate the base on a run's held-out split before any training (the data stage must be recorded)."""
    run = Run.open(run_dir)
    if "data" not in run.manifest.stages:
        raise StageError("eval", f"{run.path} has no data split yet",
                         hint="check and split the data first (packager train does it before training)")
    conversations = read_split(run.path / "data" / "eval.jsonl")[: cfg.eval.limit or None]
    tools = read_split_tools(run.path / "data" / "eval.jsonl")[: len(conversations)]
    ckpt = resolve_base(cfg.base)
    tokenizer = load_tokenizer(ckpt.path, chat_template=cfg.base.chat_template,
                               system_policy=cfg.training_data.system_policy,
                               trust_remote_code=cfg.base.trust_remote_code).tokenizer
    metrics, answers, _, _ = evaluate_base(run, ckpt, cfg.eval, tokenizer=tokenizer, conversations=conversations,
                                           tools=tools, trust_remote_code=cfg.base.trust_remote_code)
    return metrics, answers
