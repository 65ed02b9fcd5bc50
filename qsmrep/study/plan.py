"""The study plan: which runs a study trains, their keys, configurations and folders, and where a
profile's outputs live. The one place that knows run keys, labels, overrides and paths; the
Snakefile, the command line and every training job read it.

Layout (relative to the project root)::

    results/<profile>/runs/<arm>/<activation><channels>_s<seed>/   one training run of the paper's variants (git-ignored)
    results/<profile>/sweep/<arm>/<name>_s<seed>/                  the extended activation sweep (git-ignored)
    results/<profile>/guard/<arm>/<activation><channels>_s<seed>/  fp32 twins for the precision guard (git-ignored)
    results/<profile>/clip/<arm>/<activation><channels>_s<seed>/   gradient-clipped twins of the standard U-Net (git-ignored)
    results/<profile>/histories.csv, costs.csv, dead_units.csv, run_status.csv   all runs, with an ``arm`` column
    results/<profile>/metrics_per_map.csv, metrics_summary.csv, metrics_phantom.csv   test metrics (qsmrep.run.evaluate)
    results/<profile>/arrays.npz                                   ground truth and predictions for the figures
    results/<profile>/report.html                                  the rendered report
    results/<profile>/study_config.yaml                            the profile's configuration the study was evaluated
                                                                   with (study_config: tables read with their own scale)
    results/bench/<card>-<date>.jsonl                              committed benchmark rows (GPU measurements)
    figures/<profile>/fig*.png|svg                                 the figures
    reference/<profile>/                                           the committed reference: tables, report, figures/,
                                                                   benchmarks/, PROVENANCE.json (qsmrep.study.reference)

``results/`` (but ``results/bench/``) and ``figures/`` are git-ignored: runs never change a tracked file.

A run's *key* is its folder below ``results/<profile>/``: ``<kind>/<arm>/<name>``, e.g.
``runs/batch/elu16_s0`` or ``sweep/batch/leaky_relu-0.01_s2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qsmrep import registry
from qsmrep.run.config import Config

#: kinds of run, each the folder of its runs under results/<profile>: the paper's six variants, the extended
#: activation sweep, the fp32 twins of the precision guard, the gradient-clipped twins of the standard U-Net
KINDS: tuple[str, ...] = ("runs", "sweep", "guard", "clip")
#: what each kind of twin changes against the paper run of the same arm, variant and seed: the precision guard
#: trains the plain fp32 path; the clipping trial clips the gradient's global norm at 1 (a common default, not tuned)
TWIN_OVERRIDES = {"guard": {"precision": "fp32", "memory_format": "contiguous"}, "clip": {"grad_clip": 1.0}}


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` at or above ``start`` (default: the working directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "qsmrep").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    return project_root(root) / "results" / profile


def figures_dir(profile: str, root: str | Path | None = None) -> Path:
    return project_root(root) / "figures" / profile


#: the file of a profile's results (and reference) that records the configuration its tables were made with
STUDY_CONFIG = "study_config.yaml"


def study_config(profile: str, root: str | Path | None = None) -> Config:
    """The configuration the tables of ``results/<profile>/`` were made with (:data:`STUDY_CONFIG`, written by the
    evaluation and kept with a published reference), so that figures, claims and re-scored baselines use the
    study's own scale (epochs, early checkpoint, generator) after the profile changed; the profile's current
    configuration where the file is absent."""
    path = results_dir(profile, root) / STUDY_CONFIG
    return Config.load(path) if path.is_file() else Config.from_profile(profile)


def reference_dir(profile: str, root: str | Path | None = None) -> Path:
    """The committed reference of a profile (``reference/<profile>/``), written only by ``publish-reference``."""
    return project_root(root) / "reference" / profile


def bench_dir(root: str | Path | None = None) -> Path:
    """Where committed benchmark rows live (``results/bench/*.jsonl``)."""
    return project_root(root) / "results" / "bench"


def sweep_name(activation: str, params: dict) -> str:
    """Folder-safe name of a sweep setting, e.g. ``leaky_relu-0.01``, ``elu-2``, ``gelu``."""
    return activation + "".join(f"-{value:g}" for value in params.values())


def checkpoint_label(arm: str, name: str, epoch: int) -> str:
    """``<arm>/<name>@<epoch>``, e.g. ``batch/elu16_s0@25``: a checkpoint's label in the metric tables and arrays."""
    return f"{arm}/{name}@{epoch}"


#: base name (without ``_s<seed>``) → (activation, channels, parameters), per kind of run
_PAPER_NAMES = {registry.variant_name(a, c): (a, c, {}) for a, c in registry.PAPER_VARIANTS}
_SWEEP_NAMES = {sweep_name(a, p): (a, registry.SWEEP_CHANNELS, dict(p)) for a, p in registry.SWEEP}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study: which model, arm and seed, and where its folder is."""

    profile: str
    kind: str  # one of KINDS
    arm: str
    activation: str
    channels: int
    seed: int
    activation_params: dict = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        """Folder name: ``elu16_s0`` (runs, guard, clip) or ``leaky_relu-0.01_s0`` (sweep)."""
        base = sweep_name(self.activation, self.activation_params) if self.kind == "sweep" else \
            registry.variant_name(self.activation, self.channels)
        return f"{base}_s{self.seed}"

    @property
    def key(self) -> str:
        """``<kind>/<arm>/<name>``: the folder below ``results/<profile>/`` (the workflow's job wildcard)."""
        return f"{self.kind}/{self.arm}/{self.name}"

    def folder(self, root: str | Path | None = None) -> Path:
        return results_dir(self.profile, root) / self.key

    def config(self, **overrides) -> Config:
        """The run's configuration: the profile, the variant, arm and seed, the twin's overrides, then ``overrides``."""
        values = dict(activation=self.activation, activation_params=self.activation_params,
                      initial_channels=self.channels, seed=self.seed, norm=self.arm)
        values.update(TWIN_OVERRIDES.get(self.kind, {}))
        values.update(overrides)
        return Config.from_profile(self.profile, **values)

    @classmethod
    def from_key(cls, profile: str, key: str) -> "RunSpec":
        """The run of ``key`` (``<kind>/<arm>/<name>_s<seed>``, the inverse of :attr:`key`); ValueError naming what is wrong."""
        parts = key.split("/")
        base, _, seed = parts[-1].rpartition("_s")
        if len(parts) != 3 or not seed.isdigit():
            raise ValueError(f"run: {key!r} is not a <kind>/<arm>/<name>_s<seed> key, e.g. runs/batch/elu16_s0")
        kind, arm = parts[0], parts[1]
        registry.check_choice("run kind", kind, KINDS)
        registry.check_choice("arm", arm, registry.ARMS)
        names = _SWEEP_NAMES if kind == "sweep" else _PAPER_NAMES
        registry.check_choice(f"{kind} run name", base, names)
        activation, channels, params = names[base]
        return cls(profile, kind, arm, activation, channels, int(seed), params)


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
    runs = [RunSpec(profile, "runs", arm, a, c, seed) for arm in arms for seed in range(seeds)
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
