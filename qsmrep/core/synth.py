"""Synthetic susceptibility maps as in Graf et al. (ISMRM 2023 #5188, Methods), and patches.

A map is a sum of randomly placed spheres and axis-aligned cuboids ("rectangles"), each with a
susceptibility drawn from N(0, 0.25²) ppm and each Gaussian-smoothed individually; χ outside a
random ellipsoid is set to zero, which zeroes a border of at least 40/320 of the size on every
face. The field is :func:`qsmrep.core.physics.forward_field` of the final χ (B0 along the last axis,
1 mm isotropic voxels).

All lengths (shape sizes, smoothing widths, the border) are fractions of the map size, so a
64³ map is the 320³ picture drawn at a coarser grid. Shape *counts* are therefore fixed, not
scaled with volume: with lengths ∝ size, fixed counts keep the filled fraction of the map the
same at every size.

Smoothing is analytic (the exact convolution of each shape with a Gaussian) and rendering is torch,
batched over maps, on any device: :mod:`qsmrep.core.shapes`.

Randomness: a sample is a pure function of ``(size, seed, settings)`` through
``np.random.default_rng(seed)`` (PCG64, identical on every platform); nothing global. The shapes
are drawn on the host, so map i is the same picture on every device. On CPU a sample is
bit-reproducible; on CUDA ``index_add_`` sums overlapping spheres in a varying order (float32
round-off only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from qsmrep import registry
from qsmrep.core.physics import forward_field
from qsmrep.core.shapes import Shape, render_shapes, support_masks

__all__ = [
    "SynthSettings",
    "Shape",
    "synthetic_sample",
    "render_maps",
    "MapDraw",
    "draw_maps",
    "render_draws",
    "border_voxels",
    "split_seed",
    "random_patch_corner",
    "crop",
    "MIN_SIZE",
    "GENERATOR_VERSION",
]

#: version of the renderer: a run folder records it, and a run is never resumed with maps of another version
#: ("torch-1": this torch renderer; the numpy renderer it replaced agrees with it to 1e-5 relative, but not bit for bit)
GENERATOR_VERSION = "torch-1"

#: smallest map size accepted (the 40/320 border rule leaves 12 inner voxels at 16³)
MIN_SIZE = 16

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
        registry.check_choice("overlap", self.overlap, registry.OVERLAP_MODES)


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


# --------------------------------------------------------------------------------------------
# rendering: torch, any device, batched over maps
# --------------------------------------------------------------------------------------------

def _check_settings(settings) -> SynthSettings:
    s = settings if settings is not None else SynthSettings()
    if not isinstance(s, SynthSettings):
        raise ValueError(f"settings must be a SynthSettings or None, got {type(s)}")
    return s


class MapDraw(NamedTuple):
    """The seeded host-side draw of one map: what :func:`render_draws` renders."""

    center: np.ndarray  # (3,) voxels: centre of the support ellipsoid
    axes: np.ndarray  # (3,) voxels: its semi-axes
    shapes: list[Shape]  # the spheres and cuboids, in draw order


def _draw_map(size: int, seed: int, s: SynthSettings) -> MapDraw:
    """The seeded draw of one map: support ellipsoid centre and semi-axes (3,) and shapes."""
    rng = np.random.default_rng(seed)
    center, axes = _draw_ellipsoid(size, rng, s)
    return MapDraw(center, axes, _draw_shapes(size, rng, s, center, axes))


def draw_maps(size: int, seeds, settings: SynthSettings | None = None) -> list[MapDraw]:
    """The host-side draws of maps ``seeds`` (numpy, one ``default_rng(seed)`` each; about 2 ms per map).

    A pure function of (size, seed, settings) per map, so draws can be made ahead of their rendering
    (e.g. for a whole epoch, in a background thread) and handed to :func:`render_draws`.
    """
    size = _check_size(size)
    s = _check_settings(settings)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    return [_draw_map(size, seed, s) for seed in seeds]


def render_maps(size: int, seeds, settings: SynthSettings | None = None, physics=None, *,
                device: str | torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> dict:
    """Several synthetic training maps and their fields, rendered together (Graf et al. 2023).

    Map i is :func:`synthetic_sample` ``(size, seeds[i], settings, physics)``: the shapes are
    drawn on the host (:func:`draw_maps`: numpy, per seed), then all maps are rendered in a few
    batched kernels on ``device`` (:func:`render_draws`) — the data path of GPU training.

    Args:
        size: map edge length in voxels, >= 16 (320 in the paper).
        seeds: sequence of N >= 1 non-negative integers (see :func:`split_seed`).
        settings: generator parameters; ``None`` means ``SynthSettings()``.
        physics: object whose ``A(chi)`` maps (..., X, Y, Z) susceptibility to its field;
            ``None`` means :func:`qsmrep.core.physics.forward_field` (1 mm, B0 along the last axis).
        device: where the maps are rendered and returned; ``None`` means CPU.
        dtype: torch.float32 or torch.float64, of ``chi`` and the rendering arithmetic.

    Returns:
        dict of tensors on ``device``: ``chi`` (N, S, S, S) ``dtype`` ppm (zero outside
        ``mask``), ``field`` (N, S, S, S) ppm (ΔB/B0, ``physics.A(chi)``), ``mask``
        (N, S, S, S) bool (the ellipsoid support).
    """
    return render_draws(size, draw_maps(size, seeds, settings), settings, physics, device=device, dtype=dtype)


def render_draws(size: int, draws: list[MapDraw], settings: SynthSettings | None = None, physics=None, *,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """The maps of ``draws`` (from :func:`draw_maps` with the same ``size`` and ``settings``) rendered
    together on ``device``: ``chi``, ``field``, ``mask`` as :func:`render_maps` returns them.

    The host's part is only gathering the shape parameters and launching the batched kernels
    (:func:`qsmrep.core.shapes.render_shapes`; their inputs go to a GPU through pinned memory
    without blocking), so a loop that renders from draws made ahead does no other host work.
    """
    size = _check_size(size)
    s = _check_settings(settings)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if not draws:
        raise ValueError("draws must hold at least one map's draw")
    device = torch.device("cpu" if device is None else device)
    centers, axes = (np.array([d[i] for d in draws]) for i in (0, 1))
    mask = support_masks(size, centers, axes, device)
    chi = render_shapes(size, [d.shapes for d in draws], s.overlap, device, dtype).mul_(mask)
    field = forward_field(chi) if physics is None else physics.A(chi)
    return {"chi": chi, "field": field, "mask": mask}


def synthetic_sample(size: int, seed: int, settings: SynthSettings | None = None, physics=None, *,
                     device: str | torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> dict:
    """One synthetic training map and its field (Graf et al. 2023, Methods).

    :func:`render_maps` with the single seed ``seed``; the sample is a pure function of
    (size, seed, settings) (and physics). Returns ``chi``, ``field`` (S, S, S) ``dtype`` ppm and
    ``mask`` (S, S, S) bool on ``device``, as described there.
    """
    return {k: v[0] for k, v in render_maps(size, [seed], settings, physics, device=device,
                                              dtype=dtype).items()}


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
