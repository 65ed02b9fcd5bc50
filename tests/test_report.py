"""Claims logic and the offline HTML clean-up of the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qsmrep import registry
from qsmrep.registry import PAPER_VARIANTS as VARIANTS
from qsmrep.study.claims import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    NOT_TESTABLE_DIVERGED,
    REPRODUCED,
    compare_arms,
    evaluate_claims,
)
from qsmrep.study.curves import epochs_to_reach
from qsmrep.study.html import external_references, make_offline
from qsmrep.study.stats import precision_guard


def _histories(final_loss: dict, speed: dict, dead: dict, epochs: int = 20) -> pd.DataFrame:
    """Exponentially decaying curves: val_nrmse = 100·(final + (1-final)·exp(-epoch/speed))."""
    rows = []
    for a, c in VARIANTS:
        key = f"{a}{c}"
        for e in range(1, epochs + 1):
            level = final_loss[key] + (1 - final_loss[key]) * np.exp(-e / speed[key])
            rows.append({"epoch": e, "activation": a, "channels": c, "seed": 0, "train_loss": level, "val_loss": level,
                         "val_nrmse": 100 * level, "dead_fraction": dead[key], "zero_gradient_fraction": dead[key]})
    return pd.DataFrame(rows)


def _metrics(nrmse: dict, ssim: dict, epoch: int) -> pd.DataFrame:
    return pd.DataFrame([{"activation": a, "channels": c, "epoch": epoch, "map": m,
                          "nrmse": nrmse[f"{a}{c}"], "ssim": ssim[f"{a}{c}"]} for a, c in VARIANTS for m in range(3)])


def _paper_like():
    final = {"relu16": 0.4, "leaky_relu16": 0.4, "elu16": 0.2, "relu32": 0.2, "leaky_relu32": 0.2, "elu32": 0.19}
    speed = {"relu16": 6, "leaky_relu16": 6, "elu16": 1.5, "relu32": 3, "leaky_relu32": 3, "elu32": 3}
    dead = {"relu16": 0.3, "leaky_relu16": 0.0, "elu16": 0.01, "relu32": 0.25, "leaky_relu32": 0.0, "elu32": 0.01}
    nrmse = {"relu16": 40, "leaky_relu16": 40, "elu16": 20, "relu32": 21, "leaky_relu32": 20.5, "elu32": 19.5}
    ssim = {k: 1 - v / 100 for k, v in nrmse.items()}
    metrics = pd.concat([_metrics(nrmse, ssim, 20), _metrics({k: v * 1.5 for k, v in nrmse.items()}, ssim, 4)])
    costs = pd.DataFrame([{"activation": a, "channels": c, "params": c * 1000, "seconds_per_epoch": c / 4.0,
                           "peak_mem_mb": c * 10.0} for a, c in VARIANTS])
    return _histories(final, speed, dead), metrics, costs


def test_paper_like_numbers_reproduce_every_claim():
    histories, metrics, costs = _paper_like()
    claims = evaluate_claims(histories, metrics, early_epoch=4, final_epoch=20, costs=costs)
    assert list(claims.id) == [f"C{i}" for i in range(1, 9)]
    assert (claims.verdict == REPRODUCED).all(), claims[claims.verdict != REPRODUCED].to_dict("records")


def test_contrary_numbers_are_not_reproduced():
    histories, metrics, costs = _paper_like()
    swap = histories.activation.map({"elu": "relu", "relu": "elu", "leaky_relu": "leaky_relu"})
    metrics_swap = metrics.assign(activation=metrics.activation.map({"elu": "relu", "relu": "elu", "leaky_relu": "leaky_relu"}))
    claims = evaluate_claims(histories.assign(activation=swap), metrics_swap, 4, 20, costs).set_index("id")
    for claim in ("C2", "C5", "C6", "C8"):
        assert claims.loc[claim, "verdict"] == NOT_REPRODUCED


def test_missing_variant_is_not_testable():
    histories, metrics, costs = _paper_like()
    claims = evaluate_claims(histories[histories.activation != "elu"], metrics, 4, 20, costs)
    assert claims.verdict.tolist() == [NOT_TESTABLE] and "elu16" in claims.evidence.iloc[0]


def test_end_level_ignores_a_last_epoch_spike():
    from qsmrep.study.curves import end_level

    curve = pd.Series([100.0, 80, 60, 50, 48, 47, 46, 45, 44, 120], index=range(1, 11))
    assert end_level(curve) == 82.0  # median of the last 2 of 10 epochs: still moved by a spike in 2 values
    curve = pd.Series(np.r_[np.linspace(100, 50, 20), [50, 50, 50, 50, 123]], index=range(1, 26))
    assert end_level(curve) == 50.0
    assert end_level(pd.Series([7.0], index=[1])) == 7.0


def test_a_last_epoch_spike_decides_neither_c2_nor_c3():
    """ReLU16 spiking in its last epoch (as one cpu seed did) must not make its end loss "twice the
    others" (C3) nor lift the C2 threshold above the starting NRMSE (every model then 'reaches' it at epoch 1)."""
    final = {"relu16": 0.4, "leaky_relu16": 0.4, "elu16": 0.4, "relu32": 0.4, "leaky_relu32": 0.4, "elu32": 0.4}
    speed = {k: 3 for k in final}
    histories = _histories(final, speed, {k: 0.0 for k in final}, epochs=25)
    spike = (histories.activation == "relu") & (histories.channels == 16) & (histories.epoch == 25)
    histories.loc[spike, ["val_loss", "val_nrmse"]] = [5.0, 500.0]
    nrmse = {k: 40.0 for k in final}
    metrics = pd.concat([_metrics(nrmse, {k: 0.6 for k in final}, 25), _metrics(nrmse, {k: 0.5 for k in final}, 5)])
    claims = evaluate_claims(histories, metrics, 5, 25).set_index("id")
    assert claims.loc["C3", "verdict"] == NOT_REPRODUCED and "= 1.00" in claims.loc["C3", "evidence"]
    assert "≤ 44.0 %" in claims.loc["C2", "evidence"]


def test_c1_judges_the_end_level_not_the_last_epoch():
    """A converged set of curves with a one-epoch spike at the very end still converged; a curve still falling
    over its last 20 % did not."""
    histories, metrics, costs = _paper_like()
    spike = (histories.activation == "relu") & (histories.channels == 16) & (histories.epoch == 20)
    spiked = histories.copy()
    spiked.loc[spike, "val_nrmse"] = 300.0  # last value 7× the first: the old last/first rule said "not converged"
    assert evaluate_claims(spiked, metrics, 4, 20, costs).set_index("id").loc["C1", "verdict"] == REPRODUCED
    slow = histories.copy()
    rows = (slow.activation == "elu") & (slow.channels == 32)
    slow.loc[rows, "val_nrmse"] = 100.0 - 4.0 * slow.loc[rows, "epoch"]  # linear fall, still moving at the end
    claims = evaluate_claims(slow, metrics, 4, 20, costs).set_index("id")
    assert claims.loc["C1", "verdict"] == NOT_REPRODUCED and "elu32" in claims.loc["C1", "evidence"]


def test_a_diverged_model_makes_the_claims_that_need_it_not_testable():
    histories, metrics, costs = _paper_like()
    gone = (histories.activation == "leaky_relu") & (histories.channels == 16)
    histories = histories[~gone | (histories.epoch <= 9)]
    metrics = metrics[~((metrics.activation == "leaky_relu") & (metrics.channels == 16) & (metrics.epoch == 20))]
    status = pd.DataFrame([{"arm": "none", "activation": a, "channels": c, "seed": 0,
                            "status": "diverged" if (a, c) == ("leaky_relu", 16) else "finished",
                            "diverged_epoch": 10 if (a, c) == ("leaky_relu", 16) else None,
                            "last_finite_val_nrmse": 55.5 if (a, c) == ("leaky_relu", 16) else None} for a, c in VARIANTS])
    claims = evaluate_claims(histories, metrics, 4, 20, costs, status).set_index("id")
    for cid in ("C1", "C2", "C3", "C7"):  # they need leaky ReLU 16 (C7 compares every activation's 16/32 ratio)
        assert claims.loc[cid, "verdict"] == NOT_TESTABLE_DIVERGED
        assert "leaky_relu16 seed 0 at epoch 10" in claims.loc[cid, "evidence"] and "55.5 %" in claims.loc[cid, "evidence"]
    for cid in ("C4", "C5", "C6", "C8"):  # they do not
        assert claims.loc[cid, "verdict"] == REPRODUCED, cid
    # a divergence before the early checkpoint makes C6 untestable too when it hits ELU16 or ReLU16
    status.loc[(status.activation == "relu") & (status.channels == 16), ["status", "diverged_epoch"]] = ["diverged", 3]
    claims = evaluate_claims(histories, metrics, 4, 20, costs, status).set_index("id")
    assert claims.loc["C6", "verdict"] == NOT_TESTABLE_DIVERGED


def test_compare_arms_names_the_claims_that_change():
    a = pd.DataFrame({"id": ["C1", "C3", "C8"], "verdict": [REPRODUCED, REPRODUCED, REPRODUCED]})
    b = pd.DataFrame({"id": ["C1", "C3", "C8"], "verdict": [REPRODUCED, NOT_REPRODUCED, NOT_REPRODUCED]})
    table, text = compare_arms({"none": a, "batch": b})
    assert list(table.columns) == ["id", "none", "batch"] and len(table) == 3
    assert ("C3 (reproduced without normalisation (the standard U-Net), not reproduced with batch normalisation)"
            in text)
    assert "C8 (" in text and "The verdicts of C1 are the same in both arms" in text


def test_default_arm_evidence_counts_the_divergences_of_each_arm():
    from qsmrep.study.claims import default_arm_evidence

    status = pd.DataFrame([{"arm": arm, "activation": a, "channels": c, "seed": s,
                            "diverged_epoch": 25 if (arm, a, s) in (("none", "leaky_relu", 0), ("none", "leaky_relu", 1))
                            else np.nan} for arm in ("batch", "none") for s in (0, 1, 2) for a, c in VARIANTS])
    text = default_arm_evidence(status)
    assert f"arm **{registry.DEFAULT_ARM}**" in text
    assert "arm `none`: 4 of 18 runs diverged (leaky_relu16 in 2 of 3 seeds, leaky_relu32 in 2 of 3 seeds)" in text
    assert "arm `batch`: 0 of 18 runs diverged" in text
    assert "was not run here" in default_arm_evidence(status[status.arm == "batch"])


def test_precision_guard_statistic():
    def runs(level, arms=("none", "batch")):
        return pd.DataFrame([{"arm": arm, "activation": a, "channels": c, "seed": 0, "epoch": e, "status": "finished",
                              "precision": "bf16", "val_nrmse": level(a, c) * (1 + 0.5 / e), "seconds": 1.0}
                             for arm in arms for a, c in VARIANTS for e in range(1, 11)])
    fp32 = runs(lambda a, c: 40.0).assign(seconds=2.0, precision="fp32")
    jitter = {k: d for k, d in zip(VARIANTS, (0.004, -0.003, 0.002, -0.001, 0.003, -0.002))}
    table, verdict = precision_guard(runs(lambda a, c: 40.0 * (1 + jitter[(a, c)])), fp32)
    assert len(table) == 12 and verdict["pairs"] == 12 and verdict["verdict"] == "holds"
    assert verdict["speedup"] == pytest.approx(2.0) and verdict["max_abs"] == pytest.approx(0.004, rel=1e-6)
    _, worse = precision_guard(runs(lambda a, c: 40.0 * 1.05), fp32)
    assert worse["verdict"] == "fails" and worse["mean"] == pytest.approx(0.05)
    noisy = {k: d for k, d in zip(VARIANTS, (0.05, -0.05, 0.04, -0.04, 0.03, -0.03))}
    _, undecided = precision_guard(runs(lambda a, c: 40.0 * (1 + noisy[(a, c)]), arms=("none",)),
                                   fp32[fp32.arm == "none"])
    assert undecided["verdict"] == "undecided"
    # a mean outside the band whose interval spans it (few, noisy pairs) decides nothing
    spread = {k: d for k, d in zip(VARIANTS, (0.013, -0.014, 0.045, -0.012, -0.162, 0.0))}
    _, wide = precision_guard(runs(lambda a, c: 40.0 * (1 + spread[(a, c)]), arms=("none",)), fp32[fp32.arm == "none"])
    assert wide["mean"] < -0.02 and wide["low"] < -0.02 < 0.02 < wide["high"] and wide["verdict"] == "undecided"


def test_figure_2d_writes_the_configured_loss():
    import matplotlib

    matplotlib.use("Agg")
    from qsmrep.study.figures import plot_convergence

    histories, _, _ = _paper_like()
    texts = lambda fig: " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    default = texts(plot_convergence(histories, 4, lam=1.0))
    assert r"\Vert \hat\chi-\chi\Vert_1" in default and "k_{z}" in default and r"d\ast\chi" in default
    other = texts(plot_convergence(histories, 4, lam=0.5, chi_norm="mse", field_norm="l1", b0_axis="k_x",
                                   field_target="input"))
    assert r"\Vert_2^2" in other and "k_{x}" in other and r"\hat\chi-B" in other and r"\lambda=0.5" in other
    assert "k_{z}" not in other and "squared error" in other


def test_epochs_to_reach():
    curve = pd.Series([90.0, 70.0, 50.0, 55.0], index=[1, 2, 3, 4])
    assert epochs_to_reach(curve, 60) == 3
    assert epochs_to_reach(curve, 10) == float("inf")


@pytest.mark.parametrize("tag", [
    '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js"></script>',
    '<script type="text/javascript" src="https://cdn.jsdelivr.net/npm/mathjax@2/MathJax.js?config=TeX-AMS_CHTML-full"></script>',
    '<link rel="stylesheet" href="https://cdn.example.org/x.css"/>',
])
def test_make_offline_strips_network_references(tag):
    html = f"<html><head>{tag}</head><body><img src=\"data:image/png;base64,AAAA\"></body></html>"
    assert external_references(html)
    cleaned = make_offline(html)
    assert external_references(cleaned) == []
    assert "data:image/png;base64,AAAA" in cleaned


def _seeded(n_seeds: int, elu_gain: float, rng_seed: int = 0):
    """Paper-like histories and metrics for several seeds; ELU's advantage scaled by ``elu_gain`` plus noise."""
    rng = np.random.default_rng(rng_seed)
    histories, metrics, _costs = _paper_like()
    hs, ms = [], []
    for seed in range(n_seeds):
        h = histories.assign(seed=seed)
        h["val_nrmse"] = h.val_nrmse * (1 + 0.01 * rng.standard_normal(len(h)))
        m = metrics.assign(seed=seed).copy()
        is_elu = m.activation == "elu"
        m.loc[is_elu, "nrmse"] = m.loc[is_elu, "nrmse"] * elu_gain + rng.standard_normal(is_elu.sum()) * 0.1
        hs.append(h)
        ms.append(m)
    return pd.concat(hs), pd.concat(ms)


def test_seed_statistics_interval_decides():
    from qsmrep.study.stats import seed_statistics

    histories, metrics = _seeded(3, elu_gain=1.0)
    table = seed_statistics(histories, metrics, 4, 20).set_index("claim")
    assert table.loc["C6 NRMSE", "seeds"] == 3
    assert table.loc["C6 NRMSE", "95 % CI high"] < 0 and table.loc["C6 NRMSE", "supports"] is True
    # ELU made 3× worse: the interval lies on the wrong side
    histories, metrics = _seeded(3, elu_gain=3.0)
    table = seed_statistics(histories, metrics, 4, 20).set_index("claim")
    assert table.loc["C6 NRMSE", "supports"] is False
    # one seed: no interval, undecided
    histories, metrics = _seeded(1, elu_gain=1.0)
    table = seed_statistics(histories, metrics, 4, 20).set_index("claim")
    assert table.loc["C6 NRMSE", "supports"] is None and np.isnan(table.loc["C6 NRMSE", "95 % CI low"])


def test_a_process_records_the_commit_of_the_code_it_loaded(monkeypatch, tmp_path):
    """A checkout pulled on while a training runs: the run's marker names the commit the process started with."""
    from qsmrep.run import gitinfo

    heads = iter(["loaded1", "pulled2", "other3"])
    monkeypatch.setattr(gitinfo, "git", lambda root, *args: next(heads) if args[0] == "rev-parse" else "")
    gitinfo._loaded_commit.cache_clear()
    try:
        assert [gitinfo.code_commit(), gitinfo.code_commit()] == ["loaded1", "loaded1"]
        assert gitinfo.code_commit(tmp_path) == "pulled2"  # another checkout: read when asked
    finally:
        gitinfo._loaded_commit.cache_clear()


def test_provenance_flags_code_changes_but_not_the_runs_own_outputs(tmp_path):
    import subprocess

    from qsmrep.study.provenance import provenance

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    for folder in ("results", "figures", "qsmrep"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "file.txt").write_text("v1")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")

    clean = provenance("cpu", tmp_path)["commit"]
    assert clean and "uncommitted" not in clean
    (tmp_path / "results" / "file.txt").write_text("rewritten by the run")
    (tmp_path / "figures" / "file.txt").write_text("rewritten by the run")
    assert provenance("cpu", tmp_path)["commit"] == clean
    (tmp_path / "qsmrep" / "file.txt").write_text("edited code")
    assert provenance("cpu", tmp_path)["commit"] == clean + " (with uncommitted changes)"


def test_a_finite_validation_blow_up_counts_as_divergence():
    """Seen in the standard U-Net arm: training loss finite, validation NRMSE 6480 % at epoch 7 and ~1.5e5 % at the
    end. A model far worse than predicting zero (100 %) has diverged, even though no number was infinite."""
    from qsmrep.study.collect import divergence_of

    epochs = np.arange(1, 26)
    nrmse = np.where(epochs < 7, 80.0, 1.5e5)
    history = pd.DataFrame({"epoch": epochs, "train_loss": 0.1, "val_nrmse": nrmse})
    got = divergence_of(history, {"status": "finished"})
    assert (got["diverged_kind"], got["diverged_epoch"], got["last_finite_val_nrmse"]) == ("validation", 7, 80.0)
    spike = history.assign(val_nrmse=np.where(epochs == 7, 6000.0, 80.0))  # one bad epoch, recovered: not diverged
    assert divergence_of(spike, {"status": "finished"})["diverged_kind"] == ""
    stopped = divergence_of(history.iloc[:2], {"status": "diverged", "epoch": 3, "iteration": 5,
                                               "last_finite": {"train_loss": 0.2, "val_nrmse": 90.0}})
    assert (stopped["diverged_kind"], stopped["diverged_epoch"], stopped["last_finite_val_nrmse"]) == ("non-finite", 3, 90.0)


def test_clipping_trial_pairs_each_twin_with_its_run():
    from qsmrep.study.stats import clipping_trial
    from qsmrep.study.plan import study_runs

    clip = [r for r in study_runs("cpu", arms=("none",), clip=True) if r.kind == "clip"]
    assert len(clip) == 6 and {(r.seed, r.arm) for r in clip} == {(0, "none")}
    assert all(r.config().grad_clip == 1.0 for r in clip)
    assert all(r.config().grad_clip == 0.0 for r in study_runs("cpu") if r.kind == "runs")
    narrow = study_runs("cpu", arms=("none", "batch"), guard=True, clip=True, widths=(16,))
    assert sorted((r.kind, r.arm, r.channels) for r in narrow if r.kind != "runs") == sorted(
        [("guard", arm, 16) for arm in ("none", "batch") for _ in range(3)] + [("clip", "none", 16)] * 3)
    with pytest.raises(ValueError, match="widths"):
        study_runs("cpu", arms=("none",), clip=True, widths=(24,))
    with pytest.raises(ValueError, match="standard U-Net"):
        study_runs("cpu", arms=("batch",), clip=True)

    def runs(level, diverged):
        return pd.DataFrame([{"arm": "none", "activation": a, "channels": c, "seed": 0, "epoch": e,
                              "val_nrmse": level(a, c), "diverged": diverged(a, c)} for a, c in VARIANTS for e in range(1, 6)])
    blown = lambda a, c: (a, c) == ("leaky_relu", 16)  # noqa: E731
    table = clipping_trial(runs(lambda a, c: 1e5 if blown(a, c) else 40.0, blown),
                           runs(lambda a, c: 42.0, lambda a, c: False)).set_index(["activation", "channels"])
    assert len(table) == 6
    assert table.loc[("leaky_relu", 16), "diverged without clipping"] and not table.loc[("leaky_relu", 16), "diverged with clipping"]
    assert table.loc[("elu", 32), "end-level val NRMSE with clipping"] == 42.0


def _sweep_metrics(offsets: dict[str, list[float]], maps: int = 4, base: float = 40.0) -> pd.DataFrame:
    """Per-map test metrics of a sweep: setting ``name`` on seed s has NRMSE base + offsets[name][s] ± map noise."""
    rng = np.random.default_rng(5)
    rows = []
    for name, per_seed in offsets.items():
        for seed, offset in enumerate(per_seed):
            noise = rng.normal(0, 1, maps)
            for m, n in enumerate(noise - noise.mean()):  # zero mean over maps: the seed mean is exact
                rows.append({"name": name, "seed": seed, "map": m, "nrmse": base + offset + n, "ssim": 0.6 - offset / 100})
    return pd.DataFrame(rows)


def test_sweep_table_pairs_seeds_against_the_reference_like_a_paired_t_test():
    from scipy import stats

    from qsmrep.study.stats import sweep_table

    reference = [0.0, 5.0, -2.0]
    offsets = {"elu-1": reference, "worse": [4.0, 9.5, 2.5], "better": [-3.0, 1.5, -5.5], "noisy": [10.0, -5.0, 1.0]}
    table = sweep_table(_sweep_metrics(offsets)).set_index("setting")
    assert list(table.index) == ["better", "elu-1", "noisy", "worse"]  # by mean NRMSE
    for name in ("worse", "better", "noisy"):
        low, high = stats.ttest_rel(offsets[name], reference).confidence_interval(0.95)
        row = table.loc[name]
        assert row["Δ vs elu-1"] == pytest.approx(np.mean(offsets[name]) - np.mean(reference))
        assert (row["95 % CI low"], row["95 % CI high"]) == pytest.approx((low, high))
    assert table.verdict.to_dict() == {"better": "better", "elu-1": "", "noisy": "undecided", "worse": "worse"}
    assert table.loc["noisy", "test NRMSE SD over seeds"] == pytest.approx(np.std(np.add(offsets["noisy"], 40), ddof=1))
    assert table.loc["worse", "test NRMSE worst seed"] == pytest.approx(49.5)
    assert (table.seeds == 3).all()


def test_sweep_table_without_the_reference_or_with_one_seed_decides_nothing():
    from qsmrep.study.stats import sweep_table

    alone = sweep_table(_sweep_metrics({"gelu": [3.0, 4.0], "silu": [1.0, 2.0]}))
    assert list(alone.verdict) == ["", ""] and alone["Δ vs elu-1"].isna().all()
    one_seed = sweep_table(_sweep_metrics({"elu-1": [0.0], "gelu": [30.0]})).set_index("setting")
    assert one_seed.loc["gelu", "verdict"] == "undecided" and one_seed.loc["gelu", "Δ vs elu-1"] == pytest.approx(30.0)
    assert np.isnan(one_seed.loc["gelu", "95 % CI low"])


# ------------------------------------------------------------------ the rules corrected after the reference was read
def _seeded_claim_inputs(per_seed_nrmse: dict[str, list[float]]):
    """Paper-like histories for several seeds, and test metrics whose per-seed final NRMSE is given per variant."""
    histories, metrics, costs = _paper_like()
    seeds = len(next(iter(per_seed_nrmse.values())))
    hs, ms = [], []
    for seed in range(seeds):
        hs.append(histories.assign(seed=seed))
        m = metrics.assign(seed=seed)
        for key, values in per_seed_nrmse.items():
            rows = (m.activation + m.channels.astype(str) == key) & (m.epoch == 20)
            m.loc[rows, "nrmse"] = values[seed]
        ms.append(m)
    return pd.concat(hs, ignore_index=True), pd.concat(ms, ignore_index=True), costs


def test_c5_with_an_interval_across_the_boundary_is_undecided_not_refuted():
    """The reference's C5: ELU 32 best on average by a hair, one seed far off: the interval spans zero."""
    from qsmrep.study.claims import UNDECIDED
    from qsmrep.study.stats import seed_statistics

    elu32 = [19.0, 19.2, 19.1, 30.0]  # mean 21.8 > leaky's 20.5: the old rule said "no" on the mean alone
    histories, metrics, costs = _seeded_claim_inputs({"elu32": elu32, "leaky_relu32": [20.5] * 4, "relu32": [21.0] * 4})
    table = seed_statistics(histories, metrics, 4, 20).set_index("claim")
    assert table.loc["C5 NRMSE", "95 % CI low"] < 0 < table.loc["C5 NRMSE", "95 % CI high"]
    assert table.loc["C5 NRMSE", "supports"] is None
    claims = evaluate_claims(histories, metrics, 4, 20, costs).set_index("id")
    assert claims.loc["C5", "verdict"] == UNDECIDED
    assert "the means alone would say not reproduced" in claims.loc["C5", "evidence"]


def test_the_headline_verdict_follows_the_seed_interval_rule():
    """Seed means that favour ELU 16 at the early epoch, with seeds that disagree: the headline says undecided;
    seeds that agree: reproduced; with one seed the point rule decides."""
    from qsmrep.study.claims import UNDECIDED

    histories, metrics, costs = _seeded_claim_inputs({"elu32": [19.5] * 3})
    early = metrics.epoch == 4
    agree = metrics.copy()
    claims = evaluate_claims(histories, agree, 4, 20, costs).set_index("id")
    assert claims.loc["C6", "verdict"] == REPRODUCED and "95 % intervals" in claims.loc["C6", "evidence"]
    noisy = metrics.copy()
    elu16 = early & (noisy.activation == "elu") & (noisy.channels == 16)
    noisy.loc[elu16, "nrmse"] = noisy.loc[elu16, "seed"].map({0: 20.0, 1: 70.0, 2: 25.0})  # mean 38.3 < ReLU's 60
    claims = evaluate_claims(histories, noisy, 4, 20, costs).set_index("id")
    assert claims.loc["C6", "verdict"] == UNDECIDED
    one = evaluate_claims(histories[histories.seed == 0], noisy[noisy.seed == 0], 4, 20, costs).set_index("id")
    assert one.loc["C6", "verdict"] == REPRODUCED


def test_c7_fails_when_a_relu_pair_matches_as_well_as_the_elu_pair():
    histories, metrics, costs = _paper_like()
    assert evaluate_claims(histories, metrics, 4, 20, costs).set_index("id").loc["C7", "verdict"] == REPRODUCED
    matched = metrics.copy()
    relu16 = (matched.activation == "relu") & (matched.channels == 16) & (matched.epoch == 20)
    matched.loc[relu16, "nrmse"] = 21.0  # ReLU 16 = ReLU 32: its ratio 1.00 beats ELU's 20/19.5 = 1.03
    claims = evaluate_claims(histories, matched, 4, 20, costs).set_index("id")
    assert claims.loc["C7", "verdict"] == NOT_REPRODUCED and "relu 1.00" in claims.loc["C7", "evidence"]
    slow = costs.assign(seconds_to_target=[10.0 if c == 16 else 5.0 for c in costs.channels], target_nrmse=25.0)
    claims = evaluate_claims(histories, metrics, 4, 20, slow).set_index("id")  # ELU 16 slower to the target
    assert claims.loc["C7", "verdict"] == NOT_REPRODUCED and "10 / 5 s" in claims.loc["C7", "evidence"]


def test_c7_compares_training_times_only_from_one_machine():
    """ELU 16 and ELU 32 timed on different machines (a study trained over several sittings): the time condition is
    not judged, so a C7 whose NRMSE condition holds is not testable, and one whose NRMSE condition fails is still
    not reproduced; the same machine on both sides (or none recorded, as before 2026-12-06) judges it, and so do
    the steps timed again on one machine."""
    from qsmrep.study.claims import NOT_TESTABLE_MACHINES

    histories, metrics, costs = _paper_like()
    costs = costs.assign(seconds_to_target=[5.0 if c == 16 else 10.0 for c in costs.channels], target_nrmse=25.0)
    xeon, epyc = "Intel Xeon, AVX512, 2 threads", "AMD EPYC, AVX512, 1 thread"
    same = costs.assign(machine=xeon)
    assert evaluate_claims(histories, metrics, 4, 20, same).set_index("id").loc["C7", "verdict"] == REPRODUCED
    mixed = costs.assign(machine=[epyc if c == 16 else xeon for c in costs.channels])
    c7 = evaluate_claims(histories, metrics, 4, 20, mixed).set_index("id").loc["C7"]
    assert c7.verdict == NOT_TESTABLE_MACHINES and f"ELU16 was timed on {epyc}, ELU32 on {xeon}" in c7.evidence
    both = costs.assign(machine=f"{epyc} + {xeon}")  # every variant's seeds split over the two machines
    assert evaluate_claims(histories, metrics, 4, 20, both).set_index("id").loc["C7", "verdict"] == NOT_TESTABLE_MACHINES
    matched = metrics.copy()
    matched.loc[(matched.activation == "relu") & (matched.channels == 16) & (matched.epoch == 20), "nrmse"] = 21.0
    assert evaluate_claims(histories, matched, 4, 20, mixed).set_index("id").loc["C7", "verdict"] == NOT_REPRODUCED
    # the steps timed again on one machine (collect.cost_table does it where the machines differ) decide the time
    for small, large, verdict in ((300.0, 900.0, REPRODUCED), (900.0, 300.0, NOT_REPRODUCED),
                                  (float("nan"), 300.0, NOT_REPRODUCED)):
        retimed = mixed.assign(seconds_to_target_here=[small if c == 16 else large for c in mixed.channels],
                               timed_here_on="Here CPU, AVX2, no native bf16, 2 threads")
        c7 = evaluate_claims(histories, metrics, 4, 20, retimed).set_index("id").loc["C7"]
        assert c7.verdict == verdict, (small, large, c7.evidence)
        assert "timed again on one machine (Here CPU, AVX2, no native bf16, 2 threads)" in c7.evidence


def test_c8_is_not_testable_on_runs_that_recorded_only_never_positive_channels():
    from qsmrep.study.claims import NOT_RECORDED

    histories, metrics, costs = _paper_like()
    claims = evaluate_claims(histories.drop(columns="zero_gradient_fraction"), metrics, 4, 20, costs).set_index("id")
    assert claims.loc["C8", "verdict"] == NOT_RECORDED


def test_the_summary_states_networks_against_baselines_and_the_claims():
    from qsmrep.study.summary import summary_markdown

    histories, metrics, costs = _paper_like()
    per_map = pd.concat([metrics.assign(arm="batch", model=metrics.activation + metrics.channels.astype(str), seed=0),
                         pd.DataFrame([{"arm": "", "model": "TKD", "activation": "", "channels": 0, "epoch": 0, "map": m,
                                        "nrmse": 10.0, "ssim": 0.9, "seed": 0} for m in range(3)])], ignore_index=True)
    claims = {"batch": evaluate_claims(histories, metrics, 4, 20, costs)}
    text = summary_markdown(per_map, claims, 20)
    assert "the best network, elu32 (batch), reaches 19.5 %" in text and "TKD 10.0 %" in text
    assert "1.9× the best baseline's" in text and "reproduced: C1, C2, C3, C4, C5, C6, C7, C8" in text


def test_the_phantom_summary_says_plainly_how_the_networks_fare_and_why():
    from qsmrep.run.config import Config
    from qsmrep.study.phantom_check import phantom_summary

    rows = [{"label": f"batch/elu16_s{s}@10", "model": "elu16", "arm": "batch", "epoch": 10, "nrmse": v, "ssim": 0.2}
            for s, v in enumerate((70.0, 80.0))]
    rows += [{"label": "none/relu16_s0@10", "model": "relu16", "arm": "none", "epoch": 10, "nrmse": 5e4, "ssim": 0.0},
             {"label": "TKD", "model": "TKD", "arm": None, "epoch": 0, "nrmse": 20.0, "ssim": 0.8}]
    text, table = phantom_summary(pd.DataFrame(rows), Config.from_profile("smoke", epochs=10, early_epoch=2))
    assert "score 75.0–75.0 % NRMSE" in text and "1 blown-up variant(s)" in text and "TKD's 20.0 %" in text
    assert "do not generalise" in text and "standard deviation of" in text
    assert list(table.model) == ["TKD", "elu16", "relu16"] and table.loc[1, "seeds"] == 2


def test_convergence_per_run_names_the_runs_that_did_not_level_off():
    """Three seeds of paper-like curves; seed 2 of ELU 32 replaced by a straight fall, 100 − 4·epoch (end level:
    median of epochs 17–20 = 26 %, against 42 % over epochs 13–16: still moving by 38 %). Each run is judged by
    C1's rule on its own curve."""
    from qsmrep.study.curves import convergence_by_run, convergence_sentence, levelled_off

    histories, metrics, costs = _paper_like()
    runs = pd.concat([histories.assign(seed=s) for s in range(3)], ignore_index=True)
    rows = (runs.activation == "elu") & (runs.channels == 32) & (runs.seed == 2)
    runs.loc[rows, "val_nrmse"] = 100.0 - 4.0 * runs.loc[rows, "epoch"]
    table = convergence_by_run(runs)
    assert len(table) == 18 and table.levelled_off.sum() == 17
    missed = table[~table.levelled_off].iloc[0]
    assert (missed.activation, missed.channels, missed.seed) == ("elu", 32, 2)
    assert missed.end == pytest.approx(100 - 4 * 18.5) and missed.first == 96.0
    assert missed.change_last_20pct == pytest.approx(100 * 16 / (100 - 4 * 14.5))
    sentence = convergence_sentence(table)
    assert "elu32 2 of 3" in sentence and "relu16 3 of 3" in sentence and "Did not: elu32 seed 2." in sentence
    assert levelled_off(pd.Series([100.0, 60.0, 50.0, np.nan, 40.0]))["levelled_off"] is False  # non-finite
    assert levelled_off(pd.Series([100.0, 80.0, 70.0, 65.0, 64.0]))["levelled_off"] is False  # end 64 % of first
    claims = evaluate_claims(runs, pd.concat([metrics.assign(seed=s) for s in range(3)]), 4, 20, costs)
    assert "Did not: elu32 seed 2." in claims.set_index("id").loc["C1", "evidence"]
