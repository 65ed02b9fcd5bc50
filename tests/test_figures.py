"""The figures show the numbers of what they show: Figures 3 and 4 print the metrics of the very map and
checkpoint each panel draws, and the checkpoint is chosen by a stated rule (the median seed)."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from qsmrep.core.metrics import compute_metrics  # noqa: E402
from qsmrep.core.synth import synthetic_sample  # noqa: E402
from qsmrep.study.figures import display_label, plot_convergence, plot_reconstructions, reconstruction_panels  # noqa: E402

ERRORS = {0: 0.05, 1: 0.20, 2: 0.10}  # noise level per seed: seed 2 has the median test NRMSE


@pytest.fixture(scope="module")
def evaluation():
    """per-map metrics and arrays as evaluate_runs writes them: 3 seeds of two variants, 2 test maps, TKD."""
    rng = np.random.default_rng(0)
    samples = [synthetic_sample(24, seed) for seed in (5, 6)]
    rows, arrays = [], {}
    for m, sample in enumerate(samples):
        chi, mask = sample["chi"].numpy(), sample["mask"].numpy()
        arrays.update({f"chi_{m}": chi, f"mask_{m}": mask, f"field_{m}": sample["field"].numpy()})
        for activation in ("elu", "relu"):
            for seed, level in ERRORS.items():
                label = f"batch/{activation}32_s{seed}@10"
                pred = (chi + level * (1 + m) * rng.standard_normal(chi.shape)).astype(np.float32)
                arrays[f"{label}/pred_{m}"] = pred
                rows.append({"label": label, "model": f"{activation}32", "arm": "batch", "activation": activation,
                             "channels": 32, "seed": seed, "epoch": 10, "map": m, **compute_metrics(pred, chi, mask)})
        pred = (0.7 * chi).astype(np.float32)
        arrays[f"TKD/pred_{m}"] = pred
        rows.append({"label": "TKD", "model": "TKD", "arm": "", "activation": "", "channels": 0, "seed": 0, "epoch": 0,
                     "map": m, **compute_metrics(pred, chi, mask)})
    return pd.DataFrame(rows), arrays


def test_the_median_seed_is_shown(evaluation):
    per_map, _ = evaluation
    assert display_label(per_map, "batch", "elu", 32, 10) == "batch/elu32_s2@10"
    assert display_label(per_map, "batch", "elu", 32, 99) is None


@pytest.mark.parametrize("test_map", [0, 1])
def test_every_panel_prints_the_metrics_of_the_map_it_draws(evaluation, test_map):
    per_map, arrays = evaluation
    preds, metrics = reconstruction_panels(per_map, arrays, "batch", [("elu", 32), ("relu", 32)], 10, test_map, ["TKD"])
    chi, mask = arrays[f"chi_{test_map}"], arrays[f"mask_{test_map}"]
    fig = plot_reconstructions(chi, preds, metrics, mask, axis=0)
    titles = [ax.get_title() for ax in fig.axes[1:len(preds) + 1]]  # top row after the ground truth
    assert len(titles) == 3
    for title, (name, pred) in zip(titles, preds.items()):
        shown = compute_metrics(pred, chi, mask)  # recomputed from the very array the panel draws
        nrmse, ssim = (float(v) for v in re.search(r"NRMSE ([\d.]+) %\s+SSIM ([\d.]+)", title).groups())
        assert nrmse == pytest.approx(shown["nrmse"], abs=0.05) and ssim == pytest.approx(shown["ssim"], abs=5e-4), name
        assert name in title
    assert "seed 2" in titles[0] and "seed" not in titles[2]


def test_convergence_bands_never_go_below_zero_and_blow_ups_get_a_log_axis():
    rows = [{"activation": "elu", "channels": 16, "seed": s, "epoch": e, "train_loss": 1 / e, "val_loss": 1 / e,
             "val_nrmse": v} for s, scale in ((0, 1.0), (1, 3.0)) for e, v in ((1, 90 * scale), (2, 5.0 * scale))]
    fig = plot_convergence(pd.DataFrame(rows))
    panel_c = fig.axes[2]
    band = [c for c in panel_c.collections if hasattr(c, "get_paths")][0]
    assert min(p.vertices[:, 1].min() for p in band.get_paths()) >= 0  # min..max over seeds, not mean ± sd
    assert panel_c.get_yscale() == "log" and "log scale" in panel_c.get_title()
    calm = pd.DataFrame([{**r, "val_nrmse": 50.0 + r["epoch"]} for r in rows])
    assert plot_convergence(calm).axes[2].get_yscale() == "linear"
