"""Stage ``eval``: the fine-tune (and the base) on the held-out split, with the release gate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from packager.config import EvalConfig
from packager.errors import StageError
from packager.models.checkpoint import resolve_base
from packager.models.inference import load_causal_lm
from packager.models.tokenizer import load_tokenizer
from packager.run.directory import Run
from packager.run.jsonl import write_jsonl
from packager.run.manifest import read_manifest
from packager.run.settings import recorded_config
from packager.stages.data.split import read_split, read_split_tools
from packager.stages.evaluate.base import BASE_STAGE, Baselines, evaluate_base
from packager.stages.evaluate.calls import calls_jsonl
from packager.stages.evaluate.general import describe as describe_general, general_check
from packager.stages.evaluate.judge import describe as describe_judge, judge_answers
from packager.stages.evaluate.measure import evaluate_model, load_finetuned
from packager.stages.evaluate.metrics import check_gate, format_table, task_metric_name
from packager.stages.evaluate.report import write_eval_report


@dataclass
class EvalResult:
    run_dir: Path
    finetuned: dict
    base: dict | None
    gate: dict
    task_metric: str
    prompted: dict | None = None
    general: dict | None = None
    judge: dict | None = None

    def summary(self) -> str:
        report = self.run_dir / "eval" / "report.html"
        verdict = "release gate: passed" if self.gate["passed"] else "release gate: FAILED: " + \
            "; ".join(self.gate["failures"])
        lines = [format_table(self.finetuned, self.base, self.task_metric, prompted=self.prompted),
                 describe_general(self.general), describe_judge(self.judge), f"report: {report}", verdict]
        return "\n".join(line for line in lines if line)

    def raise_for_gate(self) -> None:
        """A failed release gate fails the command, after the metrics were recorded."""
        if not self.gate["passed"]:
            raise StageError("eval gate", "; ".join(self.gate["failures"]),
                             hint=f"see {self.run_dir / 'eval' / 'report.html'}; deploy will refuse this run")


def evaluate_run(run_dir: Path | str, *, against_base: bool = False, limit: int | None = None,
                 eval_config: EvalConfig | None = None) -> EvalResult:
    """Evaluate the run's fine-tune (and the base, bare and prompted) on its held-out split, with the general
    check and the judge where configured; record stage ``eval``.

    ``eval_config`` replaces the eval section the run was trained with (a release's gate may be stricter).
    """
    run = Run.open(run_dir)
    cfg = recorded_config(run)
    ecfg = eval_config or cfg.eval
    against_base = against_base or ecfg.gate.must_beat_base
    conversations = read_split(run.path / "data" / "eval.jsonl")[: limit or ecfg.limit or None]
    tools = read_split_tools(run.path / "data" / "eval.jsonl")[: len(conversations)]
    if not conversations:
        raise StageError("eval", f"{run.path / 'data' / 'eval.jsonl'} holds no rows to evaluate on")
    ckpt = resolve_base(cfg.base)
    weights = "model" if (run.path / "train" / "model").is_dir() else "adapter"
    tokenizer = load_tokenizer(run.path / "train" / weights).tokenizer  # the template used in training

    model = load_finetuned(run, cfg, base_path=ckpt.path)
    finetuned, ft_answers, ft_calls = evaluate_model(model, tokenizer, conversations, ecfg, tools=tools,
                                                     label="the fine-tune answers")
    general = general_check(model, tokenizer, ecfg.general, load_base=lambda: load_causal_lm(
        ckpt.path, trust_remote_code=cfg.base.trust_remote_code)) if ecfg.general.enabled else None
    del model
    baselines = None
    if against_base:
        baselines = evaluate_base(run, ckpt, ecfg, tokenizer=tokenizer, conversations=conversations, tools=tools,
                                  trust_remote_code=cfg.base.trust_remote_code)
        run = Run.open(run.path)
    rows = _prediction_rows(conversations, ft_answers, baselines)
    judged, judged_rows = judge_answers(ecfg.judge, rows, columns=("finetuned", "base")[: 2 if baselines else 1]
                                        ) if ecfg.judge is not None else (None, [])
    base = baselines.bare if baselines else None
    prompted = baselines.prompted if baselines else None
    metric = task_metric_name(finetuned)
    summary = {"finetuned": finetuned, "base": base, "prompted": prompted, "general": general, "judge": judged,
               "prompting": baselines.prompting if baselines else None,
               "gate": check_gate(ecfg, finetuned, base, prompted, general), "task_metric": metric,
               "eval_split_sha256": run.digest(run.path / "data" / "eval.jsonl").sha256}
    parameters = {"against_base": against_base, "limit": limit or ecfg.limit, "max_new_tokens": ecfg.max_new_tokens,
                  "format_regex": ecfg.format_regex, "task_metric": metric, "decoding": "greedy",
                  "eval_config": ecfg.model_dump(mode="json")}
    with run.stage("eval", parameters=parameters) as st:
        st.add_input(run.path / "data" / "eval.jsonl")
        for file in sorted((run.path / "train" / weights).iterdir()):
            st.add_input(file)
        if against_base:
            st.add_input(run.path / BASE_STAGE / "predictions.jsonl")
        out = st.output_dir("eval")
        write_jsonl(out / "predictions.jsonl", rows)
        if ft_calls:
            (out / "calls.jsonl").write_text(calls_jsonl(ft_calls, baselines.calls if baselines else None))
        if judged_rows:
            write_jsonl(out / "judge.jsonl", judged_rows)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        write_eval_report(out, run_name=cfg.run.name, summary=summary, rows=rows)
        st.metrics.update(summary)
    return EvalResult(run.path, finetuned, base, summary["gate"], metric, prompted, general, judged)


def _prediction_rows(conversations: list[list[dict]], answers: list[str], baselines: Baselines | None) -> list[dict]:
    rows = []
    for i, conv in enumerate(conversations):
        row = {"prompt": conv[-2]["content"], "reference": conv[-1]["content"], "finetuned": answers[i]}
        if baselines is not None:
            row["base"] = baselines.answers[i]
            if baselines.prompted_answers is not None:
                row["prompted"] = baselines.prompted_answers[i]
        rows.append(row)
    return rows




def gate_status(run_dir: Path) -> dict | None:
    """The recorded gate of a run's last evaluation, for later stages (deploy) to enforce."""
    stage = read_manifest(run_dir).stages.get("eval")
    return None if stage is None else stage.metrics.get("gate")
