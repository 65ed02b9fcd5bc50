"""Synthetic susceptibility maps as in Graf et al. (ISMRM 2023 #5188, Methods), and patches.

A map is a sum of randomly placed spheres and axis-aligned cuboids ("rectangles"), each with a
susceptibility drawn from N(0, 0.25²) ppm and each Gaussian-smoothed individually; χ outside a
random ellipsoid is set to zero, which zeroes a border of at least 40/320 of the size on every
face. The field is :func:`qsmrep.physics.forward_field` of the final χ (B0 along the last axis,
1 mm isotropic voxels).

All lengths (shape sizes, smoothing widths, the border) are fractions of the map size, so a
64³ map is the 320³ picture drawn at a coarser grid. Shape *counts* are therefore fixed, not
scaled with volume: with lengths ∝ size, fixed counts keep the filled fraction of the map the
same at every size.

Smoothing: each shape is blurred *analytically* — the exact convolution of the shape's
indicator with an isotropic Gaussian, evaluated at voxel centres (a cuboid is separable, a
product of three erf profiles; a ball has a closed radial form). This is the continuous
counterpart of ``scipy.ndimage.gaussian_filter`` applied to the voxelised shape, and it is
evaluated only on the shape's bounding box padded by 4σ, never over the whole volume.

Randomness: a sample is a pure function of ``(size, seed, settings)`` through
``np.random.default_rng(seed)`` (PCG64, identical on every platform); nothing global.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf

from qsmrep.physics import forward_field

__all__ = [
    "SynthSettings",
    "Shape",
    "synthetic_sample",
    "split_seed",
    "random_patch_corner",
    "crop",
    "random_patches",
    "bench_generator",
    "bench_forward_field",
    "MIN_SIZE",
]

#: smallest map size accepted (the 40/320 border rule leaves 12 inner voxels at 16³)
MIN_SIZE = 16

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class SynthSettings:
    """Parameters of the synthetic map generator. Lengths are fractions of the map size.

    Defaults follow the paper where it is explicit (χ ~ N(0, 0.25), border ≥ 40/320 zeroed by a
    random ellipsoid) and the DeepQSM lineage where it is silent: the qsm-forward
    ``simulate_susceptibility_sources`` generator (Bollmann et al. 2019 DeepQSM, NeuroImage
    195:373; Stewart et al. qsm-forward) draws 80 spheres and 100 rectangles with sizes of 1–50 %
    of the map; we keep those counts and cap sizes lower so that single shapes do not swamp the
    inner ellipsoid.
    """

    # number of spheres per map; fixed at every size (lengths scale, so fill fraction is kept)
    n_spheres: int = 80
    # number of axis-aligned cuboids ("rectangles") per map; fixed at every size
    n_cuboids: int = 100
    # sphere radius range, fraction of size, drawn uniformly (3.2–32 voxels at 320³)
    sphere_radius: tuple[float, float] = (0.01, 0.1)
    # cuboid side-length range, fraction of size, each side drawn uniformly (6.4–80 voxels at 320³)
    cuboid_side: tuple[float, float] = (0.02, 0.25)
    # Gaussian smoothing sigma range, fraction of size, per shape uniformly (0.5–3 voxels at 320³)
    sigma: tuple[float, float] = (0.5 / 320, 3.0 / 320)
    # mean of the per-shape susceptibility, ppm (paper: μ = 0)
    chi_mean: float = 0.0
    # standard deviation of the per-shape susceptibility, ppm (paper: σ = 0.25)
    chi_std: float = 0.25
    # zero border on every face, fraction of size, rounded up to voxels (paper: ≥ 40 of 320)
    border_fraction: float = 40 / 320
    # ellipsoid semi-axis range, fraction of the largest semi-axis that fits inside the border
    ellipsoid_axes: tuple[float, float] = (0.6, 1.0)
    # "add": overlapping shapes sum; "overwrite": a later shape replaces earlier ones where it
    # lies (blended by its smoothed profile). The paper is silent; "add" keeps χ linear in the
    # shape values and the value distribution of overlaps Gaussian (std grows with overlap).
    overlap: str = "add"

    def __post_init__(self) -> None:
        for name in ("n_spheres", "n_cuboids"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.n_spheres + self.n_cuboids == 0:
            raise ValueError("n_spheres + n_cuboids must be >= 1")
        for name, strict, hi_max in (
            ("sphere_radius", True, 0.5),
            ("cuboid_side", True, 1.0),
            ("sigma", False, 0.5),
            ("ellipsoid_axes", True, 1.0),
        ):
            v = getattr(self, name)
            ok = (
                isinstance(v, tuple)
                and len(v) == 2
                and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
                and (v[0] > 0 if strict else v[0] >= 0)
                and v[0] <= v[1] <= hi_max
            )
            if not ok:
                raise ValueError(
                    f"{name} must be a pair (lo, hi) with 0 {'<' if strict else '<='} lo <= hi "
                    f"<= {hi_max}, got {v!r}"
                )
        if not math.isfinite(self.chi_mean):
            raise ValueError(f"chi_mean must be finite, got {self.chi_mean!r}")
        if not (math.isfinite(self.chi_std) and self.chi_std >= 0):
            raise ValueError(f"chi_std must be finite and >= 0, got {self.chi_std!r}")
        if not (math.isfinite(self.border_fraction) and 0 <= self.border_fraction < 0.5):
            raise ValueError(f"border_fraction must be in [0, 0.5), got {self.border_fraction!r}")
        if self.overlap not in ("add", "overwrite"):
            raise ValueError(f"overlap must be 'add' or 'overwrite', got {self.overlap!r}")


@dataclass(frozen=True)
class Shape:
    """One drawn shape, in voxel units of the map it belongs to."""

    kind: str  # "sphere" or "cuboid"
    center: tuple[float, float, float]  # voxel coordinates (voxel i has centre at i)
    extent: tuple[float, float, float]  # sphere: (R, R, R) radius; cuboid: half side lengths
    sigma: float  # Gaussian smoothing sigma, voxels
    value: float  # susceptibility before smoothing, ppm


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(
            f"size must be an integer >= {MIN_SIZE} (the 40/320 border rule needs room), "
            f"got {size!r}"
        )
    return int(size)


def border_voxels(size: int, settings: SynthSettings | None = None) -> int:
    """Zero border in voxels on each face: ceil(size · border_fraction) (40 at 320³)."""
    s = settings or SynthSettings()
    # round away float noise (e.g. 64 * 0.125 = 8.000000000000002) before the ceiling
    return int(math.ceil(round(size * s.border_fraction, 9)))


def _draw_ellipsoid(size: int, rng: np.random.Generator, s: SynthSettings):
    """Centre and semi-axes (voxels) of the support ellipsoid, inside [b, size-1-b]³."""
    b = border_voxels(size, s)
    half_inner = (size - 1 - 2 * b) / 2.0
    mid = (size - 1) / 2.0
    axes = rng.uniform(s.ellipsoid_axes[0], s.ellipsoid_axes[1], 3) * half_inner
    slack = half_inner - axes
    center = mid + rng.uniform(-1.0, 1.0, 3) * slack
    return center, axes


def _draw_shapes(size: int, rng: np.random.Generator, s: SynthSettings, center, axes):
    """Draw the shape list; centres uniform in the ellipsoid's bounding box."""
    n = s.n_spheres + s.n_cuboids
    kinds = ["sphere"] * s.n_spheres + ["cuboid"] * s.n_cuboids
    kinds = [kinds[i] for i in rng.permutation(n)]
    centers = center + rng.uniform(-1.0, 1.0, (n, 3)) * axes
    radii = rng.uniform(*s.sphere_radius, n) * size
    sides = rng.uniform(*s.cuboid_side, (n, 3)) * size
    sigmas = rng.uniform(*s.sigma, n) * size
    values = rng.normal(s.chi_mean, s.chi_std, n)
    shapes = []
    for i, kind in enumerate(kinds):
        ext = (radii[i],) * 3 if kind == "sphere" else tuple(sides[i] / 2.0)
        shapes.append(
            Shape(kind, tuple(map(float, centers[i])), tuple(map(float, ext)),
                  float(sigmas[i]), float(values[i]))
        )
    return shapes


def _box_profile(x: np.ndarray, c: float, h: float, sigma: float) -> np.ndarray:
    """1-D box [c−h, c+h] convolved with a Gaussian σ, at points x."""
    if sigma <= 0:
        return (np.abs(x - c) <= h).astype(np.float32)
    a = _SQRT2 * sigma
    return (0.5 * (erf((x - c + h) / a) - erf((x - c - h) / a))).astype(np.float32)


def _ball_profile(r: np.ndarray, radius: float, sigma: float) -> np.ndarray:
    """Ball of radius R convolved with an isotropic 3-D Gaussian σ, at distances r.

    P(r) = ½[erf((R−r)/√2σ) + erf((R+r)/√2σ)] + σ/(r√(2π)) [e^{−(R+r)²/2σ²} − e^{−(R−r)²/2σ²}],
    with the limit P(0) = erf(R/√2σ) − √(2/π)(R/σ)e^{−R²/2σ²}.
    """
    if sigma <= 0:
        return (r <= radius).astype(np.float32)
    a = _SQRT2 * sigma
    rs = np.maximum(r, 1e-6 * sigma)
    p = 0.5 * (erf((radius - rs) / a) + erf((radius + rs) / a)) + (sigma / (rs * _SQRT2PI)) * (
        np.exp(-((radius + rs) ** 2) / (2 * sigma**2)) - np.exp(-((radius - rs) ** 2) / (2 * sigma**2))
    )
    return np.clip(p, 0.0, 1.0).astype(np.float32)


def _render(size: int, shapes, s: SynthSettings) -> np.ndarray:
    vol = np.zeros((size, size, size), dtype=np.float32)
    for sh in shapes:
        reach = [e + 4.0 * sh.sigma for e in sh.extent]
        lo = [max(0, int(math.floor(c - r))) for c, r in zip(sh.center, reach)]
        hi = [min(size, int(math.ceil(c + r)) + 1) for c, r in zip(sh.center, reach)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        axes = [np.arange(l, h, dtype=np.float64) for l, h in zip(lo, hi)]
        if sh.kind == "cuboid":
            px, py, pz = (
                _box_profile(ax, c, e, sh.sigma) for ax, c, e in zip(axes, sh.center, sh.extent)
            )
            w = px[:, None, None] * py[None, :, None] * pz[None, None, :]
        else:
            d2 = [((ax - c) ** 2).astype(np.float32) for ax, c in zip(axes, sh.center)]
            r = np.sqrt(d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :])
            w = _ball_profile(r, sh.extent[0], sh.sigma)
        region = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if s.overlap == "add":
            region += np.float32(sh.value) * w
        else:
            region *= 1.0 - w
            region += np.float32(sh.value) * w
    return vol


def _ellipsoid_mask(size: int, center, axes) -> np.ndarray:
    g = [((np.arange(size) - c) / a) ** 2 for c, a in zip(center, axes)]
    q = (g[0][:, None].astype(np.float32) + g[1][None, :].astype(np.float32))[:, :, None]
    return (q + g[2][None, None, :].astype(np.float32)) <= 1.0


def synthetic_sample(size: int, seed: int, settings: SynthSettings | None = None) -> dict:
    """One synthetic training map and its field (Graf et al. 2023, Methods).

    Args:
        size: map edge length in voxels, >= 16 (320 in the paper).
        seed: any non-negative integer (see :func:`split_seed`); the sample is a pure function
            of (size, seed, settings).
        settings: generator parameters; ``None`` means ``SynthSettings()``.

    Returns:
        dict with torch tensors of shape (size, size, size):
        ``chi`` float32 ppm (zero outside ``mask``), ``field`` float32 ppm (ΔB/B0, B0 along the
        last axis, 1 mm isotropic, D(0) = 0, no padding), ``mask`` bool (the ellipsoid support).
    """
    size = _check_size(size)
    s = settings if settings is not None else SynthSettings()
    if not isinstance(s, SynthSettings):
        raise ValueError(f"settings must be a SynthSettings or None, got {type(s)}")
    rng = np.random.default_rng(seed)
    center, axes = _draw_ellipsoid(size, rng, s)
    shapes = _draw_shapes(size, rng, s, center, axes)
    vol = _render(size, shapes, s)
    mask = _ellipsoid_mask(size, center, axes)
    vol *= mask
    chi = torch.from_numpy(vol)
    field = forward_field(chi)
    return {"chi": chi, "field": field, "mask": torch.from_numpy(mask)}


_SPLITS = {"train": 0, "val": 1, "test": 2}


def split_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of map ``index`` of ``split`` ("train", "val", "test").

    ``np.random.SeedSequence([base_seed, split_code, index]).generate_state(1)[0]``: each
    (split, index) gets its own hashed stream, so map i of a split is reproducible on any machine
    without generating the others (fastMRI-style seed from the item's identity).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    for name, v in (("base_seed", base_seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    ss = np.random.SeedSequence([int(base_seed), _SPLITS[split], int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0])


# --------------------------------------------------------------------------------------------
# patches
# --------------------------------------------------------------------------------------------


def _check_patch(size, patch_size) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ValueError(f"patch_size must be an integer >= 1, got {patch_size!r}")
    if patch_size > size:
        raise ValueError(f"patch_size ({patch_size}) must not exceed the map size ({size})")


def random_patch_corner(size: int, patch_size: int, generator: torch.Generator) -> tuple[int, int, int]:
    """Uniformly random lower corner (i, j, k) of a patch_size³ patch in a size³ map."""
    _check_patch(size, patch_size)
    c = torch.randint(0, size - patch_size + 1, (3,), generator=generator)
    return tuple(int(v) for v in c)  # type: ignore[return-value]


def crop(tensor: torch.Tensor, corner, patch_size: int) -> torch.Tensor:
    """``tensor[..., i:i+p, j:j+p, k:k+p]`` (a view) for corner (i, j, k), patch size p."""
    for dim, c in zip(tensor.shape[-3:], corner):
        _check_patch(dim, patch_size)
        if not (0 <= c <= dim - patch_size):
            raise ValueError(f"corner {tuple(corner)} out of range for patch_size {patch_size} "
                             f"in spatial shape {tuple(tensor.shape[-3:])}")
    i, j, k = corner
    p = patch_size
    return tensor[..., i:i + p, j:j + p, k:k + p]


def random_patches(volumes: torch.Tensor, patch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One random patch per item, the same location across channels.

    Args:
        volumes: (N, C, S, S, S).
        patch_size: p <= S.
        generator: torch.Generator (randomness is passed, not global).

    Returns:
        (N, C, p, p, p), a new contiguous tensor.
    """
    if volumes.dim() != 5:
        raise ValueError(f"volumes must be (N, C, S, S, S), got shape {tuple(volumes.shape)}")
    S = volumes.shape[-1]
    if not (volumes.shape[-3] == volumes.shape[-2] == S):
        raise ValueError(f"volumes must be cubic (N, C, S, S, S), got {tuple(volumes.shape)}")
    _check_patch(S, patch_size)
    return torch.stack(
        [crop(v, random_patch_corner(S, patch_size, generator), patch_size) for v in volumes]
    ).contiguous()


# --------------------------------------------------------------------------------------------
# benchmarks (called by the `bench` CLI; not timed tests)
# --------------------------------------------------------------------------------------------


def bench_generator(sizes=(64, 160, 320), repeats: int = 3, settings: SynthSettings | None = None):
    """Seconds per :func:`synthetic_sample` (χ and field) for each size.

    Runs one warm-up sample per size (fills the kernel cache) and reports the best and mean
    of ``repeats`` further samples. Returns a list of dicts
    ``{"size", "repeats", "seconds_mean", "seconds_min", "seconds_first"}``.
    """
    out = []
    for size in sizes:
        t0 = time.perf_counter()
        synthetic_sample(size, 0, settings)
        first = time.perf_counter() - t0
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            synthetic_sample(size, r + 1, settings)
            times.append(time.perf_counter() - t0)
        out.append({"size": size, "repeats": repeats, "seconds_mean": float(np.mean(times)),
                    "seconds_min": float(np.min(times)), "seconds_first": first})
    return out


def bench_forward_field(size: int = 160, batch: int = 4, repeats: int = 3,
                        device: str | torch.device = "cpu") -> dict:
    """Throughput of :func:`forward_field` on a (batch, 1, size, size, size) float32 input.

    Returns ``{"size", "batch", "device", "seconds", "voxels_per_s"}`` (best of ``repeats``).
    """
    x = torch.randn(batch, 1, size, size, size, device=device)
    forward_field(x)  # warm-up / kernel cache
    best = math.inf
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        forward_field(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {"size": size, "batch": batch, "device": str(device), "seconds": best,
            "voxels_per_s": batch * size**3 / best}


def replace(settings: SynthSettings, **changes) -> SynthSettings:
    """``dataclasses.replace`` for settings (validated again)."""
    return dataclasses.replace(settings, **changes)
