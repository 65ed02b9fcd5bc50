"""What a plain install gives: the library's dependencies are what it imports, `train`, `phantom` and `predict` run
without the reproduction's tools, and the notebooks name the standard kernel and default to the default study."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from qsmrep import registry
from qsmrep.run.config import Config
from qsmrep.study.plan import study_runs

ROOT = Path(__file__).resolve().parents[1]
#: the reproduction's tools (the ``reproduce`` extra) and what they bring in
TOOLS = ("jupyterlab", "jupyter_server", "jupyter_client", "ipykernel", "IPython", "papermill", "nbconvert", "nbformat",
         "snakemake")
#: import name → distribution name, where they differ
DISTRIBUTIONS = {"skimage": "scikit-image", "yaml": "pyyaml", "jupyter_client": "jupyter-client"}
#: the library's modules that only the reproduction runs (the workflow's job: kernels, papermill), with its extra
WORKFLOW_MODULES = ("qsmrep/study/jobs.py",)


def _third_party_imports(paths) -> set[str]:
    """Top-level names of every module imported in the files ``paths`` (at import time or inside functions) that is
    neither the standard library nor qsmrep."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("qsmrep", "__future__")}


def _requirement_names(items) -> set[str]:
    return {re.split(r"[<>=!~ \[]", item, maxsplit=1)[0].lower() for item in items}


def _distributions(paths) -> set[str]:
    return {DISTRIBUTIONS.get(n, n) for n in _third_party_imports(paths)}


def test_core_dependencies_are_what_the_library_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: _requirement_names(items) for name, items in project["optional-dependencies"].items()}
    core = _requirement_names(project["dependencies"])
    files = sorted((ROOT / "qsmrep").rglob("*.py"))
    bench = [p for p in files if ROOT / "qsmrep" / "bench" in p.parents]
    workflow = [ROOT / name for name in WORKFLOW_MODULES]
    library = [p for p in files if p not in bench and p not in workflow]
    assert _distributions(library) == core
    assert _distributions(bench) <= core | extras["bench"]
    assert _distributions(workflow) <= core | extras["reproduce"]
    assert {"papermill", "snakemake", "nbconvert", "jupyterlab"} <= extras["reproduce"] and not extras["reproduce"] & core


_BLOCKED_RUN = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {tools!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from qsmrep.cli import main
for argv in {commands!r}:
    assert main(argv) == 0, argv
print("loaded:", sorted(set({tools!r}) & {{m.split(".")[0] for m in sys.modules}}))
"""


@pytest.mark.slow
def test_train_phantom_and_predict_run_without_the_reproduction_tools(tmp_path):
    model = tmp_path / "model"
    commands = [["train", "--profile", "smoke", "--epochs", "1", "--channels", "4", "--set", "depth=3", "--out", str(model),
                 "--no-progress"],
                ["phantom", "--out", str(tmp_path / "demo"), "--size", "32", "--units", "hz", "--b0", "3"],
                ["predict", "--checkpoint", str(model / "epoch_001.pt"), "--field", str(tmp_path / "demo" / "field.nii.gz"),
                 "--units", "hz", "--b0", "3", "--mask", str(tmp_path / "demo" / "mask.nii.gz"),
                 "--out", str(tmp_path / "chi.nii.gz"), "--device", "cpu"],
                ["predict", "--method", "tkd", "--field", str(tmp_path / "demo" / "field.nii.gz"), "--units", "hz",
                 "--b0", "3", "--out", str(tmp_path / "tkd.nii.gz")]]
    code = _BLOCKED_RUN.format(tools=TOOLS, commands=commands)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout
    assert (tmp_path / "chi.nii.gz").exists() and json.loads((tmp_path / "tkd.json").read_text())["method"] == "TKD"


def _parameters(path: Path) -> dict:
    """The literal values of a notebook's ``parameters`` cell (``name: type = literal  # comment`` lines)."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {}
    for line in "".join(cell["source"]).splitlines():
        target = ast.parse(line).body[0]
        values[target.target.id] = ast.literal_eval(target.value)
    return values


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_name_the_standard_kernel_and_default_to_the_default_study(path):
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "python3"
    values = _parameters(path)
    default_profile = Config.__dataclass_fields__["profile"].default
    assert values["profile"] == default_profile == "cpu"
    if "arms" in values:
        assert values["arms"] == registry.DEFAULT_ARM
    if "seeds" in values:
        assert values["seeds"] == inspect.signature(study_runs).parameters["seeds"].default
    if "key" in values:
        assert values["key"].startswith(f"runs/{registry.DEFAULT_ARM}/")
