"""Tests for qsmrep.core.metrics against closed-form values and independent implementations."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from qsmrep.core import metrics as M

SHAPE = (24, 22, 20)  # odd/unequal sizes, all ≥ 11 (SSIM window)


def _smooth_map(seed: int, shape=SHAPE) -> np.ndarray:
    """A smooth random χ map in ppm, demeaned over the whole volume."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    x = 0.1 * x / x.std()
    return x - x.mean()


def _ball_mask(shape=SHAPE, radius=8.0) -> np.ndarray:
    c = [(s - 1) / 2 for s in shape]
    g = np.meshgrid(*[np.arange(s) - ci for s, ci in zip(shape, c)], indexing="ij")
    return sum(gi**2 for gi in g) <= radius**2


@pytest.fixture
def ref():
    return _smooth_map(0)


@pytest.fixture
def mask():
    return _ball_mask()


def _nrmse_by_hand(p, r, m):
    p = p[m] - p[m].mean()
    r = r[m] - r[m].mean()
    return 100 * np.sqrt(np.sum((p - r) ** 2)) / np.sqrt(np.sum(r**2))


# ---------------------------------------------------------------------------- NRMSE
def test_nrmse_identical_is_zero(ref):
    assert M.nrmse(ref, ref) == pytest.approx(0.0, abs=1e-12)


def test_nrmse_of_zero_prediction_is_100(ref, mask):
    assert M.nrmse(np.zeros_like(ref), ref) == pytest.approx(100.0, rel=1e-12)
    assert M.nrmse(np.zeros_like(ref), ref, mask) == pytest.approx(100.0, rel=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.5, 0.9, 1.3, 2.0, -1.0])
def test_nrmse_of_scaled_map(ref, c):
    assert abs(ref.mean()) < 1e-12
    assert M.nrmse(c * ref, ref) == pytest.approx(100 * abs(c - 1), abs=1e-9)


def test_nrmse_ignores_constant_offset(ref, mask):
    assert M.nrmse(ref + 3.0, ref) == pytest.approx(0.0, abs=1e-9)
    assert M.nrmse(ref + 3.0, ref, mask) == pytest.approx(0.0, abs=1e-9)


def test_nrmse_mask_ignores_outside_voxels(ref, mask):
    rng = np.random.default_rng(1)
    pred = ref + 0.02 * rng.standard_normal(ref.shape)
    base = M.nrmse(pred, ref, mask)
    pred2 = pred.copy()
    pred2[~mask] += 10 * rng.standard_normal(int((~mask).sum()))
    ref2 = ref.copy()
    ref2[~mask] = -7.0
    assert M.nrmse(pred2, ref2, mask) == pytest.approx(base, rel=1e-12)
    # ... whereas without the mask the perturbation counts
    assert M.nrmse(pred2, ref, None) > 5 * M.nrmse(pred, ref, None)


def test_nrmse_mask_matches_hand_computation(ref, mask):
    rng = np.random.default_rng(2)
    pred = 0.8 * ref + 0.03 * rng.standard_normal(ref.shape) + 0.1
    pred[~mask] = 0.0  # differs from the unmasked value
    expected = _nrmse_by_hand(pred, ref, mask)
    assert M.nrmse(pred, ref, mask) == pytest.approx(expected, rel=1e-12)
    assert M.nrmse(pred, ref, mask) != pytest.approx(M.nrmse(pred, ref), rel=1e-3)


def test_mask_accepts_zero_one_integers(ref, mask):
    pred = 0.7 * ref
    assert M.nrmse(pred, ref, mask.astype(np.uint8)) == pytest.approx(M.nrmse(pred, ref, mask))


# ---------------------------------------------------------------------------- dNRMSE
@pytest.mark.parametrize("a,b", [(2.5, -0.3), (0.2, 1.0), (-1.5, 0.0)])
def test_dnrmse_of_linear_transform_is_zero(ref, mask, a, b):
    assert M.dnrmse(a * ref + b, ref) == pytest.approx(0.0, abs=1e-6)
    assert M.dnrmse(a * ref + b, ref, mask) == pytest.approx(0.0, abs=1e-6)


def test_dnrmse_not_above_nrmse_for_noisy_scaled_map(ref, mask):
    # The LS residual r = χ̂ − aχ − b is no longer than χ̂ − χ, and dNRMSE = 100‖r‖/(|a|‖χ‖),
    # so dNRMSE ≤ NRMSE/|a|: guaranteed ≤ NRMSE when the fitted |a| ≥ 1, and in practice when the
    # scaling error dominates the noise.
    rng = np.random.default_rng(3)
    for scale, noise in ((1.2, 0.03), (1.4, 0.03), (2.0, 0.05), (0.6, 0.005), (0.8, 0.01)):
        pred = scale * ref + noise * rng.standard_normal(ref.shape) + 0.2
        for m in (None, mask):
            d, n = M.dnrmse(pred, ref, m), M.nrmse(pred, ref, m)
            assert 0 < d <= n + 1e-9, (scale, noise, d, n)


def test_dnrmse_bounded_by_nrmse_over_slope(ref, mask):
    rng = np.random.default_rng(8)
    for scale in (0.3, 0.6, 1.5):
        pred = scale * ref + 0.05 * rng.standard_normal(ref.shape)
        a = np.polyfit(ref[mask], pred[mask], 1)[0]
        assert M.dnrmse(pred, ref, mask) <= M.nrmse(pred, ref, mask) / abs(a) + 1e-9


def test_dnrmse_matches_polyfit(ref, mask):
    rng = np.random.default_rng(4)
    pred = 0.7 * ref + 0.04 * rng.standard_normal(ref.shape) - 0.05
    a, b = np.polyfit(ref[mask], pred[mask], 1)
    corrected = np.where(mask, (pred - b) / a, 0.0)
    assert M.dnrmse(pred, ref, mask) == pytest.approx(_nrmse_by_hand(corrected, ref, mask),
                                                      rel=1e-9)


def test_dnrmse_zero_slope_gives_nan_with_warning(ref):
    with pytest.warns(RuntimeWarning, match="slope"):
        assert np.isnan(M.dnrmse(np.zeros_like(ref), ref))


# ---------------------------------------------------------------------------- HFEN
def _hfen_by_hand(pred, ref, mask, sigma=1.5):
    p = np.where(mask, pred - pred[mask].mean(), 0.0)
    r = np.where(mask, ref - ref[mask].mean(), 0.0)
    lp = ndimage.gaussian_laplace(p, sigma)
    lr = ndimage.gaussian_laplace(r, sigma)
    return 100 * np.sqrt(np.sum((lp - lr)[mask] ** 2) / np.sum(lr[mask] ** 2))


def test_hfen_identical_is_zero(ref, mask):
    assert M.hfen(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert M.hfen(ref + 1.0, ref, mask) == pytest.approx(0.0, abs=1e-9)


def test_hfen_positive_for_blur_and_grows_with_blur(ref):
    values = [M.hfen(ndimage.gaussian_filter(ref, s), ref) for s in (0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert values == sorted(values)


def test_hfen_matches_independent_implementation(ref, mask):
    rng = np.random.default_rng(5)
    pred = ndimage.gaussian_filter(ref, 1.0) + 0.01 * rng.standard_normal(ref.shape)
    assert M.hfen(pred, ref, mask) == pytest.approx(_hfen_by_hand(pred, ref, mask), rel=1e-10)
    full = np.ones(ref.shape, bool)
    assert M.hfen(pred, ref) == pytest.approx(_hfen_by_hand(pred, ref, full), rel=1e-10)


# ---------------------------------------------------------------------------- SSIM / XSIM
def _skimage(pred, ref, data_range, k1, k2):
    # inputs already mean-zero over the volume, so demeaning is a no-op
    return structural_similarity(pred, ref, data_range=data_range, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, K1=k1, K2=k2)


def _noisy(ref, level, seed=6):
    pred = ref + level * np.random.default_rng(seed).standard_normal(ref.shape)
    return pred - pred.mean()


def test_ssim_matches_skimage_without_mask(ref):
    pred = _noisy(ref, 0.03)
    expected = _skimage(pred, ref, ref.max() - ref.min(), 0.01, 0.03)
    assert M.ssim(pred, ref) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_ssim_identical_is_one(ref, mask):
    assert M.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise(ref, mask):
    levels = [0.0, 0.01, 0.03, 0.1, 0.3]
    for m in (None, mask):
        values = [M.ssim(_noisy(ref, s), ref, m) for s in levels]
        assert all(a > b for a, b in zip(values, values[1:])), values


def test_ssim_with_mask_is_mean_of_map_inside_mask(ref, mask):
    pred = _noisy(ref, 0.03)
    p = np.where(mask, pred - pred[mask].mean(), 0.0)
    r = np.where(mask, ref - ref[mask].mean(), 0.0)
    _, smap = structural_similarity(p, r, data_range=r[mask].max() - r[mask].min(),
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, K1=0.01, K2=0.03, full=True)
    assert M.ssim(pred, ref, mask) == pytest.approx(smap[mask].mean(), rel=1e-12)
    # values outside the mask do not matter
    pred2 = pred.copy()
    pred2[~mask] = 5.0
    assert M.ssim(pred2, ref, mask) == pytest.approx(M.ssim(pred, ref, mask), rel=1e-12)


def test_xsim_identical_is_one(ref, mask):
    assert M.xsim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert M.xsim(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)


def _xsim_by_hand(pred, ref, mask):
    """XSIM as the challenge's compute_xsim.m (v2.0) spells it: an explicit 7³ Gaussian (σ = 1.5, sum 1)
    slid over edge-replicated maps, written with shifts instead of scipy.ndimage."""
    x = np.where(mask, pred - pred[mask].mean(), 0.0)
    y = np.where(mask, ref - ref[mask].mean(), 0.0)
    offsets = np.arange(-3, 4)
    g = np.exp(-(offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def local_mean(a):
        padded = np.pad(a, 3, mode="edge")
        out = np.zeros_like(a)
        for i, j, k in np.ndindex(7, 7, 7):
            out += g[i, j, k] * padded[i:i + a.shape[0], j:j + a.shape[1], k:k + a.shape[2]]
        return out

    mx, my = local_mean(x), local_mean(y)
    sxx, syy, sxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.001**2
    index = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return index[mask].mean()


def test_xsim_matches_the_challenge_reference_and_differs_from_ssim(ref, mask):
    pred = _noisy(ref, 0.03)
    for m in (mask, np.ones(ref.shape, bool)):
        assert M.xsim(pred, ref, m) == pytest.approx(_xsim_by_hand(pred, ref, m), rel=1e-10)
    assert M.xsim(pred, ref) == pytest.approx(_xsim_by_hand(pred, ref, np.ones(ref.shape, bool)), rel=1e-10)
    # the 11³ window of skimage (SSIM's) is not XSIM's 7³ one, even with XSIM's constants
    assert abs(M.xsim(pred, ref, mask) - M.ssim(pred, ref, mask)) > 1e-3
    assert M.xsim(pred, ref) != pytest.approx(_skimage(pred, ref, 1.0, 0.01, 0.001), rel=1e-6)
    with pytest.raises(ValueError, match="at least 3 voxels"):
        M.xsim(np.ones((2, 8, 8)), np.arange(128.0).reshape(2, 8, 8))


def test_xsim_decreases_with_noise(ref, mask):
    values = [M.xsim(_noisy(ref, s), ref, mask) for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_ssim_returns_python_float(ref, mask):
    for name, f in M.METRICS.items():
        assert type(f(0.9 * ref, ref, mask)) is float, name


def test_torch_tensors_accepted(ref, mask):
    torch = pytest.importorskip("torch")
    t_pred = torch.tensor(0.8 * ref, requires_grad=True)
    t_ref = torch.tensor(ref)
    assert M.nrmse(t_pred, t_ref, torch.tensor(mask)) == pytest.approx(
        M.nrmse(0.8 * ref, ref, mask))


# ---------------------------------------------------------------------------- table & helpers
def test_metric_table():
    names = {"nrmse", "dnrmse", "hfen", "ssim", "xsim"}
    assert set(M.METRICS) == names
    assert set(M.HIGHER_IS_BETTER) == names
    assert M.HIGHER_IS_BETTER["ssim"] and M.HIGHER_IS_BETTER["xsim"]
    assert not any(M.HIGHER_IS_BETTER[n] for n in ("nrmse", "dnrmse", "hfen"))


def test_compute_metrics(ref, mask):
    pred = _noisy(ref, 0.02)
    out = M.compute_metrics(pred, ref, mask)
    assert list(out) == list(M.METRICS)
    for n, v in out.items():
        assert v == pytest.approx(M.METRICS[n](pred, ref, mask))
    sub = M.compute_metrics(pred, ref, names=["ssim", "nrmse"])
    assert list(sub) == ["ssim", "nrmse"]
    with pytest.raises(ValueError, match="did you mean 'nrmse'"):
        M.compute_metrics(pred, ref, names=["nrsme"])


def test_summarize_against_numpy():
    rng = np.random.default_rng(7)
    table = pd.DataFrame({
        "act": ["elu"] * 4 + ["relu"] * 3 + ["lrelu"],
        "ch": [16, 16, 32, 32, 16, 16, 16, 32],
        "nrmse": rng.uniform(10, 50, 8),
        "ssim": rng.uniform(0.5, 1, 8),
    })
    s = M.summarize(table, ["act", "ch"])
    assert {"act", "ch", "n", "nrmse_mean", "nrmse_sd", "ssim_mean", "ssim_sd"} <= set(s)
    assert len(s) == 4
    for _, row in s.iterrows():
        sel = table[(table.act == row.act) & (table.ch == row.ch)]
        assert row.n == len(sel)
        for c in ("nrmse", "ssim"):
            vals = sel[c].to_numpy()
            assert row[f"{c}_mean"] == pytest.approx(np.mean(vals))
            sd = np.std(vals, ddof=1) if len(vals) > 1 else 0.0
            assert row[f"{c}_sd"] == pytest.approx(sd)
    single = s[(s.act == "lrelu")].iloc[0]
    assert single.n == 1 and single.nrmse_sd == 0.0

    s1 = M.summarize(table, "act", metrics="nrmse")
    assert list(s1.columns) == ["act", "n", "nrmse_mean", "nrmse_sd", "nrmse_n"]
    elu = table[table.act == "elu"].nrmse.to_numpy()
    row = s1[s1.act == "elu"].iloc[0]
    assert row.nrmse_mean == pytest.approx(elu.mean())
    assert row.nrmse_sd == pytest.approx(elu.std(ddof=1))


def test_summarize_counts_the_defined_values_and_skips_the_undefined():
    """An undefined metric (NaN, e.g. the dNRMSE of a constant prediction) is left out of mean and
    sd, and ``<metric>_n`` says how many values these rest on, against numpy's nan-aware reductions."""
    dnrmse = np.array([12.0, 15.0, np.nan, 20.0, np.nan, np.nan, np.nan, 30.0])
    table = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 3 + ["c"], "dnrmse": dnrmse, "nrmse": np.arange(8.0)})
    s = M.summarize(table, "model").set_index("model")
    assert list(s.n) == [4, 3, 1]
    assert list(s.dnrmse_n) == [3, 0, 1] and list(s.nrmse_n) == [4, 3, 1]
    assert s.loc["a", "dnrmse_mean"] == pytest.approx(np.nanmean(dnrmse[:4]))
    assert s.loc["a", "dnrmse_sd"] == pytest.approx(np.nanstd(dnrmse[:4], ddof=1))
    assert np.isnan(s.loc["b", "dnrmse_mean"]) and np.isnan(s.loc["b", "dnrmse_sd"])
    assert s.loc["c", "dnrmse_mean"] == 30.0 and s.loc["c", "dnrmse_sd"] == 0.0

    cells = M.format_summary(s.reset_index(), "dnrmse", 1)
    assert cells == [M.format_mean_sd(np.nanmean(dnrmse[:4]), np.nanstd(dnrmse[:4], ddof=1), 1) + " (3 of 4 defined)",
                     "undefined (0 of 3)", "30.0 ± 0.0"]
    assert M.format_summary(s.reset_index(), "nrmse", 1)[1] == M.format_mean_sd(5.0, 1.0, 1)
    older = s.reset_index().drop(columns=["nrmse_n", "dnrmse_n"])  # a table written before the count existed
    assert M.format_summary(older, "nrmse", 1) == M.format_summary(s.reset_index(), "nrmse", 1)


def test_every_metric_has_its_report_digits():
    assert list(M.REPORT_DIGITS) == list(M.METRICS)
    assert M.format_summary(pd.DataFrame({"n": [2], "ssim_mean": [0.91234], "ssim_sd": [0.01234], "ssim_n": [2]}),
                            "ssim") == ["0.912 ± 0.012"]


def test_format_mean_sd():
    assert M.format_mean_sd(12.34, 0.4, 1) == "12.3 ± 0.4"
    assert M.format_mean_sd(0.91234, 0.01234, 3) == "0.912 ± 0.012"


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("f", list(M.METRICS.values()), ids=list(M.METRICS))
def test_bad_inputs_raise(f, ref, mask):
    with pytest.raises(ValueError, match="same shape"):
        f(ref[:-1], ref)
    with pytest.raises(ValueError, match="pred must be a 3D"):
        f(ref[0], ref[0])
    with pytest.raises(ValueError, match="ref must be a 3D"):
        f(ref, ref[None])
    bad = ref.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="pred contains 1 non-finite"):
        f(bad, ref)
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="ref contains 1 non-finite"):
        f(ref, bad)
    with pytest.raises(ValueError, match="mask is empty"):
        f(ref, ref, np.zeros(ref.shape, bool))
    with pytest.raises(ValueError, match="mask must have the shape"):
        f(ref, ref, mask[:-1])
    with pytest.raises(ValueError, match="mask must be boolean"):
        f(ref, ref, np.full(ref.shape, 0.5))
    with pytest.raises(ValueError, match="ref is constant"):
        f(ref, np.full(ref.shape, 0.3))
    const_in_mask = np.where(mask, 0.1, ref)
    with pytest.raises(ValueError, match="ref is constant"):
        f(ref, const_in_mask, mask)


def test_nrmse_torch_matches_the_numpy_metric(ref, mask):
    """The batched on-device NRMSE of validation equals the challenge metric, item by item."""
    import torch

    rng = np.random.default_rng(4)
    preds = [ref * 0.8 + rng.normal(0, 0.05, ref.shape), ref + 0.3, rng.normal(0, 0.1, ref.shape)]
    masks = [mask, mask, np.ones_like(mask)]
    batch = torch.stack([torch.from_numpy(p).float() for p in preds])[:, None]
    refs = torch.from_numpy(np.stack([ref] * 3)).float()[:, None]
    got = M.nrmse_torch(batch, refs, torch.from_numpy(np.stack(masks))[:, None])
    for value, p, m in zip(got.tolist(), preds, masks):
        assert value == pytest.approx(M.nrmse(p.astype(np.float32), ref.astype(np.float32), m), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        M.nrmse_torch(batch, refs[:2], refs[:2] > 0)
    with pytest.raises(ValueError, match="mask is empty"):
        M.nrmse_torch(batch, refs, torch.zeros_like(refs, dtype=torch.bool))
    with pytest.raises(ValueError, match="batched"):  # one unbatched map would give one NRMSE per x-slice
        M.nrmse_torch(batch[0, 0], refs[0, 0], refs[0, 0] > 0)
    with pytest.raises(ValueError, match="bool"):
        M.nrmse_torch(batch, refs, torch.ones_like(refs))
    with pytest.raises(ValueError, match="ref is constant"):
        M.nrmse_torch(batch, torch.full_like(refs, 0.2), refs > -1)
    diverged = batch.clone()
    diverged[1] = float("nan")
    assert torch.isnan(M.nrmse_torch(diverged, refs, refs > -1)).tolist() == [False, True, False]


def test_metrics_accept_half_precision_tensors(ref, mask):
    """bf16/fp16 tensors (autocast outputs) are scored as their float32 values, not refused by numpy."""
    import torch

    for dtype in (torch.bfloat16, torch.float16):
        pred = torch.from_numpy(ref * 0.9).to(dtype)
        expected = M.nrmse(pred.float().numpy(), ref, mask)
        assert M.nrmse(pred, ref, mask) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ the torch metrics of evaluation on the device
def _generator_cases():
    """Four generator maps (one cropped to an odd shape) with predictions of several kinds of error."""
    import torch

    from qsmrep.core.synth import render_maps

    maps = render_maps(40, [11, 12, 13, 14])
    cases = []
    for i, kind in enumerate(("scaled+noise", "offset", "smooth", "odd-shape")):
        chi, mask = maps["chi"][i], maps["mask"][i]
        noise = torch.randn(chi.shape, generator=torch.Generator().manual_seed(i))
        pred = {"scaled+noise": 0.7 * chi + 0.03 * noise, "offset": chi + 0.05,
                "smooth": torch.from_numpy(ndimage.gaussian_filter(chi.numpy(), 1.2)).float(),
                "odd-shape": 1.1 * chi - 0.02 * noise}[kind]
        if kind == "odd-shape":
            pred, chi, mask = pred[3:36, 1:37, :39], chi[3:36, 1:37, :39], mask[3:36, 1:37, :39]
        cases.append((kind, pred, chi, mask))
    return cases


def test_device_metrics_equal_the_numpy_metrics_on_several_maps():
    """The torch metrics of evaluation (float64, on the maps' device) against the numpy/scipy/skimage ones."""
    import torch

    from qsmrep.core.metrics_torch import METRICS_TORCH, compute_metrics_torch

    assert list(METRICS_TORCH) == list(M.METRICS)
    for kind, pred, chi, mask in _generator_cases():
        expected = M.compute_metrics(pred, chi, mask)
        got = dict(zip(METRICS_TORCH, compute_metrics_torch(pred, chi, mask).tolist()))
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-4), (kind, name)
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (kind, name)  # in fact to round-off
        bf16 = dict(zip(METRICS_TORCH, compute_metrics_torch(pred.bfloat16(), chi, mask).tolist()))
        for name, value in M.compute_metrics(pred.bfloat16(), chi, mask).items():  # autocast outputs, as numpy reads them
            assert bf16[name] == pytest.approx(value, rel=1e-9), (kind, name)
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("mode", ["reflect", "nearest"])
def test_gaussian_filters_equal_scipy(mode):
    import torch

    from qsmrep.core.metrics_torch import gaussian_filter, laplacian_of_gaussian

    x = np.random.default_rng(5).standard_normal((13, 9, 17))  # a side shorter than a kernel: edges reflect twice
    for sigma, truncate in ((1.5, 3.5), (1.5, 2.0), (0.8, 4.0)):
        got = gaussian_filter(torch.from_numpy(x), sigma, truncate, mode).numpy()
        np.testing.assert_allclose(got, ndimage.gaussian_filter(x, sigma, mode=mode, truncate=truncate), rtol=0, atol=1e-12)
    if mode == "reflect":
        np.testing.assert_allclose(laplacian_of_gaussian(torch.from_numpy(x)).numpy(),
                                   ndimage.gaussian_laplace(x, M.HFEN_SIGMA), rtol=0, atol=1e-12)


def test_device_metrics_read_nothing_back(monkeypatch):
    """No metric reads a value back to the host (on a GPU each read would wait for the device)."""
    import torch

    from qsmrep.core.metrics_torch import compute_metrics_torch

    kind, pred, chi, mask = _generator_cases()[0]
    reads = []
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _o=original, _n=name, **k: reads.append(_n) or _o(t, *a, **k))
    values = compute_metrics_torch(pred, chi, mask)
    M.nrmse_torch(pred[None], chi[None], mask[None], check=False)
    monkeypatch.undo()
    assert reads == [] and values.shape == (5,)


def test_device_metrics_give_nan_where_the_numpy_metrics_refuse():
    import torch

    from qsmrep.core.metrics_torch import METRICS_TORCH, compute_metrics_torch, dnrmse

    kind, pred, chi, mask = _generator_cases()[0]
    diverged = pred.clone()
    diverged[5, 5, 5] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        M.nrmse(diverged, chi, mask)
    assert torch.isnan(compute_metrics_torch(diverged, chi, mask)).all()
    with pytest.warns(RuntimeWarning, match="slope"):
        assert np.isnan(M.dnrmse(torch.zeros_like(chi), chi, mask))
    assert torch.isnan(dnrmse(torch.zeros_like(chi), chi, mask))
    for name, metric in METRICS_TORCH.items():
        with pytest.raises(ValueError, match="shape"):
            metric(pred, chi[:-1], mask[:-1])
        with pytest.raises(ValueError, match="bool"):
            metric(pred, chi, mask.float())
    with pytest.raises(ValueError, match="11 voxels"):
        METRICS_TORCH["ssim"](pred[:10], chi[:10], mask[:10])
