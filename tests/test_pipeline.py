"""The reproduction pipeline: packaging consistency, notebooks, and ./run_all.sh --profile smoke end to end."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from qsmrep import registry
from qsmrep.run.runfolder import RunFolder

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
    """environment.yml is the reproduction's environment: the library's dependencies and every extra, each with
    pyproject's range, or the exact version of the lock (constraints.txt) where it pins one; pins live only there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = _names(project["dependencies"] + [item for extra in project["optional-dependencies"].values() for item in extra])
    lock = _names(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#"))
    assert lock and all("==" in pin for pin in lock.values()) and set(lock) <= set(ranges)
    assert not [item for item in ranges.values() if "==" in item], "exact pins belong in constraints.txt"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _names(pip_section) == {**ranges, **lock}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "Reads" in "".join(cells[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "notebook has outputs"
    for cell in code:  # every cell is valid Python (IPython magics aside)
        ast.parse("\n".join(line for line in "".join(cell["source"]).splitlines() if not line.startswith("%")))
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


def _gpu_overlaps(log: str) -> list[str]:
    """Lines of run_all.sh output where a training started on a GPU that another running training held."""
    holder, overlaps = {}, []
    for line in log.splitlines():
        if match := re.search(r"train (\S+): started on GPU (\d+)", line):
            name, gpu = match.groups()
            if gpu in holder.values():
                overlaps.append(line)
            holder[name] = gpu
        elif match := re.search(r"train (\S+): (finished|diverged|failed)", line):
            holder.pop(match.group(1), None)
    return overlaps


def _two_gpu_env(tmp_path) -> dict:
    """The test's environment: its own virtual environment reused, and an nvidia-smi stub that lists two GPUs."""
    stub = tmp_path / "bin" / "nvidia-smi"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\necho "GPU 0: stub (UUID: GPU-0)"\necho "GPU 1: stub (UUID: GPU-1)"\n')
    stub.chmod(0o755)
    env = {**os.environ, "QSMREP_VENV": sys.prefix,
           "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MPLBACKEND", None)
    return env


def _run_all(project, env, *args, timeout=900):
    result = subprocess.run(["bash", "run_all.sh", "--profile", "smoke", *args], cwd=project, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, result.stdout + result.stderr


def _killed_mid_training(project, env) -> Path:
    """Start run_all.sh and SIGKILL its whole process group once some training has finished 3 epochs, not all."""
    proc = subprocess.Popen(["bash", "run_all.sh", "--profile", "smoke", "--jobs", "2"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = project / "results" / "smoke" / "runs" / registry.DEFAULT_ARM
    deadline = time.monotonic() + 600
    while True:
        assert proc.poll() is None, "run_all.sh ended before it could be killed"
        assert time.monotonic() < deadline, "no training progress"
        partial = [h.parent for h in runs.glob("*/history.csv")
                   if not (h.parent / "DONE.json").exists() and len(h.read_text().splitlines()) >= 4]
        if partial:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(3)  # the notebook kernels (own sessions) notice their dead parent within a second and exit
    return partial[0]


@pytest.mark.slow
def test_run_all_smoke_end_to_end(tmp_path):
    """./run_all.sh --profile smoke --jobs 2 on two (stub) GPUs: killed mid-training and run again with both arms, it
    resumes the interrupted training, trains the other arm, never puts two running trainings on one GPU, and writes
    the report with the arms side by side, the figures and the metric tables; a second run does nothing; touching
    qsmrep/core/metrics.py plans evaluation, figures and report but no training; runs kept without weights and
    restored are not trained again; a failing step exits non-zero, does every step that does not need it (evaluation
    from the restored scores records, equal to the weights' evaluation) and keeps what is finished."""
    project = _copy_project(tmp_path)
    env = _two_gpu_env(tmp_path)
    interrupted = _killed_mid_training(project, env)
    # the resume point is last.pt, written just before history.csv: a kill between the two leaves it one epoch ahead
    epochs_before = RunFolder(interrupted).resume_state()["epoch"]
    assert epochs_before - len(pd.read_csv(interrupted / "history.csv")) in (0, 1)
    first, log = _run_all(project, env, "--jobs", "2", "--arm", "both")
    assert first.returncode == 0, log[-4000:]
    assert not _gpu_overlaps(log)
    assert len(re.findall(r"started on GPU [01]", log)) >= 1
    train_log = (project / "results" / "smoke" / "notebooks" / f"train_runs_{registry.DEFAULT_ARM}_{interrupted.name}.log").read_text()
    assert f"resuming {interrupted} from epoch {epochs_before + 1}" in train_log
    history = pd.read_csv(interrupted / "history.csv")
    assert list(history.epoch) == list(range(1, 11))  # each epoch exactly once
    results, figures = project / "results" / "smoke", project / "figures" / "smoke"
    for n in (1, 2, 3, 4):
        assert list(figures.glob(f"fig{n}_*.png")) and list(figures.glob(f"fig{n}_*.svg")), f"figure {n} missing"
    per_map = pd.read_csv(results / "metrics_per_map.csv")
    assert {"nrmse", "dnrmse", "hfen", "ssim", "xsim", "arm"} <= set(per_map.columns)
    status = pd.read_csv(results / "run_status.csv")
    assert len(status) == 12 and set(status.status) <= {"finished", "diverged"} and set(status.arm) == set(registry.ARMS)
    html = (results / "report.html").read_text()
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", html), "report references the network"
    assert html.count("data:image/png;base64") >= 5, "figures are not embedded"
    for text in ("C1", "C8", "Provenance", "nrmse", "Arm <code>none</code>", "Arm <code>batch</code>",
                 "What normalisation changes", "Which arm is the default", "Figure 2 (none)", "Figure 2 (batch)"):
        assert text in html, text
    assert "Normalisation changes the verdict of" in html  # the side-by-side comparison, not the one-arm note
    summary = pd.read_csv(results / "metrics_summary.csv")
    assert f"{summary.nrmse_mean.iloc[0]:.1f} ±" in html

    second, log = _run_all(project, env, "--arm", "both", timeout=300)
    assert second.returncode == 0, log[-3000:]
    assert "Nothing to be done" in log and "papermill" not in log.lower()

    # the plan only: the failing run at the end executes evaluation and figures over finished trainings
    (project / "qsmrep" / "core" / "metrics.py").touch()
    dry, log = _run_all(project, env, "--arm", "both", "--dry-run", timeout=300)
    assert dry.returncode == 0, log[-3000:]
    planned = set(re.findall(r"^rule (\w+):", log, flags=re.M))
    assert {"evaluate", "figure2", "figure3", "figure4", "report"} <= planned and "train" not in planned, planned

    # runs kept without weights (python -m qsmrep shelve) on a machine that has nothing but the repository: restored,
    # they are not trained again, and the evaluation reads their scores records
    python = str(Path(sys.executable))
    subprocess.run([python, "-m", "qsmrep", "shelve", "--profile", "smoke"], cwd=project, env=env, check=True, timeout=300)
    assert len(list((project / "reference" / "smoke" / "trained").glob("*/*/*/DONE.json"))) == 12
    scored_from_weights = pd.read_csv(results / "metrics_per_map.csv")
    shutil.rmtree(results)
    dry, log = _run_all(project, env, "--arm", "both", "--dry-run", timeout=300)
    assert dry.returncode == 0 and "would restore 12 finished runs" in log and not (results / "runs").exists(), log[-3000:]
    subprocess.run([python, "-m", "qsmrep", "unshelve", "--profile", "smoke", "--arms", "batch,none"], cwd=project,
                   env=env, check=True, timeout=300)
    dry, log = _run_all(project, env, "--arm", "both", "--dry-run", timeout=300)
    planned = set(re.findall(r"^rule (\w+):", log, flags=re.M))
    assert dry.returncode == 0 and "evaluate" in planned and "train" not in planned, log[-3000:]
    assert not list(results.rglob("*.pt"))

    # a step that fails (Figure 2): non-zero exit, every step that does not need it is done and kept; the evaluation
    # of the restored runs, read from their scores records, gives the tables their weights gave
    notebook = project / "notebooks" / "21_fig2_convergence.ipynb"
    notebook.write_text(notebook.read_text().replace("from qsmrep.study.figures import", "raise RuntimeError('boom')\\nfrom qsmrep.study.figures import"))
    before = time.time()
    failed, log = _run_all(project, env, "--arm", "both", timeout=600)
    assert failed.returncode != 0 and "some steps failed" in log and "boom" in log, log[-3000:]
    assert len(list((results / "runs").glob("*/*/DONE.json"))) == 12 and not list(results.rglob("*.pt"))
    assert "started" not in log  # no training
    for n in (3, 4):
        drawn = list(figures.glob(f"fig{n}_*.png"))
        assert drawn and min(p.stat().st_mtime for p in drawn) > before, f"figure {n} not drawn again"
    assert not (results / "report.html").exists()  # the report needs Figure 2
    scored_from_records = pd.read_csv(results / "metrics_per_map.csv")
    pd.testing.assert_frame_equal(scored_from_records, scored_from_weights, check_exact=False, rtol=1e-6)


@pytest.mark.slow
def test_sittings_keep_each_finished_training_and_resume_from_the_shelf(tmp_path):
    """scripts/train_sitting.sh on the smoke study (six trainings, two at a time), cut off (SIGKILL) once a training
    is on the shelf, then started on a 'new machine' (results/ gone) with three threads per training: it restores what
    was kept and plans only the rest, the widest first (that sitting is stopped there: the trainings themselves are
    the end-to-end test's)."""
    project, env = _copy_project(tmp_path), _two_gpu_env(tmp_path)
    shelf, results = project / "reference" / "smoke" / "trained", project / "results" / "smoke"
    sitting = ["bash", "scripts/train_sitting.sh", "--profile", "smoke", "--arm", "batch", "--jobs", "2"]

    def start(*options):
        return subprocess.Popen(sitting + list(options), cwd=project, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def stop(process):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        time.sleep(3)  # the notebook kernels (own sessions) notice their dead parent and exit

    first, deadline = start(), time.time() + 600
    while not list(shelf.glob("runs/batch/*/DONE.json")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    stop(first)
    kept = sorted(p.parent.name for p in shelf.glob("runs/batch/*/DONE.json"))
    assert 1 <= len(kept) < 6 and not list(shelf.rglob("*.pt")), kept
    assert len(kept) > 3 or all(name.endswith("32_s0") for name in kept), kept  # the widest first
    assert len(list(shelf.rglob("scores_*.json"))) == 2 * len(kept)  # early and final checkpoint of each

    shutil.rmtree(results)
    second, log = start("--threads", "3"), ""  # not the default, nproc / --jobs, on any machine
    for line in second.stdout:
        log += line
        if "threads per training" in line:
            break
    stop(second)
    assert f"restored {len(kept)} finished runs" in log and "threads per training: 3 (" in log, log
    planned = re.search(r"trainings to do, 2 at a time: (.*)", log).group(1).split()
    assert len(planned) == 6 - len(kept) and not {f"runs/batch/{name}" for name in kept} & set(planned), planned
    assert [int(re.search(r"(\d+)_s0$", key).group(1)) for key in planned] == sorted(
        (int(re.search(r"(\d+)_s0$", key).group(1)) for key in planned), reverse=True)
    assert sorted(p.parent.name for p in results.glob("runs/batch/*/DONE.json")) == kept  # restored as finished


def test_gpu_overlap_detector():
    ok = "train a: started on GPU 0\ntrain b: started on GPU 1\ntrain a: finished in 1 s\n" \
         "train c: started on GPU 0"
    assert _gpu_overlaps(ok) == []
    clash = "train a: started on GPU 0\ntrain b: started on GPU 1\ntrain b: diverged in 1 s\n" \
            "train c: started on GPU 0"
    assert _gpu_overlaps(clash) == ["train c: started on GPU 0"]


def test_gpu_slots_are_exclusive(tmp_path):
    """The lock behind one-GPU-per-training: while two jobs hold GPUs 0 and 1, a third waits for one to free."""
    import threading

    from qsmrep.study.jobs import gpu_slot

    taken, release = [], threading.Event()

    def job():
        with gpu_slot(tmp_path, 2, poll_seconds=0.05) as gpu:
            taken.append(gpu)
            release.wait(5)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    while len(taken) < 2:
        time.sleep(0.01)
    assert sorted(taken) == [0, 1]
    third = threading.Thread(target=job)
    third.start()
    time.sleep(0.3)
    assert len(taken) == 2  # waiting
    release.set()
    for t in (*threads, third):
        t.join(5)
    assert len(taken) == 3 and taken[2] in (0, 1)
    with gpu_slot(tmp_path, 0) as none:
        assert none is None


def test_run_all_is_short_and_no_list_of_the_variants_lives_outside_the_registry():
    assert len((ROOT / "run_all.sh").read_text().splitlines()) < 60
    names = r"""["']?\b(relu|leaky_relu|elu)\b["']?"""
    pattern = rf"{names}[^\n]{{0,12}}{names}[^\n]{{0,12}}{names}|\b16, 32\b|\b16 32\b|relu leaky_relu elu"
    found = subprocess.run(["git", "grep", "-n", "-P", pattern, "--", "qsmrep", "workflow", "run_all.sh", "notebooks"],
                           cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in found.stdout.splitlines() if not line.startswith("qsmrep/registry.py:")]
    assert not lines, lines


def test_run_all_rejects_bad_options():
    for args, word in ((["--profile", "cpux"], "cpux"), (["--jobs", "0"], "--jobs"), (["--bogus"], "--bogus"),
                       (["--arm", "bn"], "arm"), (["--seeds", "x"], "--seeds"), (["--profile"], "--profile"),
                       (["--widths", "24"], "widths")):
        result = subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and word in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def _source_ensure_env(tmp_path, python: str, then: str) -> subprocess.CompletedProcess:
    """Source a copy of scripts/ensure_env.sh (in ``tmp_path/project``) with QSMREP_NO_INSTALL=1 and ``python``, then
    run the shell line ``then``."""
    script = tmp_path / "project" / "scripts" / "ensure_env.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "scripts" / "ensure_env.sh", script)
    env = {**os.environ, "QSMREP_NO_INSTALL": "1", "QSMREP_PYTHON": python, "QSMREP_VENV": str(tmp_path / "venv"),
           "HOME": str(tmp_path / "home")}
    env.pop("JUPYTER_PATH", None)
    return subprocess.run(["bash", "-c", f'source "{script}" && {then}'], env=env,
                          capture_output=True, text=True, timeout=120)


def test_no_install_mode_runs_the_given_python_with_a_kernel_in_the_checkout(tmp_path):
    """The lent GPU machine's way (its own torch, no internet): no venv, no pip; the notebooks' kernel "qsmrep" is
    that interpreter, registered inside the checkout (where a cluster's nodes see it too: not in a temporary folder
    of the submitting machine, not in the user's Jupyter dirs)."""
    result = _source_ensure_env(tmp_path, sys.executable, 'echo "PY=$PY"; "$PY" -m jupyter kernelspec list --json')
    assert result.returncode == 0, result.stderr
    assert f"PY={sys.executable}" in result.stdout.splitlines()
    specs = json.loads(result.stdout[result.stdout.index("{"):])["kernelspecs"]
    kernel = specs["qsmrep"]
    assert kernel["spec"]["argv"][0] == sys.executable
    assert Path(kernel["resource_dir"]).is_relative_to(tmp_path / "project" / ".jupyter")
    assert not (tmp_path / "venv").exists() and not list((tmp_path / "home").rglob("kernels"))


def test_no_install_mode_names_what_the_python_lacks(tmp_path):
    bare = tmp_path / "bare-python"  # the same interpreter without site-packages: no torch, no snakemake
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    result = _source_ensure_env(tmp_path, str(bare), "echo reached")
    assert result.returncode == 2 and "reached" not in result.stdout
    assert "lacks:" in result.stderr and "torch" in result.stderr.split("lacks:")[1]
    assert not (tmp_path / "venv").exists()


def test_workflow_training_reports_its_epochs(tmp_path, capsys):
    """While a training runs, the workflow console gets its newest finished epoch (not only started/finished)."""
    from qsmrep.run.runfolder import HISTORY_COLUMNS, RunFolder
    from qsmrep.study.jobs import _wait_reporting

    folder = RunFolder(tmp_path)
    rows = [dict.fromkeys(HISTORY_COLUMNS, 0.0) | {"epoch": e, "val_nrmse": 50.0 - e} for e in (1, 2)]
    writer = ("import sys, time; from qsmrep.run.runfolder import RunFolder; import json; rows = json.loads(sys.argv[2]); "
              "time.sleep(0.6); RunFolder(sys.argv[1]).write_history(rows[:1]); time.sleep(0.6); "
              "RunFolder(sys.argv[1]).write_history(rows); time.sleep(0.6); sys.exit(3)")
    process = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path), json.dumps(rows)])
    assert _wait_reporting(process, "runs/batch/elu16_s0", folder, epochs=10, every_seconds=0.25) == 3
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "train runs/batch/elu16_s0: epoch 1/10, val NRMSE 49.0 %" in lines
    assert "train runs/batch/elu16_s0: epoch 2/10, val NRMSE 48.0 %" in lines
    assert len(lines) == 2  # each epoch once


def _dry_run_jobs(tmp_path) -> list[dict]:
    """The smoke study's jobs as a Snakemake dry run plans them: rule, resources and shell command of each."""
    project = _copy_project(tmp_path)
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", "workflow/Snakefile", "--directory", ".",
                             "--cores", "2", "--dry-run", "--printshellcmds", "--config", "profile=smoke",
                             "arms=batch,none"], cwd=project, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout)[1:]:
        resources = re.search(r"resources: (.*)", block)
        command = re.search(r"^Shell command: (.*)", block, flags=re.M)
        wildcards = re.search(r"wildcards: (.*)", block)
        jobs.append({"rule": re.match(r"(?:local)?rule (\w+):", block).group(1),
                     "resources": dict(re.findall(r"(\w+)=([^,\s]+)", resources.group(1))) if resources else {},
                     "wildcards": wildcards.group(1) if wildcards else "", "shell": command.group(1) if command else ""})
    return jobs


def test_every_step_names_its_interpreter_and_asks_for_memory_and_time(tmp_path):
    """Every step runs the workflow's own interpreter (not a "python" from PATH) and declares mem_mb and runtime; the
    trainings ask for more (SLURM reads mem_mb as MiB) than sacct measured on a one-node SLURM cluster at the smoke
    profile (the job's Snakemake and its step together: 16 channels ≤ 1730 MiB, 32 channels ≤ 2405 MiB), and so
    does evaluation (≤ 1408 MiB)."""
    jobs = [job for job in _dry_run_jobs(tmp_path) if job["rule"] != "all"]
    assert {job["rule"] for job in jobs} == {"data", "train", "evaluate", "figure1", "figure2", "figure3", "figure4", "report"}
    for job in jobs:
        assert job["shell"].startswith(f"{sys.executable} -m "), job["shell"]
        assert not re.search(r"(^|[;&|(] *)python3? ", job["shell"]), job["shell"]
        assert int(job["resources"]["mem_mb"]) > 0 and int(job["resources"]["runtime"]) > 0, job
        assert job["resources"].get("gpu", "0") == "0"  # no GPU for the CPU-sized smoke profile
    memory = {job["wildcards"]: int(job["resources"]["mem_mb"]) for job in jobs if job["rule"] == "train"}
    assert len(memory) == 12
    for name, mib in memory.items():
        assert mib > (2405 if "32_s" in name else 1730), (name, mib)
    evaluation = next(job for job in jobs if job["rule"] == "evaluate")
    assert int(evaluation["resources"]["mem_mb"]) > 1408


def test_notebook_steps_find_the_kernel_of_their_own_interpreter(tmp_path, monkeypatch):
    """A kernel "qsmrep" of another interpreter in the user's Jupyter folder does not capture the workflow's steps:
    the interpreter's own one (``<prefix>/share/jupyter``) comes first; without one, a one-line error names both."""
    from qsmrep.study.jobs import KERNEL, use_own_kernel

    def kernel(folder: Path, python: str) -> Path:
        spec = folder / "share" / "jupyter" / "kernels" / KERNEL
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                      "display_name": "x", "language": "python"}))
        return spec

    decoy = kernel(tmp_path / "user", "/opt/other/bin/python")
    monkeypatch.setenv("JUPYTER_PATH", str(decoy.parents[1]))
    own = kernel(tmp_path / "venv", str(tmp_path / "venv" / "bin" / "python"))
    assert use_own_kernel(str(tmp_path / "venv" / "bin" / "python"), str(tmp_path / "venv")) == own
    monkeypatch.setenv("JUPYTER_PATH", str(decoy.parents[1]))
    with pytest.raises(ValueError, match="starts /opt/other/bin/python"):
        use_own_kernel(str(tmp_path / "bare" / "bin" / "python"), str(tmp_path / "bare"))


def _slurm_daemons() -> set[int]:
    """PIDs of the processes a SLURM cluster of this machine runs (munge, MariaDB, the SLURM daemons and job steps)."""
    names = {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmstepd"}
    return {int(p.parent.name) for p in Path("/proc").glob("[0-9]*/comm") if p.exists() and
            _read(p) in names}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:  # the process ended meanwhile
        return ""


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("QSMREP_SLURM_TEST") != "1",
                    reason="builds a one-node SLURM cluster (root, apt-get; ~12 min): set QSMREP_SLURM_TEST=1")
def test_study_on_a_one_node_slurm_cluster(tmp_path):
    """scripts/slurm_local.sh from a copy of the project (what a clone holds): every check passes (the smoke study as
    SLURM jobs with memory requests above their peaks and time limits, a cancelled training fails the workflow
    promptly and the same command resumes it, a rerun does nothing), and no daemon of its own is left running."""
    project = _copy_project(tmp_path)
    before = _slurm_daemons()
    result = subprocess.run(["bash", "scripts/slurm_local.sh"], cwd=project, capture_output=True, text=True,
                            timeout=2400, env={**os.environ, "QSMREP_VENV": sys.prefix})
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "FAIL" not in log, log[-5000:]
    assert len(re.findall(r"^ok    ", log, flags=re.M)) == 8, log[-5000:]
    assert "none is left" in log and _slurm_daemons() <= before
