"""``packager init``: a commented config generated from the schema, plus a tiny example dataset.

The comments and defaults come from :mod:`packager.config` itself, so the
example can never drift from what the schema accepts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from packager.config import PackagerConfig, load_config, section_type
from packager.errors import RunConflictError
from packager.run.atomic import atomic_write_text


EXAMPLE_ROWS = [
    ("My invoice for March was charged twice, please refund one.", "billing", "high",
     "Customer was double-charged for the March invoice."),
    ("How do I change the email address on my account?", "account", "low",
     "Customer wants to change their account email."),
    ("The app crashes every time I open the settings page.", "bug", "high",
     "App crashes when opening settings."),
    ("Could you add a dark mode to the dashboard?", "feature_request", "low",
     "Customer asks for a dashboard dark mode."),
    ("I can't log in since this morning, password reset mail never arrives.", "account", "high",
     "Customer locked out; reset email not delivered."),
    ("Export to CSV leaves out the last row of the table.", "bug", "medium",
     "CSV export drops the final table row."),
    ("Is there a discount for non-profits on the yearly plan?", "billing", "low",
     "Customer asks about non-profit pricing."),
    ("Please support SSO with Okta for our team.", "feature_request", "medium",
     "Customer requests Okta SSO support."),
    ("Our card expired; where do I update payment details?", "billing", "medium",
     "Customer needs to update an expired card."),
    ("Notifications arrive hours late on Android.", "bug", "medium",
     "Android notifications are delayed by hours."),
    ("Delete my account and all my data, please.", "account", "medium",
     "Customer requests account and data deletion."),
    ("Would love keyboard shortcuts for the editor.", "feature_request", "low",
     "Customer asks for editor keyboard shortcuts."),
]
SYSTEM_PROMPT = ("Classify the support ticket. Answer with JSON only: "
                 '{"category": ..., "priority": ..., "summary": ...}')


def example_dataset_jsonl() -> str:
    lines = []
    for ticket, category, priority, summary in EXAMPLE_ROWS:
        answer = json.dumps({"category": category, "priority": priority, "summary": summary})
        lines.append(json.dumps({"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                              {"role": "user", "content": ticket},
                                              {"role": "assistant", "content": answer}]}))
    return "\n".join(lines) + "\n"


def commented_yaml(model: type[BaseModel], values: dict[str, Any], *, indent: int = 0) -> str:
    """YAML for ``model`` with every field, its default (or the given value) and its docstring as a comment."""
    pad = "  " * indent
    out = []
    for name, info in model.model_fields.items():
        doc = info.description
        if doc:
            out.extend(f"{pad}# {line}" for line in doc.splitlines())
        annotation = section_type(info.annotation)
        value = values.get(name, None if info.is_required() else info.get_default(call_default_factory=True))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sub_values = values.get(name) or {}
            section = f"{pad}{name}:\n" + commented_yaml(annotation, sub_values if isinstance(sub_values, dict)
                                                          else {}, indent=indent + 1)
            if value is None and not info.is_required():  # an optional section, off by default: shown commented
                section = "\n".join(f"{pad}# {line[len(pad):]}" for line in section.splitlines())
            out.append(section)
            continue
        if isinstance(value, Path):
            value = str(value)
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000, sort_keys=False).strip()
        out.append(f"{pad}{dumped.removeprefix('{').removesuffix('}')}")
    return "\n".join(out)


def init_project(directory: Path | str, *, base_model: str, force: bool = False) -> list[Path]:
    """Write ``DIR/packager.yaml`` and ``DIR/data/train.jsonl``; refuse to overwrite unless ``force``."""
    directory = Path(directory)
    config_path = directory / "packager.yaml"
    data_path = directory / "data" / "train.jsonl"
    existing = [p for p in (config_path, data_path) if p.exists()]
    if existing and not force:
        raise RunConflictError(existing[0], "already exists; not overwriting", hint="pass --force to overwrite")
    run_name = re.sub(r"[^A-Za-z0-9._-]", "-", directory.resolve().name).strip(".-_") or "example"
    values = {"run": {"name": run_name, "root": "runs"}, "base": {"model": base_model},
              "data": {"train": "data/train.jsonl", "system_prompt": None}}
    header = ("# packager.yaml: every key with its default. Delete what you don't change.\n"
              "# Validate with: packager train -c packager.yaml --dry-run\n")
    text = header + commented_yaml(PackagerConfig, values) + "\n"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(data_path, example_dataset_jsonl())
    atomic_write_text(config_path, text)
    load_config(config_path)  # the scaffold must always satisfy the schema
    return [config_path, data_path]
