"""A head-like numerical susceptibility phantom, made in code (no download), for an
out-of-distribution check of networks trained on random shapes.

Ellipsoids in normalised coordinates (the head spans [−1, 1] on each axis) with susceptibilities
in ppm relative to CSF, in the range reported for 3 T in vivo QSM (e.g. the QSM reconstruction
challenge 2.0 head model, Marques et al. 2021; Deistung et al. 2013): cortical grey matter
+0.03, white matter −0.03, caudate +0.06, putamen +0.05, globus pallidus +0.15, thalamus +0.02,
red nucleus +0.10, substantia nigra +0.13, ventricles (CSF) 0, a draining vein +0.35 (deoxygenated
blood) and a calcification −0.25 (diamagnetic). Later entries overwrite earlier ones. The field is
made by the same forward model as the training data (:func:`qsmrep.core.physics.forward_field`).
"""

from __future__ import annotations

import numpy as np
import torch

from qsmrep.core.physics import DipolePhysics

# name: (centre (x, y, z), semi-axes, χ in ppm); normalised coordinates, z along B0 (superior)
STRUCTURES: list[tuple[str, tuple[float, float, float], tuple[float, float, float], float]] = [
    ("grey matter", (0.0, 0.0, 0.0), (0.72, 0.86, 0.70), 0.03),
    ("white matter", (0.0, 0.0, 0.02), (0.60, 0.74, 0.56), -0.03),
    ("left ventricle", (-0.10, 0.02, 0.14), (0.07, 0.30, 0.10), 0.0),
    ("right ventricle", (0.10, 0.02, 0.14), (0.07, 0.30, 0.10), 0.0),
    ("left caudate", (-0.17, 0.16, 0.10), (0.05, 0.12, 0.07), 0.06),
    ("right caudate", (0.17, 0.16, 0.10), (0.05, 0.12, 0.07), 0.06),
    ("left putamen", (-0.30, 0.04, 0.0), (0.05, 0.15, 0.09), 0.05),
    ("right putamen", (0.30, 0.04, 0.0), (0.05, 0.15, 0.09), 0.05),
    ("left globus pallidus", (-0.22, 0.02, -0.02), (0.04, 0.08, 0.06), 0.15),
    ("right globus pallidus", (0.22, 0.02, -0.02), (0.04, 0.08, 0.06), 0.15),
    ("left thalamus", (-0.10, -0.14, 0.02), (0.07, 0.11, 0.08), 0.02),
    ("right thalamus", (0.10, -0.14, 0.02), (0.07, 0.11, 0.08), 0.02),
    ("left red nucleus", (-0.05, -0.10, -0.20), (0.03, 0.03, 0.03), 0.10),
    ("right red nucleus", (0.05, -0.10, -0.20), (0.03, 0.03, 0.03), 0.10),
    ("left substantia nigra", (-0.09, -0.06, -0.26), (0.03, 0.06, 0.03), 0.13),
    ("right substantia nigra", (0.09, -0.06, -0.26), (0.03, 0.06, 0.03), 0.13),
    ("calcification", (0.35, -0.40, 0.30), (0.035, 0.035, 0.035), -0.25),
]
VEIN = ("vein", (0.0, -0.55, 0.0), 0.035, 0.35)  # a tube along z (parallel to B0) through the occipital region
HEAD = ((0.0, 0.0, 0.0), (0.80, 0.92, 0.78))  # brain mask: everything inside holds a value


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = (np.arange(size) + 0.5) / size * 2.2 - 1.1  # the head fills about 80 % of the field of view
    return np.meshgrid(axis, axis, axis, indexing="ij")


def _inside(x, y, z, centre, axes) -> np.ndarray:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1


def head_phantom(size: int = 64, physics: DipolePhysics | None = None) -> dict:
    """The phantom on a size³ grid: dict of (size, size, size) tensors ``chi`` (ppm), ``field``
    (ppm, ΔB/B0, by ``physics``, default 1 mm and B0 along the last axis) and bool ``mask`` (brain),
    plus ``labels`` (int16, index into ``["background", *structure names, "vein"]``)."""
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size: must be an integer ≥ 16, got {size!r}")
    x, y, z = _grid(size)
    chi = np.zeros((size, size, size), np.float32)
    labels = np.zeros(chi.shape, np.int16)
    for number, (_name, centre, axes, value) in enumerate(STRUCTURES, start=1):
        inside = _inside(x, y, z, centre, axes)
        chi[inside], labels[inside] = value, number
    _name, (vx, vy, _vz), radius, value = VEIN
    mask = _inside(x, y, z, *HEAD)
    vein = ((x - vx) ** 2 + (y - vy) ** 2 <= radius**2) & mask
    chi[vein], labels[vein] = value, len(STRUCTURES) + 1
    chi[~mask] = 0
    chi_t = torch.from_numpy(chi)
    return {"chi": chi_t, "field": (physics or DipolePhysics()).A(chi_t), "mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


def label_names() -> list[str]:
    """Names of the label values of :func:`head_phantom`."""
    return ["background", *(s[0] for s in STRUCTURES), VEIN[0]]
