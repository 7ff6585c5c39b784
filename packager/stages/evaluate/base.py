"""Stage ``eval-base``: the base model on the held-out split, evaluated once per run and reused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from packager.config import EvalConfig, PackagerConfig
from packager.errors import StageError
from packager.models.checkpoint import read_context_limit, resolve_base
from packager.models.inference import load_causal_lm
from packager.models.tokenizer import load_tokenizer
from packager.run.directory import Run
from packager.run.jsonl import read_jsonl, write_jsonl
from packager.stages.data.split import prepare_data, read_split, read_split_tools
from packager.stages.evaluate.measure import evaluate_model
from packager.stages.evaluate.metrics import (METRICS, PROMPTING_HINT, format_table, prompting_verdict,
                                               task_metric_name)
from packager.stages.evaluate.prompting import choose_prompting


BASE_STAGE = "eval-base"


@dataclass
class Baselines:
    """The base model on the held-out split: bare (each row as written) and prompted (eval.prompting)."""

    bare: dict
    answers: list[str]
    calls: list[dict]
    prompted: dict | None = None
    prompted_answers: list[str] | None = None
    prompting: dict | None = None  # which examples and system prompt the prompted base had
    reused: bool = False

    def summary(self, cfg: EvalConfig) -> str:
        """The table of both baselines and, when ``eval.gate.max_prompting_score`` is set, its verdict."""
        metric = task_metric_name(self.bare)
        lines = [format_table(None, self.bare, metric, prompted=self.prompted,
                              title=f"held-out rows: {self.bare['rows']}")]
        if cfg.gate.max_prompting_score is not None and self.prompted is not None:
            verdict = prompting_verdict(cfg, self.prompted)
            lines.append(f"prompting gate: FAILED: {verdict}" if verdict else
                         f"prompting gate: passed (prompted base {self.prompted[metric]:.3f} < "
                         f"eval.gate.max_prompting_score {cfg.gate.max_prompting_score}): fine-tuning may pay off")
        return "\n".join(lines)

    def raise_for_prompting_gate(self, cfg: EvalConfig) -> None:
        """Prompting already reaches ``eval.gate.max_prompting_score``: fail, after the baselines were recorded."""
        verdict = prompting_verdict(cfg, self.prompted)
        if verdict:
            raise StageError("eval-base", verdict, hint=PROMPTING_HINT)


def _base_eval_parameters(run: Run, ckpt, ecfg: EvalConfig, *, chat_template: str, rows: int) -> dict:
    """What the base's answers depend on: its files, the prompts (and the training split the prompted base's
    examples come from), the template and the decoding settings; and the metrics and fields scored, so a base
    scored before a metric existed is scored again."""
    prompting = ecfg.prompting.model_dump(mode="json") if ecfg.prompting.enabled else None
    return {"base_files": {f.name: run.digest(f).sha256 for f in ckpt.files},
            "eval_split": run.digest(run.path / "data" / "eval.jsonl").sha256, "rows": rows,
            "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest(),
            "max_new_tokens": ecfg.max_new_tokens, "format_regex": ecfg.format_regex,
            "json_schema": run.digest(Path(ecfg.json_schema)).sha256 if ecfg.json_schema else None,
            "decoding": "greedy", "metrics": list(METRICS), "fields": dict(ecfg.fields), "prompting": prompting,
            "train_split": run.digest(run.path / "data" / "train.jsonl").sha256 if prompting else None}


def _recorded_base_eval(run: Run, parameters: dict) -> Baselines | None:
    stage = run.manifest.stages.get(BASE_STAGE)
    if stage is None or stage.parameters != parameters or not run.outputs_intact(BASE_STAGE):
        return None
    rows = read_jsonl(run.path / BASE_STAGE / "predictions.jsonl")
    prompted = stage.metrics.get("prompted")
    return Baselines(stage.metrics["base"], [row["base"] for row in rows],
                     read_jsonl(run.path / BASE_STAGE / "calls.jsonl"),
                     prompted, [row["prompted"] for row in rows] if prompted else None,
                     stage.metrics.get("prompting"), reused=True)


def evaluate_base(run: Run, ckpt, ecfg: EvalConfig, *, tokenizer, conversations: list[list[dict]],
                  tools: list[list[dict] | None] | None = None, trust_remote_code: bool = False) -> Baselines:
    """The base model's metrics and answers on the held-out split, bare and prompted, recorded as stage
    ``eval-base``.

    Reused while the base files, the splits, the chat template and the decoding settings are the same, so
    the base is evaluated once per run: before training (``packager eval-base``, ``packager demo``, deploy
    with a prompting gate) or at the first ``eval``.
    """
    parameters = _base_eval_parameters(run, ckpt, ecfg, chat_template=tokenizer.chat_template,
                                       rows=len(conversations))
    recorded = _recorded_base_eval(run, parameters)
    if recorded is not None:
        return recorded
    model = load_causal_lm(ckpt.path, trust_remote_code=trust_remote_code)
    metrics, answers, calls = evaluate_model(model, tokenizer, conversations, ecfg, tools=tools,
                                             label="the base answers")
    result = Baselines(metrics, answers, calls)
    if ecfg.prompting.enabled:
        prompting = choose_prompting(run.path / "data" / "train.jsonl", ecfg.prompting)
        result.prompted, result.prompted_answers, _ = evaluate_model(
            model, tokenizer, conversations, ecfg, tools=tools, label="the prompted base answers",
            prompting=prompting)
        result.prompting = prompting.describe()
    del model
    _record_base_eval(run, ckpt, parameters, conversations, result)
    return result


def _record_base_eval(run: Run, ckpt, parameters: dict, conversations: list[list[dict]], result: Baselines) -> None:
    with run.stage(BASE_STAGE, parameters=parameters) as st:
        st.add_input(run.path / "data" / "eval.jsonl")
        if result.prompted is not None:
            st.add_input(run.path / "data" / "train.jsonl")
        for file in ckpt.files:
            st.add_input(file)
        out = st.output_dir(BASE_STAGE)
        rows = []
        for i, conv in enumerate(conversations):
            row = {"prompt": conv[-2]["content"], "reference": conv[-1]["content"], "base": result.answers[i]}
            if result.prompted_answers is not None:
                row["prompted"] = result.prompted_answers[i]
            rows.append(row)
        write_jsonl(out / "predictions.jsonl", rows)
        if result.calls:
            write_jsonl(out / "calls.jsonl", result.calls)
        st.metrics.update({"base": result.bare, "prompted": result.prompted, "prompting": result.prompting,
                           "task_metric": task_metric_name(result.bare)})


def evaluate_base_run(run_dir: Path | str, cfg: PackagerConfig) -> Baselines:
    """Evaluate the base on a run's held-out split before any training, bare and prompted; the data is checked
    and split into the run first when it is not yet (stage ``data``, exactly as training does it)."""
    ckpt = resolve_base(cfg.base)
    tokenizer = load_tokenizer(ckpt.path, chat_template=cfg.base.chat_template,
                               system_policy=cfg.training_data.system_policy,
                               trust_remote_code=cfg.base.trust_remote_code).tokenizer
    run = Run.create(run_dir, name=cfg.run.name)
    if "data" not in run.manifest.stages:
        prepare_data(run, cfg.training_data, tokenizer=tokenizer, model_max=read_context_limit(ckpt.path))
        run = Run.open(run.path)
    conversations = read_split(run.path / "data" / "eval.jsonl")[: cfg.eval.limit or None]
    tools = read_split_tools(run.path / "data" / "eval.jsonl")[: len(conversations)]
    return evaluate_base(run, ckpt, cfg.eval, tokenizer=tokenizer, conversations=conversations, tools=tools,
                         trust_remote_code=cfg.base.trust_remote_code)
