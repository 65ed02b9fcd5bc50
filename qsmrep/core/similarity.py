"""Structural similarity of susceptibility maps: SSIM (Wang et al. 2004) and XSIM (Milovic et al. 2024).

Both take ``(pred, ref, mask=None)`` like every metric of :mod:`qsmrep.core.metrics` and return a
unitless index ≤ 1 (higher is better), the mean of the local index over the mask voxels.
"""

from __future__ import annotations


from scipy import ndimage
from skimage.metrics import structural_similarity

from qsmrep.core.masked import demean, prepare

#: Standard deviation (voxels) of the Gaussian SSIM window (truncated at 3.5 σ: 11³ voxels).
SSIM_SIGMA = 1.5
#: SSIM stabilising constants (Wang et al. 2004, IEEE TIP 13:600).
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: XSIM constants and fixed dynamic range in ppm (Milovic et al. 2024).
XSIM_K1 = 0.01
XSIM_K2 = 0.001
XSIM_DATA_RANGE = 1.0
#: XSIM's Gaussian window: σ in voxels, cut at 2σ (7³ voxels), as the challenge's reference code.
XSIM_SIGMA = 1.5
XSIM_TRUNCATE = 2.0


def _ssim_core(p0, r0, m, masked: bool, data_range: float, k1: float, k2: float) -> float:
    """3D SSIM on prepared volumes; mean over ``m`` if ``masked`` else skimage's mean."""
    if min(r0.shape) < 11:  # Gaussian window σ = 1.5, truncate 3.5 → 11 voxels wide
        raise ValueError(f"ref must be at least 11 voxels along each axis for the 11³ SSIM "
                         f"window, got shape {r0.shape}")
    mssim, smap = structural_similarity(
        p0, r0, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
        use_sample_covariance=False, K1=k1, K2=k2, full=True,
    )
    return float(smap[m].mean()) if masked else float(mssim)


def ssim(pred, ref, mask=None) -> float:
    """3D structural similarity index (Wang et al. 2004), unitless, ≤ 1 (higher is better).

    .. math:: \\mathrm{SSIM} = \\frac{(2\\mu_x\\mu_y + C_1)(2\\sigma_{xy} + C_2)}
              {(\\mu_x^2 + \\mu_y^2 + C_1)(\\sigma_x^2 + \\sigma_y^2 + C_2)},
              \\quad C_i = (K_i L)^2

    Settings (wrapping ``skimage.metrics.structural_similarity``):

    * local statistics with a 3D Gaussian window, σ = 1.5 voxels, truncated at 3.5σ (11³),
      ``gaussian_weights=True``, ``use_sample_covariance=False`` (population covariance),
      boundary ``mode='reflect'``;
    * K1 = 0.01, K2 = 0.03;
    * L = ``data_range`` = max − min of the demeaned reference inside the mask (ppm);
    * inputs: both maps demeaned within the mask and set to 0 outside it;
    * reduction: with a ``mask``, the mean of the full SSIM map over the mask voxels; with
      ``mask=None``, skimage's own mean (which drops a 5-voxel border strip).

    Each axis must be at least 11 voxels long.
    """
    p, r, m = prepare(pred, ref, mask)
    p0, r0 = demean(p, r, m)
    data_range = float(r0[m].max() - r0[m].min())
    return _ssim_core(p0, r0, m, mask is not None, data_range, SSIM_K1, SSIM_K2)


def xsim(pred, ref, mask=None) -> float:
    """XSIM: SSIM adapted to susceptibility maps (Milovic et al. 2024, MRM,
    doi:10.1002/mrm.30271), unitless, ≤ 1 (higher is better).

    .. math:: \\mathrm{XSIM} = \\operatorname{mean}_{\\text{mask}}
              \\frac{(2\\mu_x\\mu_y + C_1)(2\\sigma_{xy} + C_2)}
              {(\\mu_x^2 + \\mu_y^2 + C_1)(\\sigma_x^2 + \\sigma_y^2 + C_2)},
              \\quad C_i = (K_i L)^2

    As the reference code of the QSM challenge 2.0 (``compute_xsim.m``, version 2.0 of
    2022-01-26): maps in ppm, not rescaled, L = 1, K1 = 0.01, K2 = 0.001; local statistics with a
    7³ Gaussian window, σ = 1.5 voxels (MATLAB ``imgaussfilt3(x, 1.5, 'FilterSize', 7)``,
    whose default padding replicates the edge voxels; here ``scipy.ndimage.gaussian_filter``
    with ``truncate=2``, ``mode='nearest'``), population (co)variances E[xy] − μ_x μ_y, and the
    mean of the index map over the mask (the 11³ window of :func:`ssim` would give other values).
    As every metric here, both maps
    are demeaned within and zeroed outside the mask first; ``mask=None`` averages over the
    whole volume. Each axis must be at least 3 voxels long (as in the reference).
    """
    p, r, m = prepare(pred, ref, mask)
    if min(r.shape) < 3:
        raise ValueError(f"ref must be at least 3 voxels along each axis for XSIM, got shape {r.shape}")
    x, y = demean(p, r, m)
    c1, c2 = (XSIM_K1 * XSIM_DATA_RANGE) ** 2, (XSIM_K2 * XSIM_DATA_RANGE) ** 2

    def local_mean(a):
        return ndimage.gaussian_filter(a, XSIM_SIGMA, truncate=XSIM_TRUNCATE, mode="nearest")

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index[m].mean())
