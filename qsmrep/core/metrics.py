"""Image-quality metrics for susceptibility maps, as plain numpy functions.

Every metric has the signature ``metric(pred, ref, mask=None) -> float``:

* ``pred`` -- the reconstructed susceptibility map χ̂, shape ``(X, Y, Z)``, in ppm;
* ``ref``  -- the ground-truth map χ, same shape, in ppm;
* ``mask`` -- optional boolean array of the same shape (``None``: the whole volume).

Inputs may be anything ``np.asarray`` accepts; torch tensors (CPU or GPU, with or without
``requires_grad``) are detached and copied to the CPU first. Computation is in float64.

Conventions follow the QSM reconstruction challenge 2.0 (Marques et al. 2021, MRM 86:526,
doi:10.1002/mrm.28754): inside the mask both maps are demeaned (the mean *within the mask* is
subtracted), and norms are taken over the mask voxels only.

==========  =====================================================  ========  ===============
name        definition                                             unit      better
==========  =====================================================  ========  ===============
``nrmse``   100 · ‖χ̂ − χ‖₂ / ‖χ‖₂                                  percent   lower
``dnrmse``  NRMSE of (χ̂ − b)/a, with χ̂ ≈ a·χ + b least squares     percent   lower
``hfen``    100 · ‖LoG(χ̂) − LoG(χ)‖₂ / ‖LoG(χ)‖₂, σ = 1.5 voxels   percent   lower
``ssim``    3D SSIM, Gaussian window σ = 1.5, K1 = 0.01,           unitless  higher
            K2 = 0.03, L = range of χ in the mask
``xsim``    3D SSIM with L = 1 ppm, K1 = 0.01, K2 = 0.001,         unitless  higher
            7³ Gaussian window σ = 1.5 (Milovic et al. 2024, MRM,
            doi:10.1002/mrm.30271, and the challenge's code)
==========  =====================================================  ========  ===============

``METRICS`` maps each name to its function and ``HIGHER_IS_BETTER`` to its direction (the
fastMRI ``evaluate.py`` pattern). ``compute_metrics`` evaluates several at once,
``summarize`` reduces a results table to mean ± sd per group (with the count of defined values),
``format_mean_sd`` prints one such pair and ``format_summary`` a column of them.

Bad input (shapes differ, not 3D, non-finite values, empty mask, constant reference) raises
``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import ndimage

from qsmrep.core.masked import demean, prepare, relative_error
from qsmrep.core.similarity import ssim, xsim
from qsmrep.registry import did_you_mean

__all__ = [
    "nrmse",
    "nrmse_torch",
    "dnrmse",
    "hfen",
    "ssim",
    "xsim",
    "METRICS",
    "HIGHER_IS_BETTER",
    "compute_metrics",
    "summarize",
    "format_mean_sd",
    "format_summary",
    "REPORT_DIGITS",
    "HFEN_SIGMA",
]

#: Standard deviation (voxels) of the Laplacian-of-Gaussian filter used by HFEN.
HFEN_SIGMA = 1.5
# |a| below this makes the dNRMSE correction (χ̂ − b)/a meaningless (a is dimensionless).
_SLOPE_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def nrmse(pred, ref, mask=None) -> float:
    """Normalised root-mean-square error, in percent (lower is better).

    .. math:: \\mathrm{NRMSE} = 100 \\cdot \\|\\hat\\chi - \\chi\\|_2 / \\|\\chi\\|_2

    computed over the voxels of ``mask`` after demeaning ``pred`` (χ̂) and ``ref`` (χ) within
    the mask (QSM challenge 2.0, Marques et al. 2021). 0 for a perfect map, 100 for χ̂ = 0;
    for χ̂ = c·χ it is 100·|c − 1|.

    Args:
        pred, ref: susceptibility maps (ppm), shape ``(X, Y, Z)``.
        mask: boolean ``(X, Y, Z)`` or ``None`` (whole volume).
    """
    p, r, m = prepare(pred, ref, mask)
    p0, r0 = demean(p, r, m)
    return relative_error(p0, r0, m)


def nrmse_torch(pred, ref, mask, check: bool = True):
    """:func:`nrmse` of a batch on its own device (validation on the GPU, without a copy to the CPU).

    Args:
        pred, ref: (N, ..., X, Y, Z) float tensors (ppm), any device; computed in float64.
        mask: bool tensor of the same shape.
        check: refuse empty masks and constant references. Each check reads a value back from the
            device (a host synchronisation); ``False`` skips both and reads nothing (NaN or inf
            where they would have refused), for maps known to be valid (the generator's).

    Returns:
        (N,) float64 tensor of NRMSE in percent: per item, both maps demeaned inside the mask,
        100 · ‖χ̂ − χ‖₂ / ‖χ‖₂ over the mask voxels; NaN where a prediction is not finite (a diverged
        model is scored, not stopped).

    Raises:
        ValueError: shapes differ, the input is not batched, the mask is not bool or empty for an
            item, or the reference is constant inside the mask.
    """
    import torch

    if pred.shape != ref.shape or ref.shape != mask.shape:
        raise ValueError(f"pred, ref and mask must have the same shape, got {tuple(pred.shape)}, "
                         f"{tuple(ref.shape)} and {tuple(mask.shape)}")
    if pred.dim() < 4:
        raise ValueError(f"pred, ref and mask must be batched, (N, ..., X, Y, Z), got shape {tuple(pred.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    weight = mask.flatten(1).to(torch.float64)
    count = weight.sum(1, keepdim=True)
    if check and bool((count == 0).any()):
        raise ValueError("mask is empty for at least one item")
    p, r = pred.flatten(1).to(torch.float64), ref.flatten(1).to(torch.float64)
    p = (p - (p * weight).sum(1, keepdim=True) / count) * weight
    r = (r - (r * weight).sum(1, keepdim=True) / count) * weight
    ref_norm = torch.linalg.vector_norm(r, dim=1)
    if check and bool((ref_norm == 0).any()):
        raise ValueError("ref is constant inside the mask for at least one item (NRMSE undefined)")
    return 100.0 * torch.linalg.vector_norm(p - r, dim=1) / ref_norm


def dnrmse(pred, ref, mask=None) -> float:
    """Detrended NRMSE, in percent (lower is better): NRMSE after removing a linear trend.

    Within the mask (both maps demeaned), fit χ̂ ≈ a·χ + b by least squares,

    .. math:: a = \\frac{\\mathrm{cov}(\\hat\\chi, \\chi)}{\\mathrm{var}(\\chi)}, \\quad
              b = \\overline{\\hat\\chi} - a\\,\\overline{\\chi},

    correct χ̂' = (χ̂ − b)/a and return NRMSE(χ̂', χ). It ignores global scaling and offset
    errors (QSM challenge 2.0, Marques et al. 2021). Since the least-squares residual is no
    longer than χ̂ − χ, dNRMSE ≤ NRMSE/|a|: it is at most the NRMSE when |a| ≥ 1, but can
    exceed it for an under-scaled noisy map (dividing by a < 1 amplifies the noise).

    If |a| < 1e-12 (``pred`` carries no linear trace of ``ref``, e.g. an all-zero map), the
    correction is undefined: a ``RuntimeWarning`` is issued and NaN returned, so a table of
    many cases still fills.
    """
    p, r, m = prepare(pred, ref, mask)
    p0, r0 = demean(p, r, m)
    x, y = r0[m], p0[m]
    a = float(np.dot(x - x.mean(), y - y.mean()) / np.dot(x - x.mean(), x - x.mean()))
    b = float(y.mean() - a * x.mean())
    if not np.isfinite(a) or abs(a) < _SLOPE_EPS:
        warnings.warn(f"dnrmse: fitted slope a = {a:.3g} is ~0 (pred does not follow ref); "
                      "returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    corrected = (y - b) / a
    return float(100.0 * np.linalg.norm(corrected - x) / np.linalg.norm(x))


def hfen(pred, ref, mask=None) -> float:
    """High-frequency error norm, in percent (lower is better).

    .. math:: \\mathrm{HFEN} = 100 \\cdot \\|\\mathrm{LoG}(\\hat\\chi) - \\mathrm{LoG}(\\chi)\\|_2
              / \\|\\mathrm{LoG}(\\chi)\\|_2

    LoG is ``scipy.ndimage.gaussian_laplace`` with σ = 1.5 voxels (``HFEN_SIGMA``, default
    ``mode='reflect'``, truncate 4σ), applied to the demeaned maps set to zero outside the mask;
    the norms run over the mask voxels (Ravishankar & Bresler 2011; QSM challenge 2.0).
    Isotropic voxels are assumed.
    """
    p, r, m = prepare(pred, ref, mask)
    p0, r0 = demean(p, r, m)
    lp = ndimage.gaussian_laplace(p0, sigma=HFEN_SIGMA)
    lr = ndimage.gaussian_laplace(r0, sigma=HFEN_SIGMA)
    denom = np.linalg.norm(lr[m])
    if denom == 0.0:
        raise ValueError("ref has no high-frequency content inside the mask "
                         "(LoG(ref) is zero); HFEN is undefined")
    return float(100.0 * np.linalg.norm(lp[m] - lr[m]) / denom)


#: Metric name → function ``(pred, ref, mask=None) -> float``.
METRICS: dict[str, Callable[..., float]] = {
    "nrmse": nrmse,
    "dnrmse": dnrmse,
    "hfen": hfen,
    "ssim": ssim,
    "xsim": xsim,
}

#: Metric name → True when a larger value means a better reconstruction.
HIGHER_IS_BETTER: dict[str, bool] = {
    "nrmse": False,
    "dnrmse": False,
    "hfen": False,
    "ssim": True,
    "xsim": True,
}


def _check_names(names: Iterable[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
        if n not in METRICS:
            raise ValueError(f"unknown metric {n!r} in names (known: {sorted(METRICS)}){did_you_mean(n, METRICS)}")
    return names


def compute_metrics(pred, ref, mask=None, names=None) -> dict[str, float]:
    """Evaluate several metrics on one case.

    Args:
        pred, ref: susceptibility maps (ppm), shape ``(X, Y, Z)``.
        mask: boolean ``(X, Y, Z)`` or ``None``.
        names: metric names from ``METRICS`` (default: all, in table order).

    Returns:
        ``{name: value}`` in the order of ``names``.
    """
    names = list(METRICS) if names is None else _check_names(names)
    return {n: METRICS[n](pred, ref, mask) for n in names}


def summarize(table: pd.DataFrame, by: list[str] | str, metrics=None) -> pd.DataFrame:
    """Mean and standard deviation of metric columns per group.

    Args:
        table: one row per case, with the grouping columns and metric columns.
        by: grouping column name(s), e.g. ``["activation", "channels"]``.
        metrics: metric columns to summarise (default: every ``METRICS`` name present in
            ``table``, in table order).

    Returns:
        One row per group: the ``by`` columns, ``n`` (rows in the group), then
        ``<metric>_mean``, ``<metric>_sd`` and ``<metric>_n`` for each metric. NaN metric values
        (e.g. the dNRMSE of a constant prediction, which is undefined) are skipped by mean and sd,
        and ``<metric>_n`` counts the values that are defined, so a mean over fewer rows than ``n``
        shows. The sd is the sample standard deviation (ddof = 1) of the defined values; of a
        single defined value it is reported as 0, of none as NaN (as is the mean).
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise ValueError(f"by names columns not in table: {missing}")
    if metrics is None:
        metrics = [c for c in METRICS if c in table.columns]
        if not metrics:
            raise ValueError(f"table has no metric columns (expected some of {list(METRICS)})")
    else:
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        missing = [c for c in metrics if c not in table.columns]
        if missing:
            raise ValueError(f"metrics names columns not in table: {missing}")

    grouped = table.groupby(by, sort=True, dropna=False)
    out = grouped.size().rename("n").to_frame()
    for c in metrics:
        defined = grouped[c].count()
        out[f"{c}_mean"] = grouped[c].mean()
        out[f"{c}_sd"] = grouped[c].std(ddof=1).where(defined != 1, 0.0)
        out[f"{c}_n"] = defined
    return out.reset_index()


def format_mean_sd(mean: float, sd: float, digits: int = 1) -> str:
    """Format ``mean ± sd`` with ``digits`` decimals, e.g. ``format_mean_sd(12.34, 0.4)`` →
    ``"12.3 ± 0.4"``."""
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


#: decimals each metric is reported with (percentages to 0.1, the similarity indices to 0.001)
REPORT_DIGITS = {"nrmse": 1, "dnrmse": 1, "hfen": 1, "ssim": 3, "xsim": 3}


def format_summary(summary: pd.DataFrame, metric: str, digits: int | None = None) -> list[str]:
    """``mean ± sd`` of ``metric`` for each row of a :func:`summarize` table, with ``digits``
    decimals (default :data:`REPORT_DIGITS`), saying where it rests on fewer values than the group
    has rows: ``"21.4 ± 3.0 (20 of 30 defined)"``, or ``"undefined (0 of 30)"`` when no value was
    defined. A table without ``<metric>_n`` (written before that column existed) is taken as fully
    defined."""
    digits = REPORT_DIGITS[metric] if digits is None else digits
    defined = summary[f"{metric}_n"] if f"{metric}_n" in summary else summary["n"]
    cells = []
    for mean, sd, k, n in zip(summary[f"{metric}_mean"], summary[f"{metric}_sd"], defined, summary["n"]):
        if k == 0:
            cells.append(f"undefined (0 of {n})")
        else:
            cells.append(format_mean_sd(mean, sd, digits) + (f" ({k} of {n} defined)" if k < n else ""))
    return cells
