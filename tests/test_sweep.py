"""The extended activation sweep: names, the study's listing, collection and its figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from qsmrep import registry
from qsmrep.study.figures import plot_sweep
from qsmrep.study.collect import trained_commits
from qsmrep.study.plan import study_runs, sweep_name
from qsmrep.run.gitinfo import code_commit
from qsmrep.study.sweep import collect_sweep
from qsmrep.run.trainer import train


def test_sweep_covers_the_issue_settings():
    names = [sweep_name(a, p) for a, p in registry.SWEEP]
    assert names == ["leaky_relu-0.01", "leaky_relu-0.1", "leaky_relu-0.2", "leaky_relu-0.3", "elu-0.5", "elu-1", "elu-2",
                     "gelu", "silu", "prelu", "mish"]
    assert len(set(names)) == len(names)


def test_sweep_trains_collects_and_plots(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "qsmrep").mkdir()
    sweep = [r for r in study_runs("smoke", extended=True) if r.kind == "sweep"]
    assert len(sweep) == len(registry.SWEEP) and {r.arm for r in sweep} == {registry.DEFAULT_ARM}
    for spec in (sweep[0], sweep[4]):
        config = spec.config().replace(initial_channels=4, depth=3, epochs=2, early_epoch=1)
        assert config.activation_params == spec.activation_params
        train(config, spec.folder(tmp_path), progress=False)
    histories, metrics = collect_sweep("smoke", root=tmp_path, device="cpu")
    assert set(metrics.name) == {"leaky_relu-0.01", "elu-0.5"} and len(histories) == 4
    assert (tmp_path / "results" / "smoke" / "sweep_metrics.csv").exists()
    assert plot_sweep(histories, metrics).axes
    assert trained_commits("smoke", root=tmp_path) == {"sweep": [code_commit()]}
