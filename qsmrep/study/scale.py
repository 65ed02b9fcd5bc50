"""The scale of a study beside the paper's: each scale-dependent setting, its value here and in the paper, and why
it was chosen where the profile departs from plain scaling (:data:`qsmrep.run.config.SCALE_CHOICES`).

    σ in voxels = σ (fraction of the map) × map size;  patches per map = iterations × batch / training maps
"""

from __future__ import annotations

import pandas as pd

from qsmrep.run.config import SCALE_CHOICES, Config


def _span(low: float, high: float, unit: str = "") -> str:
    return f"{low:.2g}–{high:.2g}{unit}"


def scale_values(config: Config) -> dict[str, str]:
    """The scale-dependent settings of ``config`` as text (keys as in :data:`SCALE_CHOICES`)."""
    iterations = config.epochs * config.iterations
    sigma = config.synth.sigma
    return {
        "maps": f"{config.map_size}³ maps, {config.batch_size} patches of {config.patch_size}³ per iteration",
        "iterations": f"{iterations} ({config.epochs} epochs × {config.iterations})",
        "n_train": f"{config.n_train} training maps, {iterations * config.batch_size / config.n_train:.3g} patches "
                   f"per map; {config.n_val}/{config.n_test} validation/test maps",
        "synth.sigma": f"σ {_span(sigma[0] * config.map_size, sigma[1] * config.map_size, ' voxels')}",
        "early_epoch": f"epoch {config.early} ({config.early * config.iterations} iterations, "
                       f"{100 * config.early / config.epochs:.0f} % of the budget)",
    }


def scale_table(config: Config) -> pd.DataFrame:
    """One row per scale-dependent setting: ``setting``, ``here``, ``paper``, ``why`` (empty where the profile follows
    the plain scaling rule, lengths × map size / 320 and counts shrink, and where ``config`` is not at the profile's
    current scale, e.g. a reference made before the profile changed: the reasons are the current scale's)."""
    here, paper = scale_values(config), scale_values(Config.from_profile("paper"))
    current = here == scale_values(Config.from_profile(config.profile))
    reasons = SCALE_CHOICES.get(config.profile, {}) if current else {}
    return pd.DataFrame([{"setting": key, "here": value, "paper": paper[key], "why": reasons.get(key, "")}
                         for key, value in here.items()])
