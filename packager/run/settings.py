"""The settings a run was made with, as its manifest recorded them, and which of them may change later."""

from __future__ import annotations

from pathlib import Path

from packager.config import PackagerConfig, load_config
from packager.errors import MissingPathError


DEPLOYMENT_SECTIONS = ("containers", "smoke", "publish")


def deployment_config(run, config_path: Path | str | None = None) -> PackagerConfig:
    """The run's recorded config, with the deployment sections (containers, smoke, publish) of ``config_path``.

    Serving settings may change after training without retraining; what the model is made of may not.
    """
    if config_path is None:
        return recorded_config(run)
    current = load_config(config_path)
    if "train" not in run.manifest.stages:
        return current  # e.g. a merge of an adapter trained elsewhere
    return recorded_config(run).model_copy(update={k: getattr(current, k) for k in DEPLOYMENT_SECTIONS})


def recorded_config(run) -> PackagerConfig:
    """The resolved config a run was trained with, as its manifest recorded it (paths already absolute)."""
    stage = run.manifest.stages.get("train")
    if stage is None:
        raise MissingPathError(run.path, "has no recorded train stage, so there is no model to work on",
                               hint="train first: packager train -c packager.yaml")
    return PackagerConfig.model_validate(stage.parameters["config"])
