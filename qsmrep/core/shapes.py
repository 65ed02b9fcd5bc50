"""Rendering drawn shapes into volumes: analytic Gaussian-smoothed spheres and cuboids, and support ellipsoids.

Each shape is blurred *analytically*: the exact convolution of its indicator with an isotropic
Gaussian of width σ, evaluated at voxel centres (a cuboid is separable, a product of three erf
profiles; a ball has a closed radial form), and zero outside its bounding box padded by 4σ.
:func:`render_shapes` renders the shapes of several maps together: with ``overlap="add"`` all
cuboids of all maps are one batched matmul of their 1-D profiles and all spheres are evaluated as a
few padded batches of bounding boxes, added into the volume with ``index_add_``; ``"overwrite"``
paints shapes in order. 1-D profiles and coordinates are float64; the 3-D arithmetic is in the
requested dtype. The random draws of the shapes are :mod:`qsmrep.core.synth`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Shape:
    """One drawn shape, in voxel units of the map it belongs to."""

    kind: str  # "sphere" or "cuboid"
    center: tuple[float, float, float]  # voxel coordinates (voxel i has centre at i)
    extent: tuple[float, float, float]  # sphere: (R, R, R) radius; cuboid: half side lengths
    sigma: float  # Gaussian smoothing sigma, voxels
    value: float  # susceptibility before smoothing, ppm


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


def _to_device(array: np.ndarray, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array as a tensor on ``device`` (cast to ``dtype`` if given). To a GPU it goes through pinned
    memory as a non-blocking copy on the current stream, so the host does not wait for the GPU."""
    tensor = torch.from_numpy(array)
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


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
    c, h, sg, v = _to_device(padded, device)[..., None]  # each (N, C, 3, 1)
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
        params = [_to_device(a[order], dev) for a in (n, lo, lengths, centers)]
        params += [_to_device(a[order], dev, dtype)[:, None, None, None] for a in (radii[:, 0], sigmas, values)]
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


def render_shapes(size: int, maps: list[list[Shape]], overlap: str = "add", device=None,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """χ of several maps before the support mask: (N, S, S, S) ``dtype`` ppm on ``device``.

    ``overlap`` ``"add"``: Σ of all smoothed shapes (cuboids by :func:`_cuboid_sum`, spheres by
    :func:`_add_spheres`); ``"overwrite"``: :func:`_render_overwrite` per map.
    """
    device = torch.device("cpu" if device is None else device)
    if overlap == "overwrite":
        return torch.stack([_render_overwrite(size, shapes, device, dtype) for shapes in maps])
    vol = _cuboid_sum(size, len(maps), _gather(maps, "cuboid"), device, dtype)
    _add_spheres(vol.view(-1), size, _gather(maps, "sphere"), dtype)
    return vol


def support_masks(size: int, centers: np.ndarray, axes: np.ndarray, device) -> torch.Tensor:
    """Support ellipsoids Σ_a ((x_a − c_a)/a_a)² <= 1 of N maps: (N, S, S, S) bool.

    Per-axis terms in float64, summed in float32 in a fixed order, so the mask is the same
    for every ``dtype`` and device. Args: centers, axes (N, 3) voxels.
    """
    x = torch.arange(size, dtype=torch.float64, device=device)
    c, a = (_to_device(v, device)[:, :, None] for v in (centers, axes))
    g = (x - c) / a
    g = (g * g).to(torch.float32)  # (N, 3, S)
    return (g[:, 0, :, None, None] + g[:, 1, None, :, None]) + g[:, 2, None, None, :] <= 1.0
