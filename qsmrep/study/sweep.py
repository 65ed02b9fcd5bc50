"""The extended activation sweep at 16 channels (beyond the paper: "different parameters for
activation functions are subject of further investigations").

Leaky ReLU negative slope 0.01 / 0.1 / 0.2 / 0.3, ELU α 0.5 / 1 / 2, and GELU, SiLU, PReLU, Mish
(:data:`qsmrep.registry.SWEEP`), each trained like the paper's variants in the default arm. Runs
live in ``results/<profile>/sweep/<arm>/<name>_s<seed>/``, apart from the six paper variants.
"""

from __future__ import annotations

import pandas as pd

from qsmrep.run import files
from qsmrep.study.collect import list_runs
from qsmrep.study.plan import results_dir, sweep_name


def collect_sweep(profile: str, root=None, device: str = "auto", write: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(histories, test metrics at the last epoch) of every sweep run, with ``name`` and ``arm`` columns."""
    from qsmrep.run.evaluate import evaluate_checkpoint

    histories, metrics = [], []
    for config, folder in list_runs(profile, root, kind="sweep"):
        name = sweep_name(config.activation, config.activation_params)
        history = folder.history()
        if len(history):
            histories.append(history.assign(name=name, arm=config.arm, seed=config.seed, status=folder.status()))
        final = folder.checkpoint(config.epochs)
        if final.exists():
            table, _ = evaluate_checkpoint(final, device=device, keep_arrays=0)
            metrics.append(table.assign(name=name))
    histories = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    metrics = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame()
    if write and len(histories):
        files.write_text(results_dir(profile, root) / "sweep_histories.csv", histories.to_csv(index=False))
        files.write_text(results_dir(profile, root) / "sweep_metrics.csv", metrics.to_csv(index=False))
    return histories, metrics
