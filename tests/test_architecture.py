"""The architecture, checked: layers that only point down (import-linter, the contracts in pyproject.toml), no
import cycles, modules one person can hold, functions that fit a screen, and test modules that import each
other never (what they share is in tests/support/)."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "packager"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LENGTH_REASON = "Length:"
"""A longer function says why in its docstring, in a sentence starting with this word."""


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packager package found under ``tree``, with the project's contracts."""
    exe = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                          timeout=300)


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" KEPT") == 4, result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    """The contracts are not vacuous: the run layer importing the CLI is caught, naming the import."""
    tree = tmp_path / "tree"
    shutil.copytree(PACKAGE, tree / "packager", ignore=shutil.ignore_patterns("__pycache__"))
    hashing = tree / "packager" / "run" / "hashing.py"
    hashing.write_text(hashing.read_text() + "\nimport packager.cli  # planted\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert "The run layer imports nothing above it BROKEN" in result.stdout
    assert "packager.run.hashing -> packager.cli" in result.stdout


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_one_person_can_hold():
    lengths = {str(f.relative_to(ROOT)): len(f.read_text().splitlines()) for f in _modules()}
    long = {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES}
    assert not long, long


def test_long_functions_say_why():
    unexplained = []
    for file in _modules():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and LENGTH_REASON not in (ast.get_docstring(node) or ""):
                    unexplained.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not unexplained, unexplained


def test_test_modules_do_not_import_each_other():
    tests = Path(__file__).resolve().parent
    names = {p.stem for p in tests.rglob("test_*.py")} | {"conftest"}
    offenders = []
    for file in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            offenders += [f"{file.relative_to(tests)} imports {m}" for m in imported if m.split(".")[0] in names]
    assert not offenders, offenders


def test_the_readme_map_names_every_package():
    """The README's map of the tree matches it: every sub-package, and nothing that no longer exists."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The tree", 1)[1].split("\n## ", 1)[0]
    packages = {p.parent.relative_to(ROOT).as_posix() + "/" for p in PACKAGE.rglob("__init__.py")} - {"packager/"}
    named = {word.strip("`") for word in section.split() if word.strip("`").startswith("packager/")}
    assert packages <= named, packages - named
    assert {n for n in named if n.endswith("/")} <= packages | {"packager/"}, named - packages
