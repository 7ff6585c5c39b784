"""The settings a run was made with, as its manifest recorded them, and which of them may change later.

A trained run's settings are its train stage's; a run merged from an adapter trained elsewhere (``packager
merge --adapter``) has no train stage, and its merge stage records them instead.
"""

from __future__ import annotations

from pathlib import Path

from packager.config import PackagerConfig, load_config
from packager.errors import MissingPathError
from packager.names import HUB_ID


DEPLOYMENT_SECTIONS = ("containers", "smoke", "publish")
SETTINGS_STAGES = ("train", "merge")
"""The stages whose record may hold the run's settings, in order of precedence."""


def deployment_config(run, config_path: Path | str | None = None) -> PackagerConfig:
    """The run's recorded config, with the deployment sections (containers, smoke, publish) of ``config_path``.

    Serving settings may change after training without retraining; what the model is made of may not.
    """
    recorded = recorded_config(run)
    if config_path is None:
        return recorded
    current = load_config(config_path)
    return recorded.model_copy(update={k: getattr(current, k) for k in DEPLOYMENT_SECTIONS})


def recorded_config(run) -> PackagerConfig:
    """The resolved config a run was made with, as its manifest recorded it (paths already absolute)."""
    for name in SETTINGS_STAGES:
        stage = run.manifest.stages.get(name)
        if stage is not None and "config" in stage.parameters:
            return PackagerConfig.model_validate(stage.parameters["config"])
    raise MissingPathError(run.path, "has no recorded train or merge stage, so there is no model to work on",
                           hint="train first (packager train -c packager.yaml), or merge an adapter trained "
                                "elsewhere: packager merge --adapter DIR --base MODEL --out RUN")


def base_hub_id(run) -> tuple[str | None, str | None]:
    """The base model as a Hub id (never a local path: the Hub rejects those in cards) and its revision."""
    try:
        base = recorded_config(run).base
    except MissingPathError:
        return None, None
    hub_id = base.hub_id or (base.model if HUB_ID.fullmatch(base.model) and not Path(base.model).exists() else None)
    return hub_id, base.revision
