"""Input checking and demeaning inside a mask, shared by every metric (QSM challenge 2.0 conventions).

:func:`prepare` turns ``pred``, ``ref`` (3-D arrays or torch tensors, ppm) and an optional boolean
``mask`` into float64 numpy volumes, raising ``ValueError`` naming the bad argument;
:func:`demean` subtracts each map's mean inside the mask.
"""

from __future__ import annotations

import numpy as np

def to_numpy(x, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if x is None:
        raise ValueError(f"{name} must be a 3D array, got None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype.itemsize < 4:  # bf16 has no numpy dtype; fp16 is widened likewise
            x = x.float()
        x = x.numpy() if hasattr(x, "numpy") else x
    return np.asarray(x)


def prepare(pred, ref, mask):
    """Validate inputs; return float64 ``pred``, ``ref`` and a boolean ``mask`` (never None)."""
    p = to_numpy(pred, "pred")
    r = to_numpy(ref, "ref")
    for name, a in (("pred", p), ("ref", r)):
        if a.ndim != 3:
            raise ValueError(f"{name} must be a 3D array (X, Y, Z), got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        if np.iscomplexobj(a):
            raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}")
    p = p.astype(np.float64, copy=False)
    r = r.astype(np.float64, copy=False)
    for name, a in (("pred", p), ("ref", r)):
        if not np.all(np.isfinite(a)):
            n_bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf)")

    if mask is None:
        m = np.ones(r.shape, dtype=bool)
    else:
        m = to_numpy(mask, "mask")
        if m.shape != r.shape:
            raise ValueError(f"mask must have the shape of ref {r.shape}, got {m.shape}")
        if m.dtype != bool:
            if not np.issubdtype(m.dtype, np.number) or not np.all(np.isin(m, (0, 1))):
                raise ValueError(f"mask must be boolean (or 0/1), got dtype {m.dtype}")
            m = m.astype(bool)
        if not m.any():
            raise ValueError("mask is empty: it selects no voxels")
    return p, r, m


def demean(p: np.ndarray, r: np.ndarray, m: np.ndarray):
    """Subtract each map's mean inside ``m`` and set voxels outside ``m`` to zero.

    Raises ``ValueError`` when ``ref`` is constant inside the mask (its demeaned norm is 0,
    so every relative metric is undefined).
    """
    p0 = np.where(m, p - p[m].mean(), 0.0)
    r0 = np.where(m, r - r[m].mean(), 0.0)
    # Compare against the data scale so round-off in the mean does not pass as signal.
    scale = max(float(np.abs(r[m]).max()), np.finfo(np.float64).tiny)
    if np.linalg.norm(r0[m]) <= 1e-12 * scale * np.sqrt(m.sum()):
        raise ValueError("ref is constant inside the mask (zero norm after demeaning); "
                         "relative metrics are undefined")
    return p0, r0


def relative_error(p0: np.ndarray, r0: np.ndarray, m: np.ndarray) -> float:
    """100 · ‖p0 − r0‖₂ / ‖r0‖₂ over the mask voxels."""
    return float(100.0 * np.linalg.norm(p0[m] - r0[m]) / np.linalg.norm(r0[m]))
