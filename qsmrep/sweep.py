"""The extended activation sweep at 16 channels (beyond the paper: "different parameters for
activation functions are subject of further investigations").

Leaky ReLU negative slope 0.01 / 0.1 / 0.2 / 0.3, ELU α 0.5 / 1 / 2, and GELU, SiLU, PReLU, Mish,
each trained like the paper's variants. Runs live in ``results/<profile>/sweep/<name>_s<seed>/``,
apart from the six paper variants.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from qsmrep import io
from qsmrep.config import Config
from qsmrep.results import results_dir
from qsmrep.train import checkpoint_name, is_finished, read_history

SWEEP_CHANNELS = 16
SWEEP: list[tuple[str, dict]] = [
    ("leaky_relu", {"negative_slope": 0.01}), ("leaky_relu", {"negative_slope": 0.1}),
    ("leaky_relu", {"negative_slope": 0.2}), ("leaky_relu", {"negative_slope": 0.3}),
    ("elu", {"alpha": 0.5}), ("elu", {"alpha": 1.0}), ("elu", {"alpha": 2.0}),
    ("gelu", {}), ("silu", {}), ("prelu", {}), ("mish", {}),
]


def sweep_name(activation: str, params: dict) -> str:
    """Folder-safe name, e.g. ``leaky_relu-0.01``, ``elu-2``, ``gelu``."""
    return activation + "".join(f"-{value:g}" for value in params.values())


def sweep_config(profile: str, activation: str, params: dict, seed: int = 0) -> Config:
    return Config.from_profile(profile, activation=activation, activation_params=params,
                               initial_channels=SWEEP_CHANNELS, seed=seed)


def sweep_dir(profile: str, activation: str, params: dict, seed: int = 0, root=None) -> Path:
    return results_dir(profile, root) / "sweep" / f"{sweep_name(activation, params)}_s{seed}"


def unfinished(profile: str, seeds: int = 1, root=None, everything: bool = False) -> list[str]:
    """Tab-separated lines ``folder, activation, params as JSON, seed`` of sweep runs still to train."""
    lines = []
    for seed in range(seeds):
        for activation, params in SWEEP:
            folder = sweep_dir(profile, activation, params, seed, root)
            if everything or not is_finished(folder, sweep_config(profile, activation, params, seed)):
                lines.append(f"{folder}\t{activation}\t{json.dumps(params)}\t{seed}")
    return lines


def collect_sweep(profile: str, root=None, device: str = "auto", write: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(histories, test metrics at the last epoch) of every finished sweep run, with a ``name`` column."""
    from qsmrep.evaluate import evaluate_checkpoint

    histories, metrics = [], []
    for activation, params in SWEEP:
        for folder in sorted((results_dir(profile, root) / "sweep").glob(f"{sweep_name(activation, params)}_s*")):
            config = Config.load(folder / "config.yaml")
            if sweep_name(config.activation, config.activation_params) != sweep_name(activation, params):
                continue
            name = sweep_name(activation, params)
            history = read_history(folder)
            if len(history):
                histories.append(history.assign(name=name, seed=config.seed))
            final = folder / checkpoint_name(config.epochs)
            if final.exists():
                table, _ = evaluate_checkpoint(final, device=device, keep_arrays=0)
                metrics.append(table.assign(name=name))
    histories = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    metrics = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame()
    if write and len(metrics):
        io.write_text(results_dir(profile, root) / "sweep_histories.csv", histories.to_csv(index=False))
        io.write_text(results_dir(profile, root) / "sweep_metrics.csv", metrics.to_csv(index=False))
    return histories, metrics
