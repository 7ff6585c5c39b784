"""``eval/report.html``: the metrics of the fine-tune and the base side by side, with every answer."""

from __future__ import annotations

from pathlib import Path

from packager.stages.evaluate.metrics import metric_names
from packager.templates import render


def write_eval_report(out_dir: Path, *, run_name: str, summary: dict, rows: list[dict]) -> Path:
    shown = metric_names(summary["finetuned"], summary.get("base"), summary.get("prompted"))
    html = render("eval_report.html.j2", run_name=run_name, summary=summary, rows=rows, metrics=shown)
    report = out_dir / "report.html"
    report.write_text(html, encoding="utf-8")
    return report
