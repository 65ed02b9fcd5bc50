"""Tests of qsmrep.core.physics against independent references (closed forms, numpy FFT)."""

import math

import numpy as np
import pytest
import torch

from qsmrep.run.config import Config
from qsmrep.core.physics import DipolePhysics, dipole_kernel, forward_field, tikhonov, tkd


def np_kernel(shape, voxel_size, b0):
    """Independent numpy reference: D = 1/3 - (k.b)^2/|k|^2, D(0)=0, fftfreq order."""
    b = np.asarray(b0, float) / np.linalg.norm(b0)
    k = np.meshgrid(*[np.fft.fftfreq(n, d=v) for n, v in zip(shape, voxel_size)], indexing="ij")
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    kb = k[0] * b[0] + k[1] * b[1] + k[2] * b[2]
    d = np.zeros(shape)
    nz = k2 > 0
    d[nz] = 1 / 3 - kb[nz] ** 2 / k2[nz]
    return d


def np_field(chi, voxel_size=(1, 1, 1), b0=(0, 0, 1)):
    return np.fft.ifftn(np_kernel(chi.shape, voxel_size, b0) * np.fft.fftn(chi)).real


def antialiased_sphere(n, radius, center, supersample=5):
    """Partial-volume sphere: fraction of each voxel inside |x - c| <= R (supersampled)."""
    chi = np.zeros((n, n, n))
    lo = [int(math.floor(c - radius - 1)) for c in center]
    hi = [int(math.ceil(c + radius + 1)) + 1 for c in center]
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    axes = [np.add.outer(np.arange(l, h), offs).ravel() for l, h in zip(lo, hi)]
    g = np.meshgrid(*[(a - c) ** 2 for a, c in zip(axes, center)], indexing="ij", sparse=True)
    inside = (g[0] + g[1] + g[2] <= radius**2).astype(float)
    shp = [h - l for l, h in zip(lo, hi)]
    frac = inside.reshape(shp[0], supersample, shp[1], supersample, shp[2], supersample).mean((1, 3, 5))
    chi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = frac
    return chi


def test_sphere_closed_form():
    n, R, c = 128, 10.0, (64.0, 64.0, 64.0)
    chi = antialiased_sphere(n, R, c)
    field = forward_field(torch.from_numpy(chi)).numpy()  # float64
    x, y, z = np.meshgrid(*[np.arange(n) - cc for cc in c], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    outside = (r - R > 3) & (r - R <= 20)
    cos2 = z[outside] ** 2 / r[outside] ** 2
    ref = (1 / 3) * (R / r[outside]) ** 3 * (3 * cos2 - 1)
    err = np.linalg.norm(field[outside] - ref) / np.linalg.norm(ref)
    print(f"sphere outside relative L2 error: {err:.4f}")
    assert err < 0.03
    inside = r < R - 3
    assert np.abs(field[inside]).max() < 0.02  # ~0 inside (Lorentz-corrected), vs 2/3 peak outside


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 17, 9), (12, 9, 10)])
@pytest.mark.parametrize(
    "voxel_size,b0", [((1, 1, 1), (0, 0, 1)), ((0.7, 1.0, 1.3), (0.3, -0.5, 0.8))]
)
def test_kernel_matches_numpy(shape, voxel_size, b0):
    d = dipole_kernel(shape, voxel_size, b0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(d, np_kernel(shape, voxel_size, b0), atol=1e-6, rtol=0)
    d32 = dipole_kernel(shape, voxel_size, b0)
    assert d32.dtype == torch.float32 and d32.shape == shape


def test_kernel_symmetry_and_dc():
    for shape in [(9, 11, 7), (10, 12, 8)]:
        d = dipole_kernel(shape, (0.7, 1.0, 1.3), (0.3, -0.5, 0.8), dtype=torch.float64).numpy()
        assert d[0, 0, 0] == 0.0
        assert d.min() >= -2 / 3 - 1e-12 and d.max() <= 1 / 3 + 1e-12
        # D(k) = D(-k): compare with the index-reversed grid, on odd axes (even axes have a
        # Nyquist bin whose negation is itself with the same frequency value)
        neg = d[np.ix_(*[(-np.arange(n)) % n for n in shape])]
        if all(n % 2 for n in shape):
            np.testing.assert_allclose(d, neg, atol=1e-12)
    d = dipole_kernel((10, 12, 8), dtype=torch.float64).numpy()  # axis-aligned: symmetric always
    neg = d[np.ix_(*[(-np.arange(n)) % n for n in d.shape])]
    np.testing.assert_allclose(d, neg, atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 16, 16), (11, 14, 9)])
@pytest.mark.parametrize("b0", [(0, 0, 1), (0.3, -0.5, 0.8)])
def test_forward_matches_numpy(shape, b0):
    rng = np.random.default_rng(0)
    chi = rng.standard_normal(shape)
    vs = (0.7, 1.0, 1.3)
    out = forward_field(torch.from_numpy(chi), vs, b0).numpy()
    np.testing.assert_allclose(out, np_field(chi, vs, b0), atol=1e-10)
    out32 = forward_field(torch.from_numpy(chi).float(), vs, b0)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), np_field(chi, vs, b0), atol=1e-5)


def test_linearity_and_adjoint():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 12, 10, 14, generator=g, dtype=torch.float64)
    f = lambda x: forward_field(x, (1.0, 0.9, 1.2), (0.2, 0.1, 1.0))
    torch.testing.assert_close(f(2.5 * a - 0.7 * b), 2.5 * f(a) - 0.7 * f(b))
    op = DipolePhysics((1.0, 0.9, 1.2), (0.2, 0.1, 1.0))
    torch.testing.assert_close(op.A(a), f(a))
    lhs = (op.A(a) * b).sum()
    rhs = (a * op.A_adjoint(b)).sum()
    assert abs(lhs - rhs) < 1e-10 * abs(lhs).clamp_min(1)


def test_physics_object_carries_the_geometry_everywhere():
    """One geometry object: its forward model, kernel and baselines all use its voxel size, B0 and padding."""
    g = torch.Generator().manual_seed(3)
    chi = torch.randn(10, 12, 14, generator=g, dtype=torch.float64)
    physics = DipolePhysics((0.8, 1.0, 1.2), (1.0, 0.0, 0.0), pad=2)
    assert physics.b0_dir == (1.0, 0.0, 0.0) and physics.b0_axis_name == "k_x"
    torch.testing.assert_close(physics.A(chi), forward_field(chi, (0.8, 1.0, 1.2), (1, 0, 0), pad=2))
    torch.testing.assert_close(physics.kernel((10, 12, 14), dtype=torch.float64),
                               dipole_kernel((10, 12, 14), (0.8, 1.0, 1.2), (1, 0, 0), dtype=torch.float64))
    field = physics.A(chi)
    torch.testing.assert_close(physics.tkd(field), tkd(field, 0.19, (0.8, 1.0, 1.2), (1, 0, 0), pad=2))
    torch.testing.assert_close(physics.tikhonov(field, 0.1), tikhonov(field, 0.1, (0.8, 1.0, 1.2), (1, 0, 0), pad=2))
    config = Config.from_profile("smoke", voxel_size=(0.8, 1.0, 1.2), b0_dir=(2.0, 0.0, 0.0), field_pad=2)
    assert DipolePhysics.from_config(config) == physics and hash(DipolePhysics.from_config(config)) == hash(physics)
    assert DipolePhysics(b0_dir=(0.3, 0.0, 1.0)).b0_axis_name == "k·b̂"
    with pytest.raises(ValueError, match="b0_dir"):
        DipolePhysics(b0_dir=(0, 0, 0))
    with pytest.raises(ValueError, match="pad"):
        DipolePhysics(pad=-1)


def test_rotating_b0_equals_permuting():
    g = torch.Generator().manual_seed(2)
    chi = torch.randn(10, 12, 14, generator=g, dtype=torch.float64)
    bx = forward_field(chi, b0_dir=(1, 0, 0))
    # move axis 0 to the last position: B0 along x becomes B0 along z
    bz = forward_field(chi.permute(1, 2, 0), b0_dir=(0, 0, 1))
    torch.testing.assert_close(bz, bx.permute(1, 2, 0))
    # anisotropic voxels permute with the axes
    bx = forward_field(chi, (0.7, 1.0, 1.3), b0_dir=(1, 0, 0))
    bz = forward_field(chi.permute(1, 2, 0), (1.0, 1.3, 0.7), b0_dir=(0, 0, 1))
    torch.testing.assert_close(bz, bx.permute(1, 2, 0))


def test_gradcheck():
    chi = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: forward_field(x, b0_dir=(0.2, 0.3, 1.0)), (chi,))
    x = torch.randn(2, 1, 8, 8, 8, requires_grad=True)
    forward_field(x).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(7, 8, 9), (2, 7, 8, 9), (2, 3, 7, 8, 9)])
def test_batched_shapes(shape):
    x = torch.randn(shape, dtype=torch.float64)
    y = forward_field(x)
    assert y.shape == x.shape
    flat = x.reshape(-1, 7, 8, 9)
    ref = torch.stack([forward_field(v) for v in flat]).reshape(shape)
    torch.testing.assert_close(y, ref)


def test_pad():
    x = torch.zeros(16, 16, 16, dtype=torch.float64)
    x[2:5, 3:6, 1:4] = 1.0
    y = forward_field(x, pad=8)
    assert y.shape == x.shape
    xp = torch.nn.functional.pad(x, (8,) * 6)
    torch.testing.assert_close(y, forward_field(xp)[8:-8, 8:-8, 8:-8])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_dtype(dtype):
    x = torch.randn(1, 8, 8, 8)
    y = forward_field(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), forward_field(x.to(dtype).float()), atol=2e-2, rtol=2e-2)


def nrmse(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_inversions_recover_modes_away_from_cone():
    # chi built from Fourier modes with |D| >= 1/3 (k along x: D = 1/3; along z: D = -2/3)
    n = 32
    i = torch.arange(n, dtype=torch.float64)
    chi = (torch.cos(2 * math.pi * 3 * i / n)[:, None, None]
           + 0.5 * torch.sin(2 * math.pi * 2 * i / n)[None, None, :]).expand(n, n, n).contiguous()
    field = forward_field(chi)
    assert nrmse(field, chi) > 0.5
    assert nrmse(tkd(field), chi) < 1e-10  # |D| > 0.19: exact division
    assert nrmse(tikhonov(field, alpha=1e-4), chi) < 2e-3  # D^2/(D^2+a) >= 0.999


def test_inversions_on_smooth_map():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    chi = np.zeros((32, 32, 32))
    chi[8:24, 8:24, 8:24] = gaussian_filter(rng.standard_normal((16, 16, 16)), 2.0) * 5
    chi = torch.from_numpy(chi)
    field = forward_field(chi)
    base = nrmse(field, chi)
    e_tkd = nrmse(tkd(field, 0.1), chi)
    e_tik = nrmse(tikhonov(field, 1e-3), chi)
    assert e_tkd < 0.5 * base and e_tik < 0.5 * base


def test_bad_inputs():
    x = torch.zeros(4, 4, 4)
    cases = [
        (lambda: dipole_kernel((4, 4)), "shape"),
        (lambda: dipole_kernel((4, 0, 4)), "shape"),
        (lambda: dipole_kernel((4, 4, 4.5)), "shape"),
        (lambda: forward_field(torch.zeros(4, 4)), "chi"),
        (lambda: forward_field(torch.zeros(4, 4, 4, dtype=torch.int64)), "chi"),
        (lambda: forward_field(x, voxel_size=(1, 0, 1)), "voxel_size"),
        (lambda: forward_field(x, voxel_size=(1, -1, 1)), "voxel_size"),
        (lambda: forward_field(x, voxel_size=(1, float("nan"), 1)), "voxel_size"),
        (lambda: forward_field(x, voxel_size=(1, 1)), "voxel_size"),
        (lambda: forward_field(x, b0_dir=(0, 0, 0)), "b0_dir"),
        (lambda: forward_field(x, b0_dir=(0, float("inf"), 1)), "b0_dir"),
        (lambda: forward_field(x, b0_dir=(0, 0, 1, 0)), "b0_dir"),
        (lambda: forward_field(x, pad=-1), "pad"),
        (lambda: tkd(x, threshold=0), "threshold"),
        (lambda: tkd(x, threshold=float("nan")), "threshold"),
        (lambda: tikhonov(x, alpha=-1), "alpha"),
        (lambda: tikhonov(torch.zeros(3, 3)), "field"),
        (lambda: DipolePhysics(b0_dir=(0, 0, 0)), "b0_dir"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=name):
            fn()


def test_b0_direction_of_extreme_magnitude_is_normalised():
    """Only the direction of B0 matters: huge or tiny vectors give the unit vector's kernel."""
    reference = dipole_kernel((6, 8, 10), b0_dir=(1, 1, 0)).numpy()
    for scale in (1e200, 1e-170):
        got = dipole_kernel((6, 8, 10), b0_dir=(scale, scale, 0)).numpy()
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12)


def test_kernel_first_made_during_inference_still_trains():
    """Validation (inference mode) may make a shape's kernel first; training on that shape must still backprop."""
    from qsmrep.core.loss import PhysicsInformedLoss

    shape = (1, 1, 13, 11, 9)  # a shape no other test uses, so the kernel cache starts empty for it
    chi = torch.randn(shape)
    with torch.inference_mode():
        forward_field(chi)
    pred = torch.randn(shape, requires_grad=True)
    PhysicsInformedLoss()(pred, chi, forward_field(chi)).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
