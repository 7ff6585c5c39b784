"""``packager report RUN``: one HTML page about a run, read from its manifest and the files it records."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from packager.run.atomic import atomic_write_text
from packager.run.directory import Run
from packager.run.hashing import sha256_file
from packager.run.jsonl import read_jsonl
from packager.run.lineage import lineage_digest
from packager.stages.evaluate.metrics import metric_names
from packager.templates import render


def run_report_context(run_dir: Path, *, timings: dict[str, float] | None = None, samples: int = 6) -> dict:
    """What ``report.html`` shows, read from the manifest and the files it records (nothing recomputed)."""
    run = Run.open(run_dir)
    stages = run.manifest.stages

    def metrics(name: str) -> dict:
        return stages[name].metrics if name in stages else {}

    train = metrics("train")
    loss_png = run.path / "train" / "loss.png"
    smoke = {t: json.loads((run.path / "smoke" / f"{t}.json").read_text())
             for t in ("vllm", "ollama") if f"smoke-{t}" in stages and (run.path / "smoke" / f"{t}.json").is_file()}
    containers = {t: stages[f"containerize-{t}"] for t in ("vllm", "ollama") if f"containerize-{t}" in stages}
    images = {t: stages[f"image-{t}"].metrics for t in ("vllm", "ollama") if f"image-{t}" in stages}
    base = stages.get("train").parameters.get("config", {}).get("base", {}) if "train" in stages else {}
    return {
        "run_name": run.manifest.run, "run_dir": str(run.path), "packager_version": run.manifest.packager_version,
        "lineage_digest": lineage_digest(run.manifest), "manifest_sha256": sha256_file(run.manifest_path).sha256,
        "stages": {name: {"finished_at": s.finished_at, "outputs": len(s.outputs)} for name, s in stages.items()},
        "base": base, "train": train,
        "loss_png": base64.b64encode(loss_png.read_bytes()).decode() if loss_png.is_file() else None,
        "eval": metrics("eval"), "predictions": read_jsonl(run.path / "eval" / "predictions.jsonl")[:samples],
        "merge": metrics("merge").get("verification"), "gguf": metrics("export-gguf"),
        "safetensors": metrics("export-safetensors"), "containers": containers, "images": images,
        "smoke": smoke, "signed": "sign" in stages, "timings": timings or {},
    }


def write_run_report(run_dir: Path, out: Path, *, timings: dict[str, float] | None = None) -> Path:
    """One page about a run: loss curve, base vs fine-tune, sample answers, merge and export parity, serving
    contexts, smoke results and the manifest digest. Written outside the run (``out``): it is a view of what
    the manifest records, so writing it changes nothing the manifest or a signature describes."""
    context = run_report_context(Path(run_dir), timings=timings)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = metric_names(*(context["eval"].get(k) for k in ("finetuned", "base", "prompted")))
    atomic_write_text(out, render("run_report.html.j2", metrics=shown, **context))
    return out
