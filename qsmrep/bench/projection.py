"""The wall time of ``./run_all.sh --profile paper`` projected from measured rows (:mod:`qsmrep.bench.paper`).

Per variant (one seed, one arm), from its own rows:

    epoch      = iterations · (step + data) + validation          step: its ``train_step`` row (default setting);
                                                                  data: iteration with data − bare step (``data_path``)
    training   = epochs · epoch + n_val · render                  the validation maps rendered once
    evaluation = checkpoints · ((2 · n_test + 1) · score          early and final checkpoint; the noise-free and the
                                + n_test · noise)                 noisy test maps and the phantom; score: seconds per
                                                                  map (inference and the five device metrics); noise:
                                                                  making a noisy test map

and once for the study: the test maps rendered (n_test · render), the two baselines scored like a checkpoint,
their parameter search on the CPU (:mod:`qsmrep.run.baselines`: every grid value on the first validation maps,
noise-free and noisy), and the figure and report steps as the committed reference (:data:`REPORT_REFERENCE`) measured
them (its ``benchmarks/``; they draw slices and tables, which the map size changes little). Rows: ``validation_fraction`` (validation
seconds per epoch over the epoch, per variant; target ≤ :data:`VALIDATION_TARGET` for every variant) and
``projection`` (hours; target ≤ :data:`PROJECTION_TARGET_HOURS` on one H100/H200).
"""

from __future__ import annotations

import csv
from pathlib import Path

from qsmrep.run import baselines
from qsmrep.run.config import Config
from qsmrep.study.plan import reference_dir, results_dir

VALIDATION_TARGET, PROJECTION_TARGET_HOURS = 0.15, 6.0
#: checkpoints evaluated per variant (the early one and the final one)
CHECKPOINTS = 2
#: the Snakemake steps of the report (figures, tables, the HTML) whose committed times are reused
REPORT_STEPS = ("data", "figure1", "figure2", "figure3", "figure4", "report")
#: the profile of the committed reference whose report steps are reused (both arms, three seeds)
REPORT_REFERENCE = "cpu-long"


def report_seconds(folder: str | Path | None = None) -> float | None:
    """Sum of the latest benchmark seconds of :data:`REPORT_STEPS` in ``folder`` (default: the committed
    reference's, ``reference/cpu-long/benchmarks``, or ``results/cpu-long/benchmarks`` where the reference is not
    there); None where one is missing."""
    if folder is None:
        folder = reference_dir(REPORT_REFERENCE) / "benchmarks"
        folder = folder if folder.is_dir() else results_dir(REPORT_REFERENCE) / "benchmarks"
    folder = Path(folder)
    total = 0.0
    for step in REPORT_STEPS:
        path = folder / f"{step}.tsv"
        if not path.exists():
            return None
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
        if not rows:
            return None
        total += float(rows[-1]["s"])
    return total


def baseline_search_count(config: Config) -> int:
    """Inversions (each scored by NRMSE) of the baselines' search of one evaluation: both test sets."""
    maps = min(config.n_val, baselines.TUNE_MAPS)
    return 2 * maps * sum(len(grid) for grid in baselines.GRIDS.values())


def _by_variant(rows: list[dict], case: str) -> dict[str, dict]:
    return {r["variant"]: r for r in rows if r.get("case") == case and not r.get("error") and r.get("variant")}


def _scoring_seconds(config: Config, per_map: float, noise: float) -> float:
    """Seconds of scoring one model: the noise-free and the noisy test maps and the phantom."""
    return (2 * config.n_test + 1) * per_map + config.n_test * noise


def _variant_hours(config: Config, step: float, extra: float, val: dict, score: dict, noise: float) -> dict:
    epoch = config.iterations * (step + max(extra, 0.0)) + val["seconds_per_epoch"]
    training = config.epochs * epoch + val["render_seconds_per_map"] * config.n_val
    evaluation = CHECKPOINTS * _scoring_seconds(config, score["seconds_per_map"], noise)
    return {"epoch_seconds": epoch, "validation_fraction": val["seconds_per_epoch"] / epoch,
            "training_hours": training / 3600, "validation_hours": config.epochs * val["seconds_per_epoch"] / 3600,
            "evaluation_hours": evaluation / 3600, "hours": (training + evaluation) / 3600}


def projection_rows(profile: str, rows: list[dict], report_folder: str | Path | None = None) -> list[dict]:
    """``validation_fraction`` and ``projection`` rows from ``rows`` (``train_step`` rows of the default setting,
    ``data_path``, ``validation``, ``evaluation`` rows per variant and the ``evaluation_shared`` row); an error
    row naming what is missing instead."""
    config = Config.from_profile(profile)
    steps = {v: r["seconds_per_iter"] for v, r in _by_variant(
        [r for r in rows if r.get("default_setting") and not r.get("cudnn_benchmark")], "train_step").items()}
    data = next((r for r in rows if r.get("case") == "data_path" and not r.get("error")), None)
    shared = next((r for r in rows if r.get("case") == "evaluation_shared" and not r.get("error")), None)
    val, score = _by_variant(rows, "validation"), _by_variant(rows, "evaluation")
    missing = [v for v in steps if v not in val or v not in score] + [n for n, r in (("data_path", data),
                                                                                      ("evaluation_shared", shared)) if r is None]
    if not steps or missing:
        return [{"case": "projection", "error": f"missing rows: {', '.join(missing) or 'train_step'}"}]
    extra = data["seconds_per_iter"] - data["bare_seconds_per_iter"]
    noise = shared["noise_seconds_per_map"]
    variants = {v: _variant_hours(config, s, extra, val[v], score[v], noise) for v, s in steps.items()}
    report = report_seconds(report_folder) or 0.0
    render = next(iter(val.values()))["render_seconds_per_map"]
    scored = len(baselines.GRIDS) * _scoring_seconds(config, shared["baseline_seconds_per_map"], noise)
    shared_seconds = config.n_test * render + scored + shared["baseline_search_seconds"] + report
    total = sum(v["hours"] for v in variants.values()) + shared_seconds / 3600
    worst = max(v["validation_fraction"] for v in variants.values())
    return [{"case": "validation_fraction", "value": worst, "figure": "validation_fraction",
             "per_variant": {v: h["validation_fraction"] for v, h in variants.items()},
             "unit": "fraction of the epoch (largest over the variants)", "target": VALIDATION_TARGET,
             "meets_target": worst <= VALIDATION_TARGET},
            {"case": "projection", "value": total, "figure": "paper_wall_time", "variants": len(variants),
             "per_variant": variants, "shared_hours": shared_seconds / 3600, "report_seconds": report,
             "baseline_search_seconds": shared["baseline_search_seconds"],
             "unit": "hours (./run_all.sh --profile paper: training, validation, evaluation, report; one seed, one arm)",
             "target": PROJECTION_TARGET_HOURS, "meets_target": total <= PROJECTION_TARGET_HOURS}]
