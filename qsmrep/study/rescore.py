"""Re-score the classical baselines of a finished evaluation without its checkpoints.

The committed reference keeps its tables, not its run folders (checkpoints are git-ignored), so when the
baselines change (:mod:`qsmrep.run.baselines`: parameters chosen on the validation maps) their rows are redone
from the generator alone: the test and validation maps are pure functions of the config. The networks' rows are
kept as they are; the noisy test set (:mod:`qsmrep.run.noise`) then holds the baselines only, which the report says.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qsmrep.core.metrics import METRICS, compute_metrics, summarize
from qsmrep.core.phantom import head_phantom
from qsmrep.core.physics import DipolePhysics
from qsmrep.run import baselines as classical
from qsmrep.run import files
from qsmrep.run.config import Config
from qsmrep.run.evaluate import load_test_maps, score_maps
from qsmrep.run.noise import TEST_SNR, NoisyMaps
from qsmrep.study.summary import BASELINE_MODELS


def rescore_baselines(folder: str | Path, config: Config, snr: float = TEST_SNR) -> dict[str, dict[str, float]]:
    """Replace the baseline rows of ``folder``'s metric tables by tuned baselines; write ``baselines.csv`` and,
    when absent, ``metrics_noisy.csv`` with the baselines. Returns test set → method → chosen parameter."""
    folder = Path(folder)
    maps, physics = load_test_maps(config), DipolePhysics.from_config(config)
    clean, search = classical.tune_for(config, physics)
    noisy_params, noisy_search = classical.tune_for(config, physics, snr)
    per_map = pd.read_csv(folder / "metrics_per_map.csv")
    rows, noisy_rows = [], []
    for name in classical.GRIDS:
        rows += [{**r, "label": name} for r in score_maps(classical.labels(name), classical.inverter(name, physics, clean[name]), maps)[0]]
        noisy_rows += [{**r, "label": name, "test_set": f"SNR {snr:g}"} for r in
                       score_maps(classical.labels(name), classical.inverter(name, physics, noisy_params[name]), NoisyMaps(maps, snr))[0]]
    per_map = pd.concat([per_map[~per_map.model.isin(BASELINE_MODELS)], pd.DataFrame(rows)], ignore_index=True)
    summary = summarize(per_map, by=["arm", "model", "activation", "channels", "epoch"], metrics=list(METRICS))
    files.write_text(folder / "metrics_per_map.csv", per_map.to_csv(index=False))
    files.write_text(folder / "metrics_summary.csv", summary.to_csv(index=False))
    if not (folder / "metrics_noisy.csv").exists():
        files.write_text(folder / "metrics_noisy.csv", pd.DataFrame(noisy_rows).to_csv(index=False))
    files.write_text(folder / "baselines.csv", pd.concat([search, noisy_search], ignore_index=True).to_csv(index=False))
    _rescore_phantom(folder, config, physics, clean)
    return {"noise-free": clean, f"SNR {snr:g}": noisy_params}


def _rescore_phantom(folder: Path, config: Config, physics: DipolePhysics, params: dict[str, float]) -> None:
    table = pd.read_csv(folder / "metrics_phantom.csv")
    phantom = head_phantom(config.map_size, physics)
    rows = [{"label": name, **classical.labels(name),
             **compute_metrics(classical.inverter(name, physics, parameter)(phantom["field"]), phantom["chi"], phantom["mask"])}
            for name, parameter in params.items()]
    table = pd.concat([table[~table.model.isin(BASELINE_MODELS)], pd.DataFrame(rows)], ignore_index=True)
    files.write_text(folder / "metrics_phantom.csv", table.to_csv(index=False))
