"""QSM forward model: the unit dipole kernel, the forward field, and classical inversions.

Units: susceptibility ``chi`` and field ``B`` are both in ppm, ``B`` being the relative field
perturbation ΔB/B0 along B0. Arrays are torch tensors shaped ``(..., X, Y, Z)``; the last three
dimensions are space, any leading dimensions (batch, channel) are carried along. B0 points along
the last axis (``b0_dir=(0, 0, 1)``) unless stated otherwise.

Forward model (Salomir et al. 2003, Marques & Bowtell 2005, "fast forward field computation")::

    B(k) = D(k) · χ(k),      D(k) = 1/3 − (k·b̂)² / |k|²,      D(0) = 0

``D(0) = 0`` together with the 1/3 term is the Lorentz-sphere-corrected convention: the field of
a uniformly magnetised sphere is zero inside it and the dipole field outside, and a map's mean
susceptibility produces no field (Marques & Bowtell 2005; QSM challenge 2.0, Marques et al. 2021).

The product in k-space is a *circular* convolution: sources near one face produce field that
wraps around to the opposite face. ``pad`` zero-pads each spatial face before the FFT to reduce
that; the default is 0 because the synthetic maps of :mod:`qsmrep.core.synth` are zero in a border
of at least 40/320 of the size on every face.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "dipole_kernel",
    "forward_field",
    "DipolePhysics",
    "tkd",
    "tikhonov",
]

Vec3 = tuple[float, float, float]

# --------------------------------------------------------------------------------------------
# argument checks (every bad input is a ValueError naming the argument and the allowed range)
# --------------------------------------------------------------------------------------------


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        items = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be 3 positive integers, got {shape!r}") from None
    if len(items) != 3 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in items
    ):
        raise ValueError(f"shape must be 3 positive integers, got {shape!r}")
    return tuple(int(s) for s in items)  # type: ignore[return-value]


def _check_vec3(name: str, value) -> tuple[float, float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of 3 finite numbers, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must have length 3, got length {len(items)}: {value!r}")
    if not all(math.isfinite(v) for v in items):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return items  # type: ignore[return-value]


def _check_voxel_size(voxel_size) -> Vec3:
    v = _check_vec3("voxel_size", voxel_size)
    if not all(x > 0 for x in v):
        raise ValueError(f"voxel_size must be 3 finite numbers > 0 (mm), got {voxel_size!r}")
    return v


def _check_b0_dir(b0_dir) -> Vec3:
    b = _check_vec3("b0_dir", b0_dir)
    norm = math.hypot(*b)  # no overflow or underflow of the squares
    if norm == 0.0:
        raise ValueError(f"b0_dir must be a non-zero finite 3-vector, got {b0_dir!r}")
    return (b[0] / norm, b[1] / norm, b[2] / norm)


def _check_pad(pad) -> int:
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0 (voxels per side), got {pad!r}")
    return int(pad)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_volume(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor shaped (..., X, Y, Z), got {type(x)}")
    if x.dim() < 3:
        raise ValueError(
            f"{name} must have at least 3 dimensions (..., X, Y, Z), got shape {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        raise ValueError(
            f"{name} must be a real floating tensor (float16/bfloat16/float32/float64), "
            f"got dtype {x.dtype}"
        )
    if any(s == 0 for s in x.shape[-3:]):
        raise ValueError(f"{name} spatial size must be positive, got shape {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------------


def _kernel_np(freqs: Sequence[np.ndarray], b: Vec3) -> np.ndarray:
    """D = 1/3 − (k·b̂)²/|k|² on the grid spanned by three 1-D frequency arrays (float64).

    In-place arithmetic on two full-size temporaries (this is the cost of a first 320³ call).
    """
    kx = freqs[0][:, None, None]
    ky = freqs[1][None, :, None]
    kz = freqs[2][None, None, :]
    k2 = (kx * kx + ky * ky) + kz * kz  # (X, Y, Z)
    kb = (kx * b[0] + ky * b[1]) + kz * b[2]
    # k = 0 only where all three 1-D frequencies vanish
    z = [np.flatnonzero(f == 0.0) for f in freqs]
    k2[np.ix_(*z)] = 1.0
    np.multiply(kb, kb, out=kb)
    np.divide(kb, k2, out=kb)
    np.subtract(1.0 / 3.0, kb, out=kb)
    kb[np.ix_(*z)] = 0.0
    return kb


def dipole_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Full-size unit dipole kernel in k-space, unshifted FFT order.

    .. math:: D(k) = 1/3 − (k·b̂)² / |k|²,   D(0) = 0

    with ``k_i = fftfreq(shape[i], d=voxel_size[i])`` (cycles/mm; only ratios matter) and
    ``b̂ = b0_dir / |b0_dir|``. Index ``[0, 0, 0]`` is k = 0 (``np.fft.fftshift`` centres it).
    Computed in float64, then cast to ``dtype``. Values lie in [−2/3, 1/3].

    Args:
        shape: (X, Y, Z), three positive ints.
        voxel_size: voxel edge lengths in mm, > 0 (anisotropic allowed).
        b0_dir: B0 direction in array coordinates; normalised here, must be non-zero.

    Returns:
        Real tensor of shape (X, Y, Z).

    Source: Salomir et al. 2003 (Concepts Magn Reson B 19:26); Marques & Bowtell 2005
    (Concepts Magn Reson B 25:65).
    """
    shape = _check_shape(shape)
    vs = _check_voxel_size(voxel_size)
    b = _check_b0_dir(b0_dir)
    freqs = [np.fft.fftfreq(n, d=v) for n, v in zip(shape, vs)]
    return torch.from_numpy(_kernel_np(freqs, b)).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _half_kernel_np(shape: tuple[int, int, int], vs: Vec3, b: Vec3) -> np.ndarray:
    """Even part of D on the rfft half grid (X, Y, Z//2+1), float64.

    The half grid keeps ``fftfreq`` values (so it is exactly ``dipole_kernel(...)[..., :Z//2+1]``
    wherever D(k) = D(−k)). D is even in k, but on the Nyquist planes of even-sized axes the
    discrete −k maps back onto the same index with the *same* frequency −N/2, so for an oblique
    B0 the discrete kernel is not exactly Hermitian there. We use the even part
    (D(k) + D(−k mod N))/2, which makes the operator real, self-adjoint and exactly equal to
    ``Re F⁻¹[D · F χ]``; it differs from D only on those Nyquist planes, and only for oblique B0.
    """
    freqs = [np.fft.fftfreq(n, d=v) for n, v in zip(shape, vs)]
    nz = shape[2] // 2 + 1
    half = [freqs[0], freqs[1], freqs[2][:nz]]
    d = _kernel_np(half, b)
    oblique = sum(1 for x in b if x != 0.0) > 1
    if oblique and any(n % 2 == 0 for n in shape):
        neg = [f[(-np.arange(len(f))) % len(f)] for f in freqs]
        neg_half = [neg[0], neg[1], neg[2][:nz]]
        d = 0.5 * (d + _kernel_np(neg_half, b))
    d.setflags(write=False)
    return d


@functools.lru_cache(maxsize=16)
def _half_kernel_torch(
    shape: tuple[int, int, int], vs: Vec3, b: Vec3, device: str, dtype: torch.dtype
) -> torch.Tensor:
    d = _half_kernel_np(shape, vs, b)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    with torch.inference_mode(False):  # a kernel first made during inference must serve later training too
        return torch.from_numpy(d.astype(np_dtype, copy=True)).to(device=device, dtype=dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _apply_half_kernel(x: torch.Tensor, half_kernel: torch.Tensor, pad: int) -> torch.Tensor:
    """irfftn(K · rfftn(pad(x))) over the last three dims, cropped back; dtype preserved.

    ``half_kernel`` must have shape (X+2p, Y+2p, (Z+2p)//2+1) in the compute dtype.
    """
    in_dtype = x.dtype
    xc = x.to(half_kernel.dtype)
    if pad:
        xc = torch.nn.functional.pad(xc, (pad,) * 6)
    s = xc.shape[-3:]
    y = torch.fft.irfftn(torch.fft.rfftn(xc, dim=(-3, -2, -1)) * half_kernel, s=s, dim=(-3, -2, -1))
    if pad:
        y = y[..., pad:-pad, pad:-pad, pad:-pad]
    return y.to(in_dtype)


def _kernel_for(x: torch.Tensor, voxel_size, b0_dir, pad: int) -> torch.Tensor:
    vs = _check_voxel_size(voxel_size)
    b = _check_b0_dir(b0_dir)
    shape = tuple(int(n) + 2 * pad for n in x.shape[-3:])
    return _half_kernel_torch(shape, vs, b, str(x.device), _compute_dtype(x.dtype))


def forward_field(
    chi: torch.Tensor,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad: int = 0,
) -> torch.Tensor:
    """Field perturbation of a susceptibility map (Marques & Bowtell 2005).

    .. math:: B = F⁻¹[ D · F(χ) ]

    computed with ``torch.fft.rfftn`` over the last three dims and the rfft half of
    :func:`dipole_kernel` (its even part, see ``_half_kernel_np``); kernels are cached per
    (shape, voxel size, direction, device, dtype).

    Args:
        chi: susceptibility in ppm, shape (..., X, Y, Z), any leading dims, CPU or CUDA.
            bf16/fp16 are computed in float32 and cast back; float64 stays float64.
        voxel_size: mm, > 0.
        b0_dir: B0 direction (normalised here).
        pad: zero-padding voxels per spatial face before the FFT, against circular wrap-around
            (>= 0; default 0, the synthetic maps have zero borders).

    Returns:
        Field in ppm (ΔB/B0), same shape and dtype as ``chi``; differentiable w.r.t. ``chi``.
    """
    chi = _check_volume("chi", chi)
    pad = _check_pad(pad)
    return _apply_half_kernel(chi, _kernel_for(chi, voxel_size, b0_dir, pad), pad)


@dataclass(frozen=True)
class DipolePhysics:
    """The acquisition geometry and the dipole forward model, built once and handed to the
    generator, the loss and the baselines (deepinv's ``physics`` object).

    ``A`` is :func:`forward_field` with this geometry; the operator is real and self-adjoint (D is
    real and even), so ``A_adjoint`` is ``A``: ⟨Aχ, v⟩ = ⟨χ, Av⟩. Kernels are cached per shape,
    device and dtype, so one object serves every map size and device. Frozen and hashable: two
    objects are equal when they describe the same geometry.

    Args:
        voxel_size: voxel edge lengths in mm, > 0 (anisotropic allowed; paper: not stated, 1 mm).
        b0_dir: B0 direction in array coordinates, non-zero (normalised here; default the last axis).
        pad: zero-padding voxels per face before the FFT, against circular wrap-around (≥ 0).
    """

    voxel_size: Vec3 = (1.0, 1.0, 1.0)
    b0_dir: Vec3 = (0.0, 0.0, 1.0)
    pad: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size", _check_voxel_size(self.voxel_size))
        object.__setattr__(self, "b0_dir", _check_b0_dir(self.b0_dir))
        object.__setattr__(self, "pad", _check_pad(self.pad))

    @classmethod
    def from_config(cls, config) -> "DipolePhysics":
        """The geometry of a :class:`qsmrep.run.config.Config` (``voxel_size``, ``b0_dir``, ``field_pad``)."""
        return cls(config.voxel_size, config.b0_dir, config.field_pad)

    @property
    def b0_axis_name(self) -> str:
        """``"k_z"``-style name of the k-space component along B0, or ``"k·b̂"`` when oblique."""
        axes = [i for i, v in enumerate(self.b0_dir) if v != 0.0]
        return f"k_{'xyz'[axes[0]]}" if len(axes) == 1 else "k·b̂"

    def A(self, chi: torch.Tensor) -> torch.Tensor:
        """Field (ppm) of ``chi`` (ppm), shape (..., X, Y, Z): :func:`forward_field` with this geometry."""
        return forward_field(chi, self.voxel_size, self.b0_dir, pad=self.pad)

    def A_adjoint(self, field: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`A`; the dipole operator is self-adjoint, so this is ``A``."""
        return self.A(field)

    def kernel(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """:func:`dipole_kernel` of ``shape`` (unpadded) with this geometry."""
        return dipole_kernel(shape, self.voxel_size, self.b0_dir, dtype=dtype, device=device)

    def tkd(self, field: torch.Tensor, threshold: float = 0.19) -> torch.Tensor:
        """:func:`tkd` with this geometry."""
        return tkd(field, threshold, self.voxel_size, self.b0_dir, pad=self.pad)

    def tikhonov(self, field: torch.Tensor, alpha: float = 0.05) -> torch.Tensor:
        """:func:`tikhonov` with this geometry."""
        return tikhonov(field, alpha, self.voxel_size, self.b0_dir, pad=self.pad)


# --------------------------------------------------------------------------------------------
# classical inversions (baselines)
# --------------------------------------------------------------------------------------------


def _invert(field: torch.Tensor, voxel_size, b0_dir, pad: int, filt) -> torch.Tensor:
    field = _check_volume("field", field)
    pad = _check_pad(pad)
    d = _kernel_for(field, voxel_size, b0_dir, pad)
    return _apply_half_kernel(field, filt(d), pad)


def tkd(
    field: torch.Tensor,
    threshold: float = 0.19,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad: int = 0,
) -> torch.Tensor:
    """Truncated k-space division (TKD; Shmueli et al. 2009 MRM 62:1510, Wharton et al. 2010).

    .. math:: χ = F⁻¹[ D_t⁻¹ · F(B) ],   D_t⁻¹ = 1/D if |D| > t else sign(D)/t

    This is the "sign-preserving" variant (the inverse is clipped to ±1/t near the magic cone,
    not set to zero); where D = 0 (k = 0 and exactly on the cone) sign(D) = 0, so those
    coefficients are set to 0 — the mean of χ is not recoverable. No correction for the
    underestimation caused by truncation is applied. Default t = 0.19 (Wharton et al. 2010;
    used in many QSM comparisons, e.g. Langkammer et al. 2018).

    Args:
        field: ppm, shape (..., X, Y, Z).
        threshold: t > 0.
        voxel_size, b0_dir, pad: as in :func:`forward_field`.

    Returns:
        χ in ppm, same shape and dtype as ``field``.
    """
    t = _check_positive("threshold", threshold)

    def filt(d: torch.Tensor) -> torch.Tensor:
        big = d.abs() > t
        return torch.where(big, 1.0 / torch.where(big, d, torch.ones_like(d)), torch.sign(d) / t)

    return _invert(field, voxel_size, b0_dir, pad, filt)


def tikhonov(
    field: torch.Tensor,
    alpha: float = 0.05,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad: int = 0,
) -> torch.Tensor:
    """Closed-form Tikhonov (L2-regularised) dipole inversion (e.g. Bilgic et al. 2014).

    .. math:: χ = argmin ‖Dχ − B‖² + α‖χ‖² = F⁻¹[ D · F(B) / (D² + α) ]

    Args:
        field: ppm, shape (..., X, Y, Z).
        alpha: regularisation weight α > 0 (default 0.05).
        voxel_size, b0_dir, pad: as in :func:`forward_field`.

    Returns:
        χ in ppm, same shape and dtype as ``field``.
    """
    a = _check_positive("alpha", alpha)
    return _invert(field, voxel_size, b0_dir, pad, lambda d: d / (d * d + a))
