"""The study's runs and where a profile's outputs live, and collecting them across runs.

Layout (relative to the project root)::

    results/<profile>/runs/<arm>/<activation><channels>_s<seed>/   one training run of the paper's variants (git-ignored)
    results/<profile>/sweep/<arm>/<name>_s<seed>/                  the extended activation sweep (git-ignored)
    results/<profile>/guard/<arm>/<activation><channels>_s<seed>/  fp32 twins for the precision guard (git-ignored)
    results/<profile>/clip/<arm>/<activation><channels>_s<seed>/   gradient-clipped twins of the standard U-Net (git-ignored)
    results/<profile>/histories.csv, costs.csv, dead_units.csv, run_status.csv   all runs, with an ``arm`` column
    results/<profile>/metrics_per_map.csv, metrics_summary.csv, metrics_phantom.csv   test metrics (qsmrep.evaluate)
    results/<profile>/arrays.npz                                   ground truth and predictions for the figures
    results/<profile>/report.html                                  the rendered report
    figures/<profile>/fig*.png|svg                                 the figures

:func:`study_runs` enumerates the runs a study trains (the workflow's training jobs); everything
else finds runs on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qsmrep import io, registry
from qsmrep.config import Config
from qsmrep.runfolder import DIVERGED, RunFolder, checkpoint_name, load_checkpoint
from qsmrep.unet import UNet3D, count_parameters

KINDS = {"paper": "runs", "sweep": "sweep", "guard": "guard", "clip": "clip"}  # kind of run → folder under results/<profile>
#: what each kind of twin changes against the paper run of the same arm, variant and seed: the precision guard
#: trains the plain fp32 path; the clipping trial clips the gradient's global norm at 1 (a common default, not tuned)
TWIN_OVERRIDES = {"guard": {"precision": "fp32", "memory_format": "contiguous"}, "clip": {"grad_clip": 1.0}}


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


def sweep_name(activation: str, params: dict) -> str:
    """Folder-safe name of a sweep setting, e.g. ``leaky_relu-0.01``, ``elu-2``, ``gelu``."""
    return activation + "".join(f"-{value:g}" for value in params.values())


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study: which model, arm and seed, and where its folder is."""

    profile: str
    kind: str  # paper | sweep | guard | clip
    arm: str
    activation: str
    channels: int
    seed: int
    activation_params: dict = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        """Folder name: ``elu16_s0`` (paper, guard, clip) or ``leaky_relu-0.01_s0`` (sweep)."""
        base = sweep_name(self.activation, self.activation_params) if self.kind == "sweep" else \
            registry.variant_name(self.activation, self.channels)
        return f"{base}_s{self.seed}"

    @property
    def key(self) -> str:
        """``<kind>/<arm>/<name>``: unique within a profile (the workflow's job wildcard)."""
        return f"{self.kind}/{self.arm}/{self.name}"

    def folder(self, root: str | Path | None = None) -> Path:
        return results_dir(self.profile, root) / KINDS[self.kind] / self.arm / self.name

    def config(self) -> Config:
        overrides = TWIN_OVERRIDES.get(self.kind, {})
        return Config.from_profile(self.profile, activation=self.activation, activation_params=self.activation_params,
                                   initial_channels=self.channels, seed=self.seed, norm=self.arm, **overrides)


def study_runs(profile: str, arms=(registry.DEFAULT_ARM,), seeds: int = 1, extended: bool = False,
               guard: bool = False, clip: bool = False,
               widths: tuple[int, ...] = registry.PAPER_CHANNELS) -> list[RunSpec]:
    """Every training run of a study: the six paper variants per arm and seed; with ``extended`` the
    activation sweep (default arm only); with ``guard`` an fp32 twin of every paper variant's seed 0; with
    ``clip`` a gradient-clipped twin of every variant's seed 0 in the standard U-Net's arm (``none``, which must
    be among ``arms``: the trial measures what its divergences owe to the missing clipping). The twins (guard, clip)
    cover the variants with ``widths`` initial channels (both widths by default)."""
    if seeds < 1:
        raise ValueError(f"seeds: must be ≥ 1, got {seeds}")
    for arm in arms:
        registry.check_choice("arm", arm, registry.ARMS)
    runs = [RunSpec(profile, "paper", arm, a, c, seed) for arm in arms for seed in range(seeds)
            for a, c in registry.PAPER_VARIANTS]
    if extended:
        runs += [RunSpec(profile, "sweep", registry.DEFAULT_ARM, a, registry.SWEEP_CHANNELS, seed, dict(params))
                 for seed in range(seeds) for a, params in registry.SWEEP]
    for width in widths:
        registry.check_choice("widths", width, registry.PAPER_CHANNELS)
    twins = [(a, c) for a, c in registry.PAPER_VARIANTS if c in widths]
    if guard:
        runs += [RunSpec(profile, "guard", arm, a, c, 0) for arm in arms for a, c in twins]
    if clip:
        if registry.STANDARD_UNET_ARM not in arms:
            raise ValueError(f"clip: the clipping trial twins the arm {registry.STANDARD_UNET_ARM!r} (the standard "
                             f"U-Net), which is not among the arms {list(arms)}; add it (--arm {registry.STANDARD_UNET_ARM} or both)")
        runs += [RunSpec(profile, "clip", registry.STANDARD_UNET_ARM, a, c, 0) for a, c in twins]
    return runs


def run_spec(profile: str, key: str) -> RunSpec:
    """The :class:`RunSpec` of a ``<kind>/<arm>/<name>`` key (the inverse of :attr:`RunSpec.key`)."""
    for spec in study_runs(profile, registry.ARMS, seeds=_seed_of(key) + 1, extended=True, guard=True, clip=True):
        if spec.key == key:
            return spec
    raise ValueError(f"run: no run {key!r} in profile {profile!r}")


def _seed_of(key: str) -> int:
    try:
        return int(key.rsplit("_s", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"run: {key!r} is not a <kind>/<arm>/<name>_s<seed> key") from None


def list_runs(profile: str, root: str | Path | None = None, kind: str = "paper") -> list[tuple[Config, RunFolder]]:
    """(config, run folder) of every folder of ``kind`` that holds a config, sorted by arm and name."""
    runs = []
    for path in sorted((results_dir(profile, root) / KINDS[kind]).glob("*/*_s*")):
        folder = RunFolder(path)
        config = folder.config()
        if config is not None:
            runs.append((config, folder))
    return runs


def trained_commits(profile: str, root: str | Path | None = None) -> dict[str, list[str]]:
    """Commits at which the finished runs of each kind were trained (their ``DONE.json``), by kind, sorted."""
    commits = {}
    for kind in KINDS:
        found = {str((folder.done() or {}).get("commit", "")) for _, folder in list_runs(profile, root, kind)}
        if found - {""}:
            commits[kind] = sorted(found - {""})
    return commits


def _labels(config: Config) -> dict:
    return {"arm": config.arm, "activation": config.activation, "channels": config.initial_channels, "seed": config.seed}


#: validation NRMSE (%) above which a finished run counts as diverged: ten times a zero prediction's 100 %
BLOWUP_NRMSE = 1000.0


def divergence_of(history: pd.DataFrame, done: dict) -> dict:
    """How a run diverged, if it did: ``kind`` ``non-finite`` (training stopped on a NaN/Inf loss or gradient)
    or ``validation`` (training finite, but the end level of the validation NRMSE, the median over the last
    20 % of epochs, above :data:`BLOWUP_NRMSE`: the model became far worse than predicting zero), the epoch it
    happened (for ``validation``: the first epoch above the threshold) and the last finite values before it."""
    if done.get("status") == DIVERGED:
        last = done.get("last_finite", {})
        return {"diverged_kind": "non-finite", "diverged_epoch": done.get("epoch"), "diverged_iteration": done.get("iteration"),
                "last_finite_train_loss": last.get("train_loss"), "last_finite_val_nrmse": last.get("val_nrmse")}
    from qsmrep.report import end_level

    curve = history.sort_values("epoch")
    if len(curve) and end_level(curve["val_nrmse"]) > BLOWUP_NRMSE:
        first = int(curve.loc[curve.val_nrmse > BLOWUP_NRMSE, "epoch"].iloc[0])
        before = curve[curve.epoch < first]
        return {"diverged_kind": "validation", "diverged_epoch": first, "diverged_iteration": None,
                "last_finite_train_loss": float(before.train_loss.iloc[-1]) if len(before) else None,
                "last_finite_val_nrmse": float(before.val_nrmse.iloc[-1]) if len(before) else None}
    return {"diverged_kind": "", "diverged_epoch": None, "diverged_iteration": None, "last_finite_train_loss": None,
            "last_finite_val_nrmse": None}


def run_status_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """One row per run: arm, variant, seed, status (finished, diverged, partial), precision and memory format
    used, and, where it diverged (:func:`divergence_of`), how, at which epoch, and the last values before."""
    rows = []
    for config, folder in list_runs(profile, root):
        done = folder.done() or {}
        rows.append({**_labels(config), "status": folder.status(), "precision": config.precision,
                     "memory_format": config.memory_format, "grad_clip": config.grad_clip,
                     **divergence_of(folder.history(), done), "trained_at_commit": done.get("commit", "")})
    table = pd.DataFrame(rows)
    if write and len(table):
        io.write_text(results_dir(profile, root) / "run_status.csv", table.to_csv(index=False))
    return table


def collect_histories(profile: str, root: str | Path | None = None, write: bool = True, kind: str = "paper",
                      name: str = "histories.csv") -> pd.DataFrame:
    """All runs' histories in one table with arm, activation, channels, seed and status columns."""
    frames = []
    for config, folder in list_runs(profile, root, kind):
        frame = folder.history()
        if len(frame):
            frames.append(frame.assign(**_labels(config), status=folder.status(), precision=config.precision,
                                       diverged=bool(divergence_of(frame, folder.done() or {})["diverged_kind"])))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if write and len(table):
        io.write_text(results_dir(profile, root) / name, table.to_csv(index=False))
    return table


def cost_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """Per arm and variant (mean over seeds): parameters, seconds per epoch and per iteration, peak memory, total time.

    Seconds per epoch is the median over epochs after the first (which holds one-off warm-up).
    Paper scale (four 160³ patches): memory is the estimate of :mod:`qsmrep.estimate`, the time per
    iteration is *extrapolated* from this run by the voxel ratio (compute grows linearly with voxels),
    unless this run is the paper profile; GPU measurements, where committed, are shown beside it by
    the report. ``seconds_to_target`` is the training time until the validation NRMSE first reaches
    ``target_nrmse``: the highest end level (median over the last 20 % of epochs) of the arm's
    finished runs, a level every finished run reaches and that a last-epoch spike cannot inflate.
    """
    from qsmrep.estimate import training_memory_bytes
    from qsmrep.report import end_level, epochs_to_reach

    runs = [(config, folder, folder.history()) for config, folder in list_runs(profile, root)]
    targets: dict[str, float] = {}
    for config, folder, history in runs:
        if len(history) and not divergence_of(history, folder.done() or {})["diverged_kind"]:
            level = end_level(history.sort_values("epoch")["val_nrmse"])
            targets[config.arm] = max(targets.get(config.arm, float("-inf")), level)
    rows = []
    for config, folder, history in runs:
        if not len(history):
            continue
        steady = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]
        paper = Config.from_profile("paper", activation=config.activation, activation_params=config.activation_params,
                                    initial_channels=config.initial_channels, norm=config.norm, precision=config.precision)
        voxel_ratio = (paper.batch_size * paper.patch_size**3) / (config.batch_size * config.patch_size**3)
        target = targets.get(config.arm, float("nan"))
        reached = epochs_to_reach(history.set_index("epoch")["val_nrmse"], target)
        rows.append({**_labels(config), "params": count_parameters(UNet3D(**config.model_kwargs())),
                     "seconds_per_epoch": float(steady.median()),
                     "seconds_per_iteration": float(steady.median()) / config.iterations,
                     "train_seconds": float(history["seconds"].sum()),
                     "peak_mem_mb": float(history["peak_mem_mb"].max()),
                     "target_nrmse": target,
                     "seconds_to_target": float(history.loc[history.epoch <= reached, "seconds"].sum())
                     if reached != float("inf") else float("nan"),
                     "paper_seconds_per_iteration_extrapolated": float(steady.median()) / config.iterations * voxel_ratio,
                     "paper_memory_gib_estimate": training_memory_bytes(paper) / 2**30,
                     "precision": config.precision, "memory_format": config.memory_format,
                     "patch_size": config.patch_size, "batch_size": config.batch_size})
    table = pd.DataFrame(rows)
    if len(table):
        table = table.groupby(["arm", "activation", "channels"], as_index=False, sort=False).agg(
            seeds=("seed", "count"), params=("params", "first"), seconds_per_epoch=("seconds_per_epoch", "mean"),
            seconds_per_iteration=("seconds_per_iteration", "mean"), train_seconds=("train_seconds", "mean"),
            peak_mem_mb=("peak_mem_mb", "max"), target_nrmse=("target_nrmse", "first"),
            seconds_to_target=("seconds_to_target", "mean"),
            paper_seconds_per_iteration_extrapolated=("paper_seconds_per_iteration_extrapolated", "mean"),
            paper_memory_gib_estimate=("paper_memory_gib_estimate", "first"), precision=("precision", "first"),
            memory_format=("memory_format", "first"), patch_size=("patch_size", "first"), batch_size=("batch_size", "first"))
        if write:
            io.write_text(results_dir(profile, root) / "costs.csv", table.to_csv(index=False))
    return table


def dead_unit_table(profile: str, root: str | Path | None = None, write: bool = True) -> pd.DataFrame:
    """Per run and activation layer: fraction of dead channels at the early and final checkpoint.

    A channel is dead when it is never positive on validation map 0 (see
    :class:`qsmrep.train.ActivationRecorder`). Written to ``dead_units.csv``.
    """
    rows = []
    for config, folder in list_runs(profile, root):
        for epoch in sorted({config.early, config.epochs}):
            path = folder.checkpoint(epoch)
            if path.exists():
                for layer, fraction in load_checkpoint(path).get("dead_per_layer", {}).items():
                    rows.append({**_labels(config), "epoch": epoch, "layer": layer, "dead_fraction": fraction})
    table = pd.DataFrame(rows)
    if write and len(table):
        io.write_text(results_dir(profile, root) / "dead_units.csv", table.to_csv(index=False))
    return table


def checkpoints_for_evaluation(profile: str, root: str | Path | None = None, kind: str = "paper") -> dict[str, Path]:
    """Label ``<arm>/<activation><channels>_s<seed>@<epoch>`` → early and final checkpoint of every run that has them."""
    out = {}
    for config, folder in list_runs(profile, root, kind):
        for epoch in sorted({config.early, config.epochs}):
            path = folder.checkpoint(epoch)
            if path.exists():
                out[f"{config.arm}/{folder.path.name}@{epoch}"] = path
    return out


__all__ = ["RunSpec", "study_runs", "run_spec", "list_runs", "collect_histories", "cost_table", "dead_unit_table",
           "run_status_table", "checkpoints_for_evaluation", "results_dir", "figures_dir", "project_root", "sweep_name",
           "checkpoint_name"]
