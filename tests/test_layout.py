"""The package's architecture, checked: layers point down, no cycles, small modules and functions.

``./run_tests.sh`` runs ``lint-imports`` (the contracts in ``pyproject.toml``) before pytest; these
tests check the same contracts from inside the suite, that they would catch a violation, and the
size limits of the layout (functions ≤ 60 lines, modules ≤ 400 lines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qsmrep"
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400

pytest.importorskip("importlinter")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("lower, upper", [("qsmrep/core/loss.py", "qsmrep.run.config"),
                                          ("qsmrep/run/step.py", "qsmrep.study.plan")])
def test_an_upward_import_breaks_the_layers_contract(tmp_path, lower, upper):
    copy = tmp_path / "tree"
    copy.mkdir()
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy / "qsmrep")], check=True)
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    target = copy / lower
    target.write_text(target.read_text() + f"\nimport {upper}  # noqa\n")
    result = _lint(copy)
    assert result.returncode != 0 and "BROKEN" in result.stdout


def test_a_cycle_breaks_the_acyclic_contract(tmp_path):
    copy = tmp_path / "tree"
    copy.mkdir()
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy / "qsmrep")], check=True)
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    physics = copy / "qsmrep/core/physics.py"  # synth imports physics; physics importing synth closes a cycle
    physics.write_text(physics.read_text() + "\nimport qsmrep.core.synth  # noqa\n")
    result = _lint(copy)
    assert result.returncode != 0 and "No cycles are allowed in qsmrep.core" in result.stdout


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_and_functions_are_small():
    long_modules = [f"{p.relative_to(ROOT)}: {n} lines" for p in _sources()
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long_functions = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long_modules and not long_functions, long_modules + long_functions
