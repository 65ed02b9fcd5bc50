"""Classical dipole inversions beside the networks, each with its parameter chosen on the validation maps.

* TKD (truncated k-space division): χ̂ = F⁻¹[D_t⁻¹ · F(B)], D_t⁻¹ = 1/D where |D| > t, else sign(D)/t
  (:meth:`qsmrep.core.physics.DipolePhysics.tkd`); parameter: the threshold t.
* Tikhonov: χ̂ = F⁻¹[D · F(B) / (D² + α)] (:meth:`~qsmrep.core.physics.DipolePhysics.tikhonov`); parameter α.

The paper compares no baseline; textbook values (t = 0.19, α = 0.05) are far from their best on these maps, so
each parameter is chosen from :data:`GRIDS` by the lowest mean NRMSE (inside the masks, percent) on the
*validation* maps of the same kind as the test maps (noise-free, or with the same field noise), never on the
test maps. A tuned baseline is the fair reference a QSM reader expects; the choice and its validation NRMSE
are reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from qsmrep.core.metrics import nrmse
from qsmrep.core.physics import DipolePhysics
from qsmrep.run.data import SyntheticMaps
from qsmrep.run.noise import NOISE_SEED, NoisyMaps

#: candidate parameters of each baseline, searched in full (values spaced about ×1.5–2)
GRIDS: dict[str, tuple[float, ...]] = {
    "TKD": (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.19, 0.25, 0.3),
    "Tikhonov": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.05, 0.1),
}
PARAMETER = {"TKD": "threshold", "Tikhonov": "alpha"}
#: validation maps used for the search (the first ones of the split; all of them in the small profiles)
TUNE_MAPS = 16


def invert(name: str, field: torch.Tensor, physics: DipolePhysics, parameter: float) -> torch.Tensor:
    """χ̂ (ppm, the field's shape) of baseline ``name`` with its ``parameter``."""
    if name == "TKD":
        return physics.tkd(field, threshold=parameter)
    if name == "Tikhonov":
        return physics.tikhonov(field, alpha=parameter)
    raise ValueError(f"baseline: unknown {name!r}; choose one of {list(GRIDS)}")


def search(name: str, maps: Sequence[dict], physics: DipolePhysics, grid: Sequence[float] | None = None,
           n_maps: int = TUNE_MAPS) -> pd.DataFrame:
    """Mean NRMSE over the first ``n_maps`` of ``maps`` (dicts of (1, S, S, S) ``chi``, ``field``, ``mask``) for
    every parameter of ``grid`` (default :data:`GRIDS` [name]): columns method, parameter, val_nrmse, chosen."""
    grid = tuple(grid or GRIDS[name])
    samples = [maps[i] for i in range(min(n_maps, len(maps)))]
    rows = []
    for parameter in grid:
        errors = [nrmse(invert(name, s["field"][0], physics, parameter).float(), s["chi"][0], s["mask"][0]) for s in samples]
        rows.append({"method": name, "parameter_name": PARAMETER[name], "parameter": parameter,
                     "val_nrmse": float(np.mean(errors))})
    table = pd.DataFrame(rows)
    table["chosen"] = table.index == table.val_nrmse.idxmin()
    return table


def tune(maps: Sequence[dict], physics: DipolePhysics, n_maps: int = TUNE_MAPS) -> tuple[dict[str, float], pd.DataFrame]:
    """(method → chosen parameter, the whole search table) of every baseline on validation ``maps``."""
    table = pd.concat([search(name, maps, physics, n_maps=n_maps) for name in GRIDS], ignore_index=True)
    chosen = table[table.chosen]
    return dict(zip(chosen.method, chosen.parameter)), table


def tune_for(config, physics: DipolePhysics, snr: float | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """:func:`tune` on the first :data:`TUNE_MAPS` validation maps of ``config`` (with field noise of ``snr``, seeded
    apart from the noisy test set's, when given); the table gains a ``test_set`` column."""
    val = SyntheticMaps.from_config(config, "val", device="cpu", cache=True, n=min(config.n_val, TUNE_MAPS))
    params, table = tune(NoisyMaps(val, snr, NOISE_SEED + 1) if snr else val, physics)
    return params, table.assign(test_set=f"SNR {snr:g}" if snr else "noise-free")


def labels(name: str) -> dict:
    """The columns naming baseline ``name`` in the metric tables (no arm, variant, seed or epoch)."""
    return {"model": name, "arm": "", "activation": "", "channels": 0, "seed": 0, "epoch": 0}


def inverter(name: str, physics: DipolePhysics, parameter: float):
    """field (X, Y, Z) tensor → χ̂ (X, Y, Z) float32 tensor on the field's device, by baseline ``name`` with ``parameter``."""
    return lambda field: invert(name, field, physics, parameter).float()
