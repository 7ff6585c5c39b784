"""A run's lineage: every stage that made its artifacts, and one digest that names them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from packager.run.manifest import Manifest


PUBLISH_STAGES = ("sign", "push-")
"""Stages that sign or publish a run: recorded afterwards without changing what the run is."""


def lineage(manifest: Manifest) -> dict[str, Any]:
    """Every stage that made the run's artifacts (all but signing and publishing), as recorded."""
    return {name: stage.model_dump(mode="json") for name, stage in sorted(manifest.stages.items())
            if not name.startswith(PUBLISH_STAGES)}


def lineage_digest(manifest: Manifest) -> str:
    """sha256 of :func:`lineage`: names what was published, and stays put while publishing records more."""
    return hashlib.sha256(json.dumps(lineage(manifest), sort_keys=True).encode()).hexdigest()
