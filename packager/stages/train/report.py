"""``train/report.html``: the loss curve (a PNG, also in the run) and the sample answers along the way."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from packager.templates import render


def loss_curve_png(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no timestamp, so the same run gives the same bytes
    plt.close(fig)


def write_training_report(out_dir: Path, *, run_name: str, log_history: list[dict], samples_file: Path,
                          metrics: dict) -> Path:
    png = out_dir / "loss.png"
    loss_curve_png(log_history, png)
    samples = []
    if samples_file.exists():
        samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines() if line]
    html = render("train_report.html.j2", run_name=run_name, metrics=metrics, samples=samples,
                  loss_png=base64.b64encode(png.read_bytes()).decode())
    report = out_dir / "report.html"
    report.write_text(html, encoding="utf-8")
    return report
