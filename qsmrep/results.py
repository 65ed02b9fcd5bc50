"""Where a profile's outputs live, and collecting them across variants.

Layout (relative to the project root)::

    results/<profile>/runs/<activation><channels>_s<seed>/   one training run (qsmrep.train), git-ignored
    results/<profile>/histories.csv                           all runs' history rows, with variant columns
    results/<profile>/costs.csv                               parameters, time and memory per variant
    results/<profile>/metrics_per_map.csv, metrics_summary.csv   test metrics (qsmrep.evaluate)
    results/<profile>/arrays.npz                              ground truth and predictions for the figures
    results/<profile>/report.html                             the rendered report
    figures/<profile>/fig*.png|svg                            the figures
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qsmrep import io
from qsmrep.config import Config
from qsmrep.train import CONFIG_FILE, FAILED_FILE, checkpoint_name, read_history
from qsmrep.unet import UNet3D, count_parameters

PAPER_VARIANTS = [(a, c) for c in (16, 32) for a in ("relu", "leaky_relu", "elu")]


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` at or above ``start`` (default: the working directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "qsmrep").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    return project_root(root) / "results" / profile


def figures_dir(profile: str, root: str | Path | None = None) -> Path:
    return project_root(root) / "figures" / profile


def run_dir(profile: str, activation: str, channels: int, seed: int = 0, root: str | Path | None = None) -> Path:
    """Folder of one training run."""
    return results_dir(profile, root) / "runs" / f"{activation}{channels}_s{seed}"


def list_runs(profile: str, root: str | Path | None = None) -> list[tuple[Config, Path]]:
    """(config, folder) of every run folder of ``profile`` that holds a config, sorted by name."""
    runs = []
    for folder in sorted((results_dir(profile, root) / "runs").glob("*_s*")):
        if (folder / CONFIG_FILE).exists():
            runs.append((Config.load(folder / CONFIG_FILE), folder))
    return runs


def collect_histories(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """All runs' histories in one table with activation, channels, seed and failed columns."""
    frames = []
    for config, folder in list_runs(profile, root):
        frame = read_history(folder)
        if len(frame):
            frames.append(frame.assign(activation=config.activation, channels=config.initial_channels, seed=config.seed,
                                       failed=(folder / FAILED_FILE).exists()))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if write and len(table):
        io.write_text(results_dir(profile, root) / "histories.csv", table.to_csv(index=False))
    return table


def cost_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """Per variant (mean over seeds): parameters, seconds per epoch and per iteration, peak memory, total time.

    Seconds per epoch is the median over epochs after the first (which holds one-off warm-up).
    Paper scale (four 160³ patches): memory is the estimate of :mod:`qsmrep.estimate`, the time per
    iteration is *extrapolated* from this run by the voxel ratio (compute grows linearly with voxels),
    unless this run is the paper profile. ``seconds_to_target`` is the training time until the
    validation NRMSE first reaches ``target_nrmse``: the highest end level (median over the last
    20 % of epochs) of all runs, a level every run reaches and that a last-epoch spike cannot inflate.
    """
    from qsmrep.estimate import training_memory_bytes
    from qsmrep.report import end_level, epochs_to_reach

    histories = {folder: read_history(folder) for _config, folder in list_runs(profile, root)}
    finals = [end_level(h.sort_values("epoch")["val_nrmse"]) for h in histories.values() if len(h)]
    target = max(finals) if finals else float("nan")
    rows = []
    for config, folder in list_runs(profile, root):
        history = histories[folder]
        if not len(history):
            continue
        steady = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]
        paper = Config.from_profile("paper", activation=config.activation, activation_params=config.activation_params,
                                    initial_channels=config.initial_channels, precision=config.precision)
        voxel_ratio = (paper.batch_size * paper.patch_size**3) / (config.batch_size * config.patch_size**3)
        reached = epochs_to_reach(history.set_index("epoch")["val_nrmse"], target)
        rows.append({"activation": config.activation, "channels": config.initial_channels, "seed": config.seed,
                     "params": count_parameters(UNet3D(**config.model_kwargs())),
                     "seconds_per_epoch": float(steady.median()),
                     "seconds_per_iteration": float(steady.median()) / config.iterations,
                     "train_seconds": float(history["seconds"].sum()),
                     "peak_mem_mb": float(history["peak_mem_mb"].max()),
                     "target_nrmse": target,
                     "seconds_to_target": float(history.loc[history.epoch <= reached, "seconds"].sum())
                     if reached != float("inf") else float("nan"),
                     "paper_seconds_per_iteration_extrapolated": float(steady.median()) / config.iterations * voxel_ratio,
                     "paper_memory_gib_estimate": training_memory_bytes(paper) / 2**30,
                     "precision": config.precision, "patch_size": config.patch_size, "batch_size": config.batch_size})
    table = pd.DataFrame(rows)
    if len(table):
        table = table.groupby(["activation", "channels"], as_index=False, sort=False).agg(
            seeds=("seed", "count"), params=("params", "first"), seconds_per_epoch=("seconds_per_epoch", "mean"),
            seconds_per_iteration=("seconds_per_iteration", "mean"), train_seconds=("train_seconds", "mean"),
            peak_mem_mb=("peak_mem_mb", "max"), target_nrmse=("target_nrmse", "first"),
            seconds_to_target=("seconds_to_target", "mean"),
            paper_seconds_per_iteration_extrapolated=("paper_seconds_per_iteration_extrapolated", "mean"),
            paper_memory_gib_estimate=("paper_memory_gib_estimate", "first"), precision=("precision", "first"), patch_size=("patch_size", "first"),
            batch_size=("batch_size", "first"))
        if write:
            io.write_text(results_dir(profile, root) / "costs.csv", table.to_csv(index=False))
    return table


def dead_unit_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """Per run and activation layer: fraction of dead channels at the early and final checkpoint.

    A channel is dead when it is never positive on validation map 0 (see
    :class:`qsmrep.train.ActivationRecorder`). Written to ``dead_units.csv``.
    """
    from qsmrep.train import load_checkpoint

    rows = []
    for config, folder in list_runs(profile, root):
        for epoch in sorted({config.early, config.epochs}):
            path = folder / checkpoint_name(epoch)
            if path.exists():
                for layer, fraction in load_checkpoint(path).get("dead_per_layer", {}).items():
                    rows.append({"activation": config.activation, "channels": config.initial_channels, "seed": config.seed,
                                 "epoch": epoch, "layer": layer, "dead_fraction": fraction})
    table = pd.DataFrame(rows)
    if write and len(table):
        io.write_text(results_dir(profile, root) / "dead_units.csv", table.to_csv(index=False))
    return table


def checkpoints_for_evaluation(profile: str, root: str | Path | None = None) -> dict[str, Path]:
    """Label ``<activation><channels>_s<seed>@<epoch>`` → early and final checkpoint of every finished run."""
    out = {}
    for config, folder in list_runs(profile, root):
        for epoch in sorted({config.early, config.epochs}):
            path = folder / checkpoint_name(epoch)
            if path.exists():
                out[f"{folder.name}@{epoch}"] = path
    return out
