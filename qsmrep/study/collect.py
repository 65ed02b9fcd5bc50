"""Tables across the runs of a study, found on disk: histories, run status, divergences, costs, and
the checkpoints to evaluate. Each table function writes its CSV into ``results/<profile>/`` unless
``write=False``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qsmrep.core.unet import UNet3D, count_parameters
from qsmrep.run import files, scores
from qsmrep.run.config import Config
from qsmrep.run.runfolder import DIVERGED, RunFolder
from qsmrep.study.curves import BLOWUP_NRMSE, end_level, epochs_to_reach
from qsmrep.study.estimate import training_memory_bytes
from qsmrep.study.plan import KINDS, checkpoint_label, results_dir


def list_runs(profile: str, root: str | Path | None = None, kind: str = "runs") -> list[tuple[Config, RunFolder]]:
    """(config, run folder) of every folder of ``kind`` (:data:`qsmrep.study.plan.KINDS`) that holds a config,
    sorted by arm and name."""
    runs = []
    for path in sorted((results_dir(profile, root) / kind).glob("*/*_s*")):
        folder = RunFolder(path)
        config = folder.config()
        if config is not None:
            runs.append((config, folder))
    return runs


def trained_commits(profile: str, root: str | Path | None = None) -> dict[str, list[str]]:
    """Commits at which the finished runs of each kind were trained (started, resumed and finished:
    :meth:`~qsmrep.run.runfolder.RunFolder.commits`), by kind, sorted."""
    commits = {}
    for kind in KINDS:
        found = {c for _, folder in list_runs(profile, root, kind) if folder.done() for c in folder.commits()}
        if found:
            commits[kind] = sorted(found)
    return commits


def labels(config: Config) -> dict:
    """The columns that name a run in every table: arm, activation, channels, seed."""
    return {"arm": config.arm, "activation": config.activation, "channels": config.initial_channels, "seed": config.seed}


def divergence_of(history: pd.DataFrame, done: dict) -> dict:
    """How a run diverged, if it did: ``kind`` ``non-finite`` (training stopped on a NaN/Inf loss or gradient)
    or ``validation`` (training finite, but the end level of the validation NRMSE, the median over the last
    20 % of epochs, above :data:`~qsmrep.study.curves.BLOWUP_NRMSE`: the model became far worse than predicting
    zero), the epoch it happened (for ``validation``: the first epoch above the threshold) and the last finite
    values before it."""
    if done.get("status") == DIVERGED:
        last = done.get("last_finite", {})
        return {"diverged_kind": "non-finite", "diverged_epoch": done.get("epoch"), "diverged_iteration": done.get("iteration"),
                "last_finite_train_loss": last.get("train_loss"), "last_finite_val_nrmse": last.get("val_nrmse")}
    curve = history.sort_values("epoch")
    if len(curve) and end_level(curve["val_nrmse"]) > BLOWUP_NRMSE:
        first = int(curve.loc[curve.val_nrmse > BLOWUP_NRMSE, "epoch"].iloc[0])
        before = curve[curve.epoch < first]
        return {"diverged_kind": "validation", "diverged_epoch": first, "diverged_iteration": None,
                "last_finite_train_loss": float(before.train_loss.iloc[-1]) if len(before) else None,
                "last_finite_val_nrmse": float(before.val_nrmse.iloc[-1]) if len(before) else None}
    return {"diverged_kind": "", "diverged_epoch": None, "diverged_iteration": None, "last_finite_train_loss": None,
            "last_finite_val_nrmse": None}


def _write(table: pd.DataFrame, profile: str, root, name: str, write: bool) -> pd.DataFrame:
    if write and len(table):
        files.write_text(results_dir(profile, root) / name, table.to_csv(index=False))
    return table


def run_status_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """One row per run: arm, variant, seed, status (finished, diverged, partial), precision and memory format
    used, and, where it diverged (:func:`divergence_of`), how, at which epoch, and the last values before."""
    rows = []
    for config, folder in list_runs(profile, root):
        done = folder.done() or {}
        rows.append({**labels(config), "status": folder.status(), "precision": config.precision,
                     "memory_format": config.memory_format, "grad_clip": config.grad_clip,
                     **divergence_of(folder.history(), done), "trained_at_commit": " ".join(folder.commits()) if done else ""})
    return _write(pd.DataFrame(rows), profile, root, "run_status.csv", write)


#: the history table of each kind of run (the evaluate step writes them; the report reads them)
HISTORY_TABLES = {"runs": "histories.csv", "guard": "guard_histories.csv", "clip": "clip_histories.csv"}


def collect_histories(profile: str, root: str | Path | None = None, write: bool = True, kind: str = "runs") -> pd.DataFrame:
    """All runs' histories of ``kind`` in one table with arm, activation, channels, seed and status columns
    (written to :data:`HISTORY_TABLES` [kind])."""
    frames = []
    for config, folder in list_runs(profile, root, kind):
        frame = folder.history()
        if len(frame):
            frames.append(frame.assign(**labels(config), status=folder.status(), precision=config.precision,
                                       diverged=bool(divergence_of(frame, folder.done() or {})["diverged_kind"])))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _write(table, profile, root, HISTORY_TABLES[kind], write)


def _target_levels(runs) -> dict[str, float]:
    """Per arm: the highest end level of validation NRMSE among the arm's runs that did not diverge."""
    targets: dict[str, float] = {}
    for config, folder, history in runs:
        if len(history) and not divergence_of(history, folder.done() or {})["diverged_kind"]:
            level = end_level(history.sort_values("epoch")["val_nrmse"])
            targets[config.arm] = max(targets.get(config.arm, float("-inf")), level)
    return targets


#: a variant's runs timed on more than one machine: their labels joined with this (:func:`cost_table`)
MACHINES_JOINED = " + "
#: the machine of a run started before runs recorded theirs (2026-12-06)
MACHINE_NOT_RECORDED = "not recorded"


def _machine(folder: RunFolder) -> str:
    return MACHINES_JOINED.join(folder.machines()) or MACHINE_NOT_RECORDED


def _cost_row(config: Config, history: pd.DataFrame, target: float) -> dict:
    steady = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]
    paper = Config.from_profile("paper", activation=config.activation, activation_params=config.activation_params,
                                initial_channels=config.initial_channels, norm=config.norm, precision=config.precision)
    voxel_ratio = (paper.batch_size * paper.patch_size**3) / (config.batch_size * config.patch_size**3)
    reached = epochs_to_reach(history.set_index("epoch")["val_nrmse"], target)
    per_epoch = float(steady.median())
    per_iteration = per_epoch / config.iterations
    iterations_to_target = float(history.loc[history.epoch <= reached, "iterations"].sum()) \
        if reached != float("inf") else float("nan")  # nan: not reached, and so is the time to it
    return {**labels(config), "params": count_parameters(UNet3D(**config.model_kwargs())),
            "seconds_per_epoch": per_epoch, "seconds_per_iteration": per_iteration,
            "train_seconds": float(history["seconds"].sum()), "peak_mem_mb": float(history["peak_mem_mb"].max()),
            "target_nrmse": target, "seconds_to_target": iterations_to_target * per_iteration,
            "iterations_to_target": iterations_to_target,
            "paper_seconds_per_iteration_extrapolated": per_iteration * voxel_ratio,
            "paper_memory_gib_estimate": training_memory_bytes(paper) / 2**30,
            "precision": config.precision, "memory_format": config.memory_format,
            "patch_size": config.patch_size, "batch_size": config.batch_size}


_COST_MEANS = ("seconds_per_epoch", "seconds_per_iteration", "train_seconds", "seconds_to_target",
               "iterations_to_target", "paper_seconds_per_iteration_extrapolated")


def machines_of(labels: pd.Series) -> set[str]:
    """The machines named in a ``machine`` column (each cell: labels joined by :data:`MACHINES_JOINED`)."""
    return {machine for cell in labels for machine in str(cell).split(MACHINES_JOINED)}


def _timed_here(table: pd.DataFrame, configs: dict[tuple, Config]) -> pd.DataFrame:
    """Where the table's variants were timed on more than one machine: each variant's training step timed again on
    this machine (:func:`qsmrep.run.trainer.time_training_step`), ``seconds_per_iteration_here``, ``timed_here_on``,
    and ``seconds_to_target_here`` = iterations to the target × that step (training steps only)."""
    from qsmrep.run.runtime import machine_label, resolve_device
    from qsmrep.run.trainer import time_training_step

    if len(machines_of(table.machine)) < 2:
        return table
    keys = list(zip(table.arm, table.activation, table.channels))
    here = [time_training_step(configs[key]) for key in keys]
    return table.assign(seconds_per_iteration_here=here, seconds_to_target_here=table.iterations_to_target * here,
                        timed_here_on=machine_label(resolve_device("auto")))
_COST_FIRSTS = ("params", "target_nrmse", "paper_memory_gib_estimate", "precision", "memory_format", "patch_size",
                "batch_size")


def cost_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """Per arm and variant (mean over seeds): parameters, seconds per epoch and per iteration, peak memory, total time,
    and the machines they were timed on (``machine``: labels joined by :data:`MACHINES_JOINED`; a study trained over
    several sittings may mix machines, and its seconds are then not comparable across variants).

    Seconds per epoch is the median over epochs after the first (which holds one-off warm-up).
    Paper scale (four 160³ patches): memory is the estimate of :mod:`qsmrep.study.estimate`, the time per
    iteration is *extrapolated* from this run by the voxel ratio (compute grows linearly with voxels),
    unless this run is the paper profile; GPU measurements, where committed, are shown beside it by
    the report. ``iterations_to_target`` is the number of iterations until the validation NRMSE first reaches
    ``target_nrmse``: the highest end level (median over the last 20 % of epochs) of the arm's
    finished runs, a level every finished run reaches and that a last-epoch spike cannot inflate; no machine changes
    it. ``seconds_to_target`` = ``iterations_to_target`` × seconds per iteration, the median epoch's pace: an epoch
    slowed by other work on the machine, or paused, does not count (``train_seconds`` is the plain sum).
    Where the runs were timed on more than one machine, every variant's step is timed again here
    (``seconds_per_iteration_here``, ``seconds_to_target_here``, ``timed_here_on``), so that their costs can still be
    compared on one machine.
    """
    runs = [(config, folder, folder.history()) for config, folder in list_runs(profile, root)]
    targets = _target_levels(runs)
    table = pd.DataFrame([{**_cost_row(config, history, targets.get(config.arm, float("nan"))), "machine": _machine(folder)}
                          for config, folder, history in runs if len(history)])
    if len(table):
        aggregations = {"seeds": ("seed", "count"), "peak_mem_mb": ("peak_mem_mb", "max"),
                        "machine": ("machine", lambda m: MACHINES_JOINED.join(sorted(set(MACHINES_JOINED.join(m).split(
                            MACHINES_JOINED))))),
                        **{name: (name, "mean") for name in _COST_MEANS}, **{name: (name, "first") for name in _COST_FIRSTS}}
        table = table.groupby(["arm", "activation", "channels"], as_index=False, sort=False).agg(**aggregations)
        order = ["arm", "activation", "channels", "seeds", "params", "seconds_per_epoch", "seconds_per_iteration",
                 "train_seconds", "peak_mem_mb", "target_nrmse", "seconds_to_target", "iterations_to_target",
                 "paper_seconds_per_iteration_extrapolated", "paper_memory_gib_estimate", "precision", "memory_format",
                 "patch_size", "batch_size", "machine"]
        table = _timed_here(table[order], {(c.arm, c.activation, c.initial_channels): c for c, _, _ in reversed(runs)})
    return _write(table, profile, root, "costs.csv", write)


def checkpoints_for_evaluation(profile: str, root: str | Path | None = None, kind: str = "runs") -> dict[str, Path]:
    """:func:`~qsmrep.study.plan.checkpoint_label` → early and final checkpoint of every run of ``kind`` that has them;
    where a checkpoint is gone (a run restored from the reference's record) its scores record
    (:mod:`qsmrep.run.scores`), where there is one."""
    out = {}
    for config, folder in list_runs(profile, root, kind):
        for epoch in sorted({config.early, config.epochs}):
            path = folder.checkpoint(epoch)
            if not path.exists():
                path = scores.record_path(path)
            if path.exists():
                out[checkpoint_label(config.arm, folder.path.name, epoch)] = path
    return out


def divergences(status: pd.DataFrame | None) -> pd.DataFrame:
    """The diverged rows of a run-status table (:func:`run_status_table`): training stopped on a non-finite
    number, or finished with a validation NRMSE blown up far beyond a zero prediction's."""
    if status is None or not len(status) or "diverged_epoch" not in status:
        return pd.DataFrame(columns=["activation", "channels", "seed", "diverged_epoch", "diverged_kind"])
    return status[status.diverged_epoch.notna()]
