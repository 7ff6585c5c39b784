"""Model cards (README.md with Hub front matter) rendered from ``templates/`` and the run's manifest."""

from __future__ import annotations

import yaml

import packager

from packager.run.lineage import lineage_digest
from packager.run.settings import base_hub_id, recorded_config
from packager.templates import render


RELATIONS = {"merged": ("finetune", "transformers"), "adapter": ("adapter", "peft"), "gguf": ("quantized", None)}


def render_model_card(run, *, kind: str, files: list[dict], license_cfg, stop_ids: list[int]) -> str:
    relation, library = RELATIONS[kind]
    hub_id, revision = base_hub_id(run)
    method = recorded_config(run).train.method
    front: dict = {}
    if hub_id:
        front["base_model"] = hub_id
        front["base_model_relation"] = relation
    if library:
        front["library_name"] = library
    front["license"] = license_cfg.license
    if license_cfg.license == "other":
        front.update(license_name=license_cfg.license_name, license_link=license_cfg.license_link)
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["packager", method] + (["gguf"] if kind == "gguf" else [])
    eval_stage = run.manifest.stages.get("eval")
    metrics = []
    if eval_stage is not None:
        ft, base = eval_stage.metrics.get("finetuned") or {}, eval_stage.metrics.get("base") or {}
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        metrics = [(k, fmt(ft.get(k)), fmt(base.get(k))) for k in ("exact_match", "format_adherence",
                                                                   "field_accuracy", "eval_loss") if k in ft]
    served = [(target, stage.metrics["context_length"], stage.metrics.get("context_note", ""))
              for target in ("vllm", "ollama")
              if (stage := run.manifest.stages.get(f"containerize-{target}")) and "context_length" in stage.metrics]
    caveats = [(target, caveat) for target, *_ in served
               if (caveat := run.manifest.stages[f"containerize-{target}"].metrics.get("template_parity", {})
                   .get("caveat"))]
    manifest_digest = lineage_digest(run.manifest)  # stable while publishing records more stages
    title = f"{run.manifest.run} ({kind})"
    description = (f"A {method} fine-tune of {hub_id or 'a local base model'}, packaged by packager "
                   f"as a {'merged 16-bit checkpoint' if kind == 'merged' else kind}.")
    return render("model_card.md.j2", front_matter=yaml.safe_dump(front, sort_keys=False), title=title,
                  description=description, base_model=hub_id, base_revision=revision, method=method,
                  run_name=run.manifest.run, manifest_digest=manifest_digest, packager_version=packager.__version__,
                  files=files, metrics=metrics, stop_ids=stop_ids, served=served,
                  caveats=caveats)
