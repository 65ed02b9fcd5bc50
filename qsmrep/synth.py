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
counterpart of ``scipy.ndimage.gaussian_filter`` applied to the voxelised shape; each shape is
zero outside its bounding box padded by 4σ.

Rendering is torch on any device (CPU or CUDA) and batched over maps (:func:`render_maps`):
with ``overlap="add"`` all cuboids of all maps are one batched matmul of their 1-D profiles and
all spheres of all maps are evaluated as a few padded batches of bounding boxes, added into the
volume with ``index_add_``. 1-D profiles and coordinates are float64; the 3-D arithmetic is in
the requested dtype (float32 by default).

Randomness: a sample is a pure function of ``(size, seed, settings)`` through
``np.random.default_rng(seed)`` (PCG64, identical on every platform); nothing global. The shapes
are drawn on the host, so map i is the same picture on every device. On CPU a sample is
bit-reproducible; on CUDA ``index_add_`` sums overlapping spheres in a varying order (float32
round-off only).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from qsmrep.physics import forward_field

__all__ = [
    "SynthSettings",
    "Shape",
    "synthetic_sample",
    "render_maps",
    "border_voxels",
    "split_seed",
    "random_patch_corner",
    "crop",
    "bench_generator",
    "bench_forward_field",
    "MIN_SIZE",
    "GENERATOR_VERSION",
]

#: version of the renderer: a run folder records it, and a run is never resumed with maps of another version
#: ("torch-1": this torch renderer; the numpy renderer it replaced agrees with it to 1e-5 relative, but not bit for bit)
GENERATOR_VERSION = "torch-1"

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


# --------------------------------------------------------------------------------------------
# rendering: torch, any device, batched over maps
# --------------------------------------------------------------------------------------------

#: bytes of temporaries per block of the batched sphere evaluation. Large blocks mean few
#: kernels on a GPU and few thread-pool barriers on a CPU: cache-sized 8 MB blocks were about
#: 1.5× faster on an idle 2-core CPU but up to 20× slower while other processes shared the cores
_SPHERE_BLOCK_BYTES = 256 * 2**20


def _box_profile(x: torch.Tensor, c, h, sigma) -> torch.Tensor:
    """1-D box [c−h, c+h] convolved with a Gaussian σ, at points x (arguments broadcast).

    p(x) = ½[erf((x−c+h)/√2σ) − erf((x−c−h)/√2σ)]; the indicator |x−c| <= h where σ <= 0.
    Voxel units; computed in x's dtype (float64 in the renderer).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    a = _SQRT2 * torch.where(sigma > 0, sigma, 1.0)
    d = x - c
    smooth = 0.5 * (torch.erf((d + h) / a) - torch.erf((d - h) / a))
    return torch.where(sigma > 0, smooth, (d.abs() <= h).to(x.dtype))


def _ball_profile(r: torch.Tensor, radius, sigma) -> torch.Tensor:
    """Ball of radius R convolved with an isotropic 3-D Gaussian σ > 0, at distances r (broadcast).

    P(r) = ½[erf((R−r)/√2σ) + erf((R+r)/√2σ)] + σ/(r√(2π)) [e^{−(R+r)²/2σ²} − e^{−(R−r)²/2σ²}].
    The second term cancels catastrophically at small r; it is evaluated as the equal
    (R/(σ√(2π))) · e^{−(R−r)²/2σ²} · expm1(−2u)/u with u = Rr/σ² (that is
    −(2R/(σ√(2π))) e^{−(R²+r²)/2σ²} sinh(u)/u, without sinh's overflow), which is accurate at
    every r down to the limit P(0) = erf(R/√2σ) − √(2/π)(R/σ)e^{−R²/2σ²}.
    Voxel units; computed in r's dtype; clipped to [0, 1]; P(∞) = 0 exactly.
    """
    radius = torch.as_tensor(radius, dtype=r.dtype, device=r.device)
    sigma = torch.as_tensor(sigma, dtype=r.dtype, device=r.device)
    a = _SQRT2 * sigma
    x = (radius - r).div_(a)
    p = torch.erf(x).add_((radius + r).div_(a).erf_())
    gauss = x.square_().neg_().exp_()
    u = (r * (radius / (sigma * sigma))).clamp_(min=torch.finfo(r.dtype).tiny)
    gauss.mul_(u.mul(-2.0).expm1_().div_(u))
    return p.mul_(0.5).addcmul_(gauss, radius / (sigma * _SQRT2PI)).clamp_(0.0, 1.0)


def _ball_indicator(r: torch.Tensor, radius, sigma=None) -> torch.Tensor:
    """The unsmoothed ball (σ <= 0): 1 where r <= R, else 0, in r's dtype (σ is unused)."""
    return (r <= radius).to(r.dtype)


def _boxes(centers: np.ndarray, extents: np.ndarray, sigmas: np.ndarray, size: int):
    """Bounding boxes padded by 4σ and clipped to the volume, per shape and axis (host side).

    Args: centers, extents (M, 3) voxels; sigmas (M,) voxels.
    Returns: lower corners lo and lengths (M, 3) int64; the box of a shape on axis a is
    [lo, lo + length), empty where length <= 0.
    """
    reach = extents + 4.0 * sigmas[:, None]
    lo = np.maximum(0, np.floor(centers - reach).astype(np.int64))
    hi = np.minimum(size, np.ceil(centers + reach).astype(np.int64) + 1)
    return lo, hi - lo


def _in_box(x: torch.Tensor, c, e, sigma) -> torch.Tensor:
    """True where integer voxel coordinate x is in the 4σ-padded box ⌊c−e−4σ⌋ <= x <= ⌈c+e+4σ⌉."""
    reach = e + 4.0 * sigma
    return (x >= torch.floor(c - reach)) & (x <= torch.ceil(c + reach))


def _gather(maps: list[list[Shape]], kind: str):
    """Parameters of all shapes of one kind (host, float64): map index (M,), centres and
    extents (M, 3), sigmas and values (M,), in map order and draw order within a map."""
    rows = [(n, sh) for n, shapes in enumerate(maps) for sh in shapes if sh.kind == kind]
    n = np.array([i for i, _ in rows], dtype=np.int64)
    centers = np.array([sh.center for _, sh in rows], dtype=np.float64).reshape(-1, 3)
    extents = np.array([sh.extent for _, sh in rows], dtype=np.float64).reshape(-1, 3)
    sigmas = np.array([sh.sigma for _, sh in rows], dtype=np.float64)
    values = np.array([sh.value for _, sh in rows], dtype=np.float64)
    return n, centers, extents, sigmas, values


def _cuboid_sum(size: int, n_maps: int, cuboids, device, dtype) -> torch.Tensor:
    """Σ over each map's cuboids of v·px(x)·py(y)·pz(z), as one batched matmul.

    The 1-D profiles (:func:`_box_profile`, zero outside the 4σ-padded box) are evaluated over
    the full axis in float64 and cast to ``dtype``; then, with C the largest cuboid count of a
    map (missing cuboids have v = 0),
    χ[n, x, (y, z)] = Σ_c (v·px)[n, c, x] · (py ⊗ pz)[n, c, (y, z)]   (bmm, (N,S,C)·(N,C,S²)).

    Returns: (N, S, S, S) ``dtype`` ppm on ``device``.
    """
    n, centers, halves, sigmas, values = cuboids
    counts = np.bincount(n, minlength=n_maps)
    slot = np.arange(len(n)) - np.repeat(np.cumsum(counts) - counts, counts)
    C = int(counts.max(initial=0))
    padded = np.zeros((4, n_maps, C, 3))  # centre, half side, sigma (copied to 3), value (same)
    padded[0, n, slot], padded[1, n, slot] = centers, halves
    padded[2, n, slot], padded[3, n, slot] = sigmas[:, None], values[:, None]
    c, h, sg, v = torch.from_numpy(padded).to(device)[..., None]  # each (N, C, 3, 1)
    x = torch.arange(size, dtype=torch.float64, device=device)
    p = (_box_profile(x, c, h, sg) * _in_box(x, c, h, sg)).to(dtype)  # (N, C, 3, S)
    px = (p[:, :, 0] * v[:, :, 0].to(dtype)).transpose(1, 2)  # (N, S, C)
    pyz = (p[:, :, 1, :, None] * p[:, :, 2, None, :]).reshape(n_maps, C, size * size)
    return torch.bmm(px, pyz).view(n_maps, size, size, size)


def _sphere_chunks(lengths: np.ndarray, budget_voxels: int) -> list[tuple[int, int, int]]:
    """Split boxes, sorted by decreasing side, into chunks (start, stop, side) (host side).

    A chunk pads its boxes to side³ (its largest box side); a box joins the current chunk
    while count·side³ stays within ``budget_voxels`` and its own side³ is at least half of
    side³, so padding wastes at most about half of a chunk. Args: lengths (M, 3), sorted.
    """
    chunks: list[list[int]] = []
    for k, L in enumerate(lengths.max(axis=1).tolist()):
        if chunks and (k + 1 - chunks[-1][0]) * chunks[-1][2] ** 3 <= budget_voxels \
                and 2 * L**3 >= chunks[-1][2] ** 3:
            chunks[-1][1] = k + 1
        else:
            chunks.append([k, k + 1, L])
    return [tuple(ch) for ch in chunks]  # type: ignore[misc]


def _add_sphere_chunk(flat: torch.Tensor, size: int, chunk, side: int, rows: int, profile,
                      dtype) -> None:
    """flat[(n·S + x)·S² + y·S + z] += v·profile(|(x, y, z) − c|) for B spheres, in place.

    Args: chunk = (n (B,) int64, lo and lengths (B, 3) int64, centres (B, 3) float64, radii,
    sigmas, values (B, 1, 1, 1) ``dtype``), all on flat's device; every box is padded to
    side³ and evaluated in slabs of ``rows`` x-planes, (B, rows, side, side) each. Squared
    distances are float64 per axis, then ``dtype``.
    """
    n, lo, lengths, centers, radii, sigmas, values = chunk
    k = torch.arange(side, device=flat.device)
    ix = lo[:, :, None] + k  # (B, 3, side) voxel indices
    d = ix - centers[:, :, None]
    # outside its own box a voxel is placed at r = ∞, where the profile is exactly 0
    d2 = torch.where(k < lengths[:, :, None], d * d, math.inf).to(dtype)
    ix = ix.clamp_(max=size - 1)
    for i in range(0, side, rows):
        x = slice(i, i + rows)
        r = (d2[:, 0, x, None, None] + d2[:, 1, None, :, None] + d2[:, 2, None, None, :]).sqrt_()
        w = profile(r, radii, sigmas).mul_(values)
        lin = (n[:, None, None, None] * size**3 + ix[:, 0, x, None, None] * size**2
               + ix[:, 1, None, :, None] * size + ix[:, 2, None, None, :])
        flat.index_add_(0, lin.view(-1), w.view(-1))


def _add_spheres(flat: torch.Tensor, size: int, spheres, dtype) -> None:
    """Adds every sphere of every map into ``flat``, the (N·S³,) view of the maps, in place.

    Spheres (σ > 0 by :func:`_ball_profile`, σ <= 0 by :func:`_ball_indicator`) are sorted by
    box size and cut into chunks of boxes padded to the chunk's largest
    (:func:`_sphere_chunks`); each chunk is evaluated in blocks whose temporaries stay within
    about ``_SPHERE_BLOCK_BYTES`` (x-slabs where one box alone is larger) and added with one
    ``index_add_`` per block.
    """
    n, centers, radii, sigmas, values = spheres
    lo, lengths = _boxes(centers, radii, sigmas, size)
    nonempty = (lengths > 0).all(axis=1)
    dev = flat.device
    # about 6 temporaries in dtype and an int64 index with its partial sums per voxel
    budget = _SPHERE_BLOCK_BYTES // (6 * torch.finfo(dtype).bits // 8 + 16)
    for profile, group in ((_ball_profile, nonempty & (sigmas > 0)),
                           (_ball_indicator, nonempty & (sigmas <= 0))):
        order = np.flatnonzero(group)[np.argsort(-lengths[group].max(axis=1), kind="stable")]
        params = [torch.from_numpy(a[order]).to(dev) for a in (n, lo, lengths, centers)]
        params += [torch.from_numpy(a[order]).to(dev, dtype)[:, None, None, None]
                   for a in (radii[:, 0], sigmas, values)]
        for start, stop, side in _sphere_chunks(lengths[order], budget):
            rows = max(1, budget // ((stop - start) * side * side))
            chunk = [p[start:stop] for p in params]
            _add_sphere_chunk(flat, size, chunk, side, rows, profile, dtype)


def _shape_weight(sh: Shape, lo, hi, device, dtype) -> torch.Tensor:
    """Smoothed indicator of one shape on its box [lo, hi) (3 ints each), ``dtype`` (X, Y, Z)."""
    axes = [torch.arange(l, h, dtype=torch.float64, device=device) for l, h in zip(lo, hi)]
    if sh.kind == "cuboid":
        px, py, pz = (_box_profile(ax, c, e, sh.sigma).to(dtype)
                      for ax, c, e in zip(axes, sh.center, sh.extent))
        return px[:, None, None] * py[None, :, None] * pz[None, None, :]
    d2 = [((ax - c) ** 2).to(dtype) for ax, c in zip(axes, sh.center)]
    r = (d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :]).sqrt_()
    return (_ball_profile if sh.sigma > 0 else _ball_indicator)(r, sh.extent[0], sh.sigma)


def _render_overwrite(size: int, shapes: list[Shape], device, dtype) -> torch.Tensor:
    """One map, shapes blended in draw order: χ ← χ·(1 − w) + v·w on each shape's box.

    Returns (S, S, S) ``dtype`` ppm.
    """
    vol = torch.zeros((size,) * 3, dtype=dtype, device=device)
    if not shapes:
        return vol
    lo, lengths = _boxes(np.array([sh.center for sh in shapes]),
                         np.array([sh.extent for sh in shapes]),
                         np.array([sh.sigma for sh in shapes]), size)
    for sh, l, L in zip(shapes, lo.tolist(), lengths.tolist()):
        if min(L) <= 0:
            continue
        hi = [a + b for a, b in zip(l, L)]
        w = _shape_weight(sh, l, hi, device, dtype)
        region = vol[l[0]:hi[0], l[1]:hi[1], l[2]:hi[2]]
        region.mul_(1.0 - w).add_(w * sh.value)
    return vol


def _render(size: int, maps: list[list[Shape]], s: SynthSettings, device=None,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """χ of several maps before the support mask: (N, S, S, S) ``dtype`` ppm on ``device``.

    ``overlap="add"``: Σ of all smoothed shapes (cuboids by :func:`_cuboid_sum`, spheres by
    :func:`_add_spheres`); ``"overwrite"``: :func:`_render_overwrite` per map.
    """
    device = torch.device("cpu" if device is None else device)
    if s.overlap == "overwrite":
        return torch.stack([_render_overwrite(size, shapes, device, dtype) for shapes in maps])
    vol = _cuboid_sum(size, len(maps), _gather(maps, "cuboid"), device, dtype)
    _add_spheres(vol.view(-1), size, _gather(maps, "sphere"), dtype)
    return vol


def _support_masks(size: int, centers: np.ndarray, axes: np.ndarray, device) -> torch.Tensor:
    """Support ellipsoids Σ_a ((x_a − c_a)/a_a)² <= 1 of N maps: (N, S, S, S) bool.

    Per-axis terms in float64, summed in float32 in a fixed order, so the mask is the same
    for every ``dtype`` and device. Args: centers, axes (N, 3) voxels.
    """
    x = torch.arange(size, dtype=torch.float64, device=device)
    c, a = (torch.from_numpy(v).to(device)[:, :, None] for v in (centers, axes))
    g = (x - c) / a
    g = (g * g).to(torch.float32)  # (N, 3, S)
    return (g[:, 0, :, None, None] + g[:, 1, None, :, None]) + g[:, 2, None, None, :] <= 1.0


def _check_settings(settings) -> SynthSettings:
    s = settings if settings is not None else SynthSettings()
    if not isinstance(s, SynthSettings):
        raise ValueError(f"settings must be a SynthSettings or None, got {type(s)}")
    return s


def _draw_map(size: int, seed: int, s: SynthSettings):
    """The seeded draw of one map: support ellipsoid centre and semi-axes (3,) and shapes."""
    rng = np.random.default_rng(seed)
    center, axes = _draw_ellipsoid(size, rng, s)
    return center, axes, _draw_shapes(size, rng, s, center, axes)


def render_maps(size: int, seeds, settings: SynthSettings | None = None, physics=None, *,
                device: str | torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> dict:
    """Several synthetic training maps and their fields, rendered together (Graf et al. 2023).

    Map i is :func:`synthetic_sample` ``(size, seeds[i], settings, physics)``: the shapes are
    drawn on the host (numpy, per seed), then all maps are rendered in a few batched kernels on
    ``device`` (see :func:`_render`) — the data path of GPU training.

    Args:
        size: map edge length in voxels, >= 16 (320 in the paper).
        seeds: sequence of N >= 1 non-negative integers (see :func:`split_seed`).
        settings: generator parameters; ``None`` means ``SynthSettings()``.
        physics: object whose ``A(chi)`` maps (..., X, Y, Z) susceptibility to its field;
            ``None`` means :func:`qsmrep.physics.forward_field` (1 mm, B0 along the last axis).
        device: where the maps are rendered and returned; ``None`` means CPU.
        dtype: torch.float32 or torch.float64, of ``chi`` and the rendering arithmetic.

    Returns:
        dict of tensors on ``device``: ``chi`` (N, S, S, S) ``dtype`` ppm (zero outside
        ``mask``), ``field`` (N, S, S, S) ppm (ΔB/B0, ``physics.A(chi)``), ``mask``
        (N, S, S, S) bool (the ellipsoid support).
    """
    size = _check_size(size)
    s = _check_settings(settings)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    device = torch.device("cpu" if device is None else device)
    draws = [_draw_map(size, seed, s) for seed in seeds]
    centers, axes = (np.array([d[i] for d in draws]) for i in (0, 1))
    mask = _support_masks(size, centers, axes, device)
    chi = _render(size, [d[2] for d in draws], s, device, dtype).mul_(mask)
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


# --------------------------------------------------------------------------------------------
# benchmarks (called by the `bench` CLI; not timed tests)
# --------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_generator(sizes=(64, 160, 320), repeats: int = 3, settings: SynthSettings | None = None,
                    device: str | torch.device = "cpu", batch: int = 1):
    """Seconds per map (χ, mask and field) of :func:`render_maps` for each size.

    Each timing is one ``render_maps`` call of ``batch`` fresh seeds on ``device`` divided by
    ``batch`` (CUDA synchronised before and after). One warm-up call per size (kernel caches),
    then ``repeats`` timed calls. Returns a list of dicts ``{"size", "repeats", "seconds_mean",
    "seconds_min", "seconds_first", "device", "batch"}`` (seconds per map).
    """
    device = torch.device(device)
    out = []
    for size in sizes:
        times = []
        for r in range(repeats + 1):
            _synchronize(device)
            t0 = time.perf_counter()
            render_maps(size, range(r * batch, (r + 1) * batch), settings, device=device)
            _synchronize(device)
            times.append((time.perf_counter() - t0) / batch)
        first, times = times[0], times[1:]
        out.append({"size": size, "repeats": repeats, "seconds_mean": float(np.mean(times)),
                    "seconds_min": float(np.min(times)), "seconds_first": first,
                    "device": str(device), "batch": batch})
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
