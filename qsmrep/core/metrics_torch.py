"""The test metrics of :mod:`qsmrep.core.metrics` in torch, on the maps' own device (evaluation on the GPU).

Same definitions, constants and conventions (QSM challenge 2.0, Marques et al. 2021: inside the mask both
maps are demeaned, outside it they are zero, norms run over the mask voxels):

==========  ====================================================================================
``nrmse``   100 · ‖χ̂ − χ‖₂ / ‖χ‖₂ (:func:`qsmrep.core.metrics.nrmse_torch`, unchecked)
``dnrmse``  NRMSE of (χ̂ − b)/a, with χ̂ ≈ a·χ + b fitted by least squares over the mask
``hfen``    100 · ‖LoG(χ̂) − LoG(χ)‖₂ / ‖LoG(χ)‖₂: σ = 1.5 voxels, kernel cut at 4σ, 'reflect' edges
            (``scipy.ndimage.gaussian_laplace``)
``ssim``    3D SSIM: Gaussian window σ = 1.5 cut at 3.5σ (11³), 'reflect' edges, population
            covariances, K1 = 0.01, K2 = 0.03, L = range of χ in the mask (skimage's
            ``structural_similarity``), mean over the mask
``xsim``    3D SSIM with L = 1 ppm, K2 = 0.001, a 7³ window (σ = 1.5 cut at 2σ), replicated edges
            (the challenge's ``compute_xsim.m``), mean over the mask
==========  ====================================================================================

Every function takes ``pred`` (χ̂) and ``ref`` (χ), float tensors (X, Y, Z) in ppm, and a bool ``mask`` of
the same shape, all on one device, and returns a 0-d float64 tensor there. Nothing is read back to the host,
so the metrics of many maps can be computed on a GPU and copied once. The Gaussian filters are separable
1-D correlations with scipy.ndimage's kernels (:func:`gaussian_kernel`) and its edge modes, in float64, so
the values equal the numpy metrics up to summation order (tests: within 1e-4 relative on several maps).

Where the numpy metrics raise on values (a non-finite map, a constant reference) or return NaN (dNRMSE's
slope |a| < 1e-12), these return NaN: a check would read the values back. Shapes are checked (the host
knows them).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from qsmrep.core.metrics import _SLOPE_EPS, HFEN_SIGMA, nrmse_torch
from qsmrep.core.similarity import (SSIM_K1, SSIM_K2, SSIM_SIGMA, XSIM_DATA_RANGE, XSIM_K1, XSIM_K2, XSIM_SIGMA,
                                    XSIM_TRUNCATE)

#: the Gaussian window of skimage's ``structural_similarity(gaussian_weights=True)``: cut at 3.5σ
SSIM_TRUNCATE = 3.5
#: scipy.ndimage's default cut of its Gaussian kernels (``gaussian_laplace``): 4σ
HFEN_TRUNCATE = 4.0


def gaussian_kernel(sigma: float, truncate: float, order: int = 0) -> list[float]:
    """scipy.ndimage's 1-D Gaussian kernel, radius r = int(truncate·σ + 0.5), at x = −r … r:

    g(x) = e^{−x²/2σ²} / Σ e^{−x²/2σ²}  (order 0),   g''(x) = g(x) · (x²/σ⁴ − 1/σ²)  (order 2).
    """
    if order not in (0, 2):
        raise ValueError(f"order: 0 or 2, got {order!r}")
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    if order == 2:
        phi *= x * x / sigma**4 - 1.0 / sigma**2
    return phi.tolist()


def correlate1d(x: torch.Tensor, weights: list[float], dim: int, mode: str) -> torch.Tensor:
    """y[i] = Σ_k w[k] · x[i + k − r] along ``dim`` (r = (len(w) − 1)/2), with the edges of scipy.ndimage's
    ``mode``: ``"reflect"`` (d c b a | a b c d | d c b a) or ``"nearest"`` (a a a | a b c d | d d d)."""
    n, radius = x.shape[dim], (len(weights) - 1) // 2
    index = torch.arange(-radius, n + radius, device=x.device)
    if mode == "reflect":
        index = index.remainder(2 * n)
        index = torch.where(index < n, index, 2 * n - 1 - index)
    elif mode == "nearest":
        index = index.clamp(0, n - 1)
    else:
        raise ValueError(f"mode: 'reflect' or 'nearest', got {mode!r}")
    padded = x.index_select(dim, index)
    out = padded.narrow(dim, 0, n) * weights[0]
    for k, weight in enumerate(weights[1:], 1):
        out.add_(padded.narrow(dim, k, n), alpha=weight)
    return out


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float, mode: str, orders=(0, 0, 0)) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` of the last three dims of ``x``: the 1-D kernels of ``orders`` applied
    along X, then Y, then Z."""
    for dim, order in zip((-3, -2, -1), orders):
        x = correlate1d(x, gaussian_kernel(sigma, truncate, order), dim, mode)
    return x


def laplacian_of_gaussian(x: torch.Tensor, sigma: float = HFEN_SIGMA) -> torch.Tensor:
    """``scipy.ndimage.gaussian_laplace``: Σ_a ∂²/∂a² of the Gaussian-smoothed ``x`` (cut at 4σ, 'reflect')."""
    terms = [gaussian_filter(x, sigma, HFEN_TRUNCATE, "reflect", orders) for orders in ((2, 0, 0), (0, 2, 0), (0, 0, 2))]
    return terms[0] + terms[1] + terms[2]


def _check(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, min_size: int = 1) -> None:
    if pred.shape != ref.shape or ref.shape != mask.shape or pred.dim() != 3:
        raise ValueError(f"pred, ref and mask must be (X, Y, Z) of one shape, got {tuple(pred.shape)}, "
                         f"{tuple(ref.shape)} and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if min(ref.shape) < min_size:
        raise ValueError(f"ref must be at least {min_size} voxels along each axis, got shape {tuple(ref.shape)}")


def _demeaned(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps in float64, each minus its mean inside ``mask``, zero outside it."""
    count = mask.sum()
    out = []
    for x in (pred, ref):
        x = x.to(torch.float64)
        out.append(torch.where(mask, x - torch.where(mask, x, 0.0).sum() / count, 0.0))
    return out[0], out[1]


def _masked_norm(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.where(mask, x, 0.0))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, 0.0).sum() / mask.sum()


def _finite_or_nan(value: torch.Tensor, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``value`` where both maps are finite everywhere, else NaN (where the numpy metrics refuse the input)."""
    return torch.where(torch.isfinite(pred).all() & torch.isfinite(ref).all(), value, torch.nan)


def nrmse(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NRMSE in percent (:func:`qsmrep.core.metrics.nrmse`)."""
    _check(pred, ref, mask)
    value = nrmse_torch(pred[None], ref[None], mask[None], check=False)[0]
    return _finite_or_nan(value, pred, ref)


def dnrmse(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Detrended NRMSE in percent (:func:`qsmrep.core.metrics.dnrmse`): a = cov(χ̂, χ)/var(χ), b = mean χ̂ − a·mean χ
    over the mask, then NRMSE of (χ̂ − b)/a; NaN where |a| < 1e-12 or a is not finite."""
    _check(pred, ref, mask)
    y, x = _demeaned(pred, ref, mask)
    mean_x, mean_y = _masked_mean(x, mask), _masked_mean(y, mask)
    dx, dy = torch.where(mask, x - mean_x, 0.0), torch.where(mask, y - mean_y, 0.0)
    a = (dx * dy).sum() / (dx * dx).sum()
    b = mean_y - a * mean_x
    value = 100.0 * _masked_norm((y - b) / a - x, mask) / _masked_norm(x, mask)
    value = torch.where(torch.isfinite(a) & (a.abs() >= _SLOPE_EPS), value, torch.nan)
    return _finite_or_nan(value, pred, ref)


def hfen(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """HFEN in percent (:func:`qsmrep.core.metrics.hfen`): LoG of the demeaned maps, norms over the mask."""
    _check(pred, ref, mask)
    p0, r0 = _demeaned(pred, ref, mask)
    lp, lr = laplacian_of_gaussian(p0), laplacian_of_gaussian(r0)
    return _finite_or_nan(100.0 * _masked_norm(lp - lr, mask) / _masked_norm(lr, mask), pred, ref)


def _similarity_map(x: torch.Tensor, y: torch.Tensor, c1, c2, local_mean: Callable) -> torch.Tensor:
    """(2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)) with population (co)variances
    E[xy] − μxμy of ``local_mean``."""
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x * mu_x, local_mean(y * y) - mu_y * mu_y
    cov = local_mean(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


def ssim(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """3D SSIM (:func:`qsmrep.core.similarity.ssim` with a mask): skimage's Gaussian window, mean over the mask."""
    _check(pred, ref, mask, min_size=2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1)
    p0, r0 = _demeaned(pred, ref, mask)
    data_range = torch.where(mask, r0, -torch.inf).amax() - torch.where(mask, r0, torch.inf).amin()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = _similarity_map(p0, r0, c1, c2, lambda a: gaussian_filter(a, SSIM_SIGMA, SSIM_TRUNCATE, "reflect"))
    return _finite_or_nan(_masked_mean(index, mask), pred, ref)


def xsim(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """XSIM (:func:`qsmrep.core.similarity.xsim`): L = 1 ppm, 7³ Gaussian window with replicated edges."""
    _check(pred, ref, mask, min_size=3)
    x, y = _demeaned(pred, ref, mask)
    c1, c2 = (XSIM_K1 * XSIM_DATA_RANGE) ** 2, (XSIM_K2 * XSIM_DATA_RANGE) ** 2
    index = _similarity_map(x, y, c1, c2, lambda a: gaussian_filter(a, XSIM_SIGMA, XSIM_TRUNCATE, "nearest"))
    return _finite_or_nan(_masked_mean(index, mask), pred, ref)


#: metric name → torch function, the names and order of :data:`qsmrep.core.metrics.METRICS`
METRICS_TORCH: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "nrmse": nrmse, "dnrmse": dnrmse, "hfen": hfen, "ssim": ssim, "xsim": xsim,
}


def compute_metrics_torch(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, names=None) -> torch.Tensor:
    """The metrics ``names`` (default: all of :data:`METRICS_TORCH`, in order) of one map as one (len(names),)
    float64 tensor on the maps' device: stack those of many maps and read them with one copy."""
    names = list(METRICS_TORCH) if names is None else list(names)
    unknown = [n for n in names if n not in METRICS_TORCH]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r} in names (known: {list(METRICS_TORCH)})")
    return torch.stack([METRICS_TORCH[name](pred, ref, mask) for name in names])
