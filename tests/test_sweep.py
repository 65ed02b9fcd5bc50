"""The extended activation sweep: names, listing, collection and its figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from qsmrep.figures import plot_sweep
from qsmrep.sweep import SWEEP, collect_sweep, sweep_config, sweep_dir, sweep_name, unfinished
from qsmrep.train import train


def test_sweep_covers_the_issue_settings():
    names = [sweep_name(a, p) for a, p in SWEEP]
    assert names == ["leaky_relu-0.01", "leaky_relu-0.1", "leaky_relu-0.2", "leaky_relu-0.3", "elu-0.5", "elu-1", "elu-2",
                     "gelu", "silu", "prelu", "mish"]
    assert len(set(names)) == len(names)


def test_sweep_trains_collects_and_plots(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "qsmrep").mkdir()
    assert len(unfinished("smoke", root=tmp_path)) == len(SWEEP)
    for activation, params in (SWEEP[0], SWEEP[4]):
        config = sweep_config("smoke", activation, params).replace(initial_channels=4, depth=3, epochs=2, early_epoch=1)
        train(config, sweep_dir("smoke", activation, params, root=tmp_path), progress=False)
    histories, metrics = collect_sweep("smoke", root=tmp_path, device="cpu")
    assert set(metrics.name) == {"leaky_relu-0.01", "elu-0.5"} and len(histories) == 4
    assert (tmp_path / "results" / "smoke" / "sweep_metrics.csv").exists()
    assert plot_sweep(histories, metrics).axes
