"""The reproduction pipeline: packaging consistency, notebooks, and ./run_all.sh --profile smoke end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _names(requirements) -> dict[str, str]:
    out = {}
    for item in requirements:
        if item.startswith("-e"):
            continue
        name = re.split(r"[<>=!~ \[]", item, maxsplit=1)[0].lower()
        out[name] = item.replace(" ", "")
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = _names(project["dependencies"] + extras["test"] + extras["bench"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _names(pip_section) == wanted


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "Reads" in "".join(cells[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "notebook has outputs"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    for line in "".join(params[0]["source"]).splitlines():
        assert re.match(r"^\w+: \w+ = .+  # .+", line), f"parameter line needs a type and a comment: {line!r}"
        assert line.count("=") == 1, f"papermill cannot parse a second '=' (e.g. in the comment): {line!r}"


def _copy_project(tmp_path: Path) -> Path:
    """A copy of the tracked project files (what a clean clone holds) plus the working-tree versions."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    dest = tmp_path / "project"
    for name in files:
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
def _gpu_overlaps(log: str) -> list[str]:
    """Lines of run_all.sh output where a variant started on a GPU that another running variant held."""
    holder, overlaps = {}, []
    for line in log.splitlines():
        if match := re.search(r"train (\S+ seed \d+): started on GPU (\d+)", line):
            name, gpu = match.groups()
            if gpu in holder.values():
                overlaps.append(line)
            holder[name] = gpu
        elif match := re.search(r"train (\S+ seed \d+): (done|failed)", line):
            holder.pop(match.group(1), None)
    return overlaps


@pytest.mark.slow
def test_run_all_smoke_end_to_end(tmp_path):
    """./run_all.sh --profile smoke --jobs 2 writes the report, four figures and the metric CSV, never puts two
    running variants on one GPU (two GPUs faked by an nvidia-smi stub); a second run skips everything."""
    project = _copy_project(tmp_path)
    stub = tmp_path / "bin" / "nvidia-smi"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "GPU 0: stub (UUID: GPU-0)"\necho "GPU 1: stub (UUID: GPU-1)"\n')
    stub.chmod(0o755)
    env = {**os.environ, "QSMREP_VENV": str(Path(sys.executable).resolve().parents[1]),
           "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MPLBACKEND", None)
    first = subprocess.run(["bash", "run_all.sh", "--profile", "smoke", "--jobs", "2"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert len(re.findall(r"started on GPU [01]", first.stdout)) == 6
    assert not _gpu_overlaps(first.stdout)
    results, figures = project / "results" / "smoke", project / "figures" / "smoke"
    for n in (1, 2, 3, 4):
        assert list(figures.glob(f"fig{n}_*.png")) and list(figures.glob(f"fig{n}_*.svg")), f"figure {n} missing"
    per_map = pd.read_csv(results / "metrics_per_map.csv")
    assert {"nrmse", "dnrmse", "hfen", "ssim", "xsim"} <= set(per_map.columns)
    assert set(per_map.model) >= {"relu16", "leaky_relu16", "elu16", "relu32", "leaky_relu32", "elu32", "TKD", "Tikhonov"}
    html = (results / "report.html").read_text()
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", html), "report references the network"
    assert html.count("data:image/png;base64") >= 5, "figures are not embedded"
    for text in ("C1", "C8", "Provenance", "reproduced", "nrmse"):
        assert text in html
    # every number of the committed tables appears in the report (it renders these CSVs)
    summary = pd.read_csv(results / "metrics_summary.csv")
    assert f"{summary.nrmse_mean.iloc[0]:.1f} ±" in html

    started = time.monotonic()
    second = subprocess.run(["bash", "run_all.sh", "--profile", "smoke"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "0 to do" in second.stdout and "papermill" not in second.stderr.lower()


def test_gpu_overlap_detector():
    ok = "train a seed 0: started on GPU 0\ntrain b seed 0: started on GPU 1\ntrain a seed 0: done in 1 s\n" \
         "train c seed 0: started on GPU 0"
    assert _gpu_overlaps(ok) == []
    clash = "train a seed 0: started on GPU 0\ntrain b seed 0: started on GPU 1\ntrain b seed 0: done in 1 s\n" \
            "train c seed 0: started on GPU 0"
    assert _gpu_overlaps(clash) == ["train c seed 0: started on GPU 0"]


def test_run_all_rejects_bad_options():
    for args, word in ((["--profile", "cpux"], "cpux"), (["--jobs", "0"], "--jobs"), (["--bogus"], "--bogus")):
        result = subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and word in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
