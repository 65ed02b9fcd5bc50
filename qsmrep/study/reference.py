"""The committed reference of a profile, ``reference/<profile>/``: the one command that publishes a finished study
into it, and what it (or a run's own evaluation) says about a model a user applies.

User runs write ``results/<profile>/`` and ``figures/<profile>/``, both git-ignored, so no run changes a tracked
file. The reference changes only through :func:`publish` (``python -m qsmrep publish-reference --profile P``) and
its ``trained/`` through :func:`qsmrep.study.shelf.shelve` (``python -m qsmrep shelve``): publish
copies a finished study's tables (``results/<profile>/*.csv``), step benchmarks (``benchmarks/``), report
(``report.html``) and figures (``figures/<profile>/*.png|svg`` → ``figures/``) into ``reference/<profile>/``,
replacing what was there but the runs kept without weights (``trained/``, :mod:`qsmrep.study.shelf`), and writes
``PROVENANCE.json``: the publishing commit, the date, the commits the runs
were trained at, the runs by status, and a SHA-256 of every file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd

from qsmrep.run.config import EXECUTION_FIELDS, Config
from qsmrep.run.gitinfo import code_commit
from qsmrep.study.collect import trained_commits
from qsmrep.study.plan import STUDY_CONFIG, RunSpec, checkpoint_label, figures_dir, reference_dir, results_dir
from qsmrep.study.shelf import SHELF

#: what a finished study has written before it can be published
REQUIRED = ("report.html", "metrics_per_map.csv", "metrics_summary.csv", "histories.csv", "run_status.csv")
PROVENANCE = "PROVENANCE.json"


def _files_to_publish(profile: str, root) -> dict[str, Path]:
    """Relative name in the reference → source file."""
    results, figures = results_dir(profile, root), figures_dir(profile, root)
    chosen = {p.name: p for p in sorted(results.glob("*.csv"))}
    if (results / STUDY_CONFIG).is_file():
        chosen[STUDY_CONFIG] = results / STUDY_CONFIG
    chosen["report.html"] = results / "report.html"
    chosen.update({str(p.relative_to(results)): p for p in sorted((results / "benchmarks").rglob("*.tsv"))})
    chosen.update({f"figures/{p.name}": p for p in sorted(figures.glob("*")) if p.suffix in (".png", ".svg")})
    return chosen


def _check_finished(profile: str, root) -> None:
    """ValueError unless the study's required outputs exist and the report is newer than every table."""
    results = results_dir(profile, root)
    for name in REQUIRED:
        if not (results / name).is_file():
            raise ValueError(f"publish: {results / name} is missing; finish the study first (./run_all.sh --profile {profile})")
    report_time = (results / "report.html").stat().st_mtime
    newer = [p.name for p in results.glob("*.csv") if p.stat().st_mtime > report_time]
    if newer:
        raise ValueError(f"publish: {newer[0]} is newer than report.html; run ./run_all.sh --profile {profile} again "
                         "so that the report shows it")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(profile: str, root: str | Path | None = None) -> Path:
    """Replace ``reference/<profile>/`` by the finished study of ``results/<profile>/`` and ``figures/<profile>/``
    (see the module docstring); returns the reference folder. The swap is two renames, so a failure leaves the
    old reference or the new one, never a mixture."""
    from qsmrep.run import files

    Config.from_profile(profile)
    _check_finished(profile, root)
    target = reference_dir(profile, root)
    staging, old = target.with_name(f".{profile}.publishing"), target.with_name(f".{profile}.old")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    chosen = _files_to_publish(profile, root)
    for name, source in chosen.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staging / name)
    if (target / SHELF).is_dir():  # the runs kept without weights (qsmrep.study.shelf) stay with the reference
        shutil.copytree(target / SHELF, staging / SHELF)
    status = pd.read_csv(results_dir(profile, root) / "run_status.csv")
    files.write_json(staging / PROVENANCE, {
        "profile": profile, "published": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "published_at_commit": code_commit(root), "trained_at_commits": trained_commits(profile, root),
        "runs": {str(k): int(v) for k, v in status.groupby("status").size().items()},
        "arms": sorted(str(a) for a in status.arm.unique()) if "arm" in status else [],
        "source": [f"results/{profile}", f"figures/{profile}"],
        "sha256": {name: _sha256(staging / name) for name in chosen}})
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


#: the fields that make one variant, arm and seed of a study (the rest is the study's scale and recipe)
_RUN_FIELDS = {"activation", "activation_params", "initial_channels", "seed", "norm"}


def _trained_as_reference(config: Config, root: str | Path | None = None) -> bool:
    """True when ``config`` is the committed reference's own configuration of its variant, arm and seed (a model
    trained as the reference's were, so that the reference's test NRMSE of that variant describes it): the
    reference's recipe and scale from its ``study_config.yaml`` (the profile as it was when the reference was
    trained, which may differ from today's), the run's fields from the study plan; where and how it ran (device,
    precision, memory format, compile, workers: resolved when a run starts) aside."""
    made_with = reference_dir(config.profile, root) / STUDY_CONFIG
    scale = Config.load(made_with).to_dict() if made_with.is_file() else {}
    skip = {*EXECUTION_FIELDS, "device", "data_device", "precision", "memory_format"}
    try:
        study = RunSpec(config.profile, "runs", config.arm, config.activation, config.initial_channels,
                        config.seed).config(**{k: v for k, v in scale.items() if k not in skip | _RUN_FIELDS | {"profile"}},
                                            activation_params=config.activation_params)
    except ValueError:
        return False
    return {k: v for k, v in study.to_dict().items() if k not in skip} == \
        {k: v for k, v in config.to_dict().items() if k not in skip}


def known_test_metrics(checkpoint: str | Path, config: Config, epoch: int, root: str | Path | None = None) -> dict:
    """What the metric tables say about a checkpoint: ``test_nrmse_percent`` and ``test_table`` where the study that
    holds it (``results/<profile>/<kind>/<arm>/<name>/``) evaluated it after it was written; and, for a model trained
    as the reference's, ``reference_test_nrmse_percent`` (mean over the reference's seeds and test maps of that
    variant, arm and epoch), ``reference_seeds`` and ``reference_table``. Empty where nothing is known."""
    notes: dict = {}
    path = Path(checkpoint).resolve()
    results = results_dir(config.profile, root).resolve()
    table = results / "metrics_per_map.csv"
    if len(path.parents) > 3 and path.parents[3] == results and table.is_file() \
            and table.stat().st_mtime >= path.stat().st_mtime:
        rows = pd.read_csv(table)
        rows = rows[rows.label == checkpoint_label(config.arm, path.parent.name, epoch)]
        if len(rows):
            notes.update(test_nrmse_percent=float(rows.nrmse.mean()), test_table=str(table))
    reference = reference_dir(config.profile, root) / "metrics_per_map.csv"
    if reference.is_file() and _trained_as_reference(config, root):
        rows = pd.read_csv(reference)
        rows = rows[(rows.arm == config.arm) & (rows.model == config.variant) & (rows.epoch == epoch)]
        if len(rows):
            notes.update(reference_test_nrmse_percent=float(rows.nrmse.mean()), reference_seeds=int(rows.seed.nunique()),
                         reference_table=str(reference))
    return notes
