"""Tests of qsmrep.core.synth (synthetic generator, seeds, patches) and qsmrep.study.figures."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from qsmrep.core.physics import DipolePhysics, forward_field
from qsmrep.core.shapes import Shape, _ball_indicator, _ball_profile, render_shapes
from qsmrep.core.synth import (
    SynthSettings,
    _draw_ellipsoid,
    _draw_shapes,
    border_voxels,
    crop,
    random_patch_corner,
    render_maps,
    split_seed,
    synthetic_sample,
)

# --------------------------------------------------------------------------------------------
# reference: the numpy renderer that the torch renderer replaced (one shape at a time, float32)
# --------------------------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _np_box_profile(x, c, h, sigma):
    """1-D box [c−h, c+h] convolved with a Gaussian σ, at points x."""
    if sigma <= 0:
        return (np.abs(x - c) <= h).astype(np.float32)
    a = _SQRT2 * sigma
    return (0.5 * (erf((x - c + h) / a) - erf((x - c - h) / a))).astype(np.float32)


def _np_ball_profile(r, radius, sigma):
    """Ball of radius R convolved with an isotropic 3-D Gaussian σ, at distances r."""
    if sigma <= 0:
        return (r <= radius).astype(np.float32)
    a = _SQRT2 * sigma
    rs = np.maximum(r, 1e-6 * sigma)
    p = 0.5 * (erf((radius - rs) / a) + erf((radius + rs) / a)) + (sigma / (rs * _SQRT2PI)) * (
        np.exp(-((radius + rs) ** 2) / (2 * sigma**2)) - np.exp(-((radius - rs) ** 2) / (2 * sigma**2))
    )
    return np.clip(p, 0.0, 1.0).astype(np.float32)


def _np_render(size, shapes, s):
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
                _np_box_profile(ax, c, e, sh.sigma) for ax, c, e in zip(axes, sh.center, sh.extent)
            )
            w = px[:, None, None] * py[None, :, None] * pz[None, None, :]
        else:
            d2 = [((ax - c) ** 2).astype(np.float32) for ax, c in zip(axes, sh.center)]
            r = np.sqrt(d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :])
            w = _np_ball_profile(r, sh.extent[0], sh.sigma)
        region = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if s.overlap == "add":
            region += np.float32(sh.value) * w
        else:
            region *= 1.0 - w
            region += np.float32(sh.value) * w
    return vol


def _np_ellipsoid_mask(size, center, axes):
    g = [((np.arange(size) - c) / a) ** 2 for c, a in zip(center, axes)]
    q = (g[0][:, None].astype(np.float32) + g[1][None, :].astype(np.float32))[:, :, None]
    return (q + g[2][None, None, :].astype(np.float32)) <= 1.0


def numpy_sample(size, seed, settings=None):
    """The replaced numpy generator: same seeded draw, numpy rendering, torch field."""
    s = settings or SynthSettings()
    rng = np.random.default_rng(seed)
    center, axes = _draw_ellipsoid(size, rng, s)
    vol = _np_render(size, _draw_shapes(size, rng, s, center, axes), s)
    mask = _np_ellipsoid_mask(size, center, axes)
    vol *= mask
    chi = torch.from_numpy(vol)
    return {"chi": chi, "field": forward_field(chi), "mask": torch.from_numpy(mask)}


def rel_l2(a, b):
    a, b = torch.as_tensor(a).cpu().double(), torch.as_tensor(b).cpu().double()
    return ((a - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------------------------
# the torch renderer against the reference, across dtypes, batches and devices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", ["add", "overwrite"])
@pytest.mark.parametrize("size,seeds", [(16, [0, 1, 2]), (33, [3, 4]), (64, [5, 6]), (96, [7])])
def test_matches_numpy_reference(size, seeds, overlap):
    st = SynthSettings(overlap=overlap)
    for seed in seeds:
        got, ref = synthetic_sample(size, seed, st), numpy_sample(size, seed, st)
        assert torch.equal(got["mask"], ref["mask"])
        assert rel_l2(got["chi"], ref["chi"]) <= 1e-5
        assert rel_l2(got["field"], ref["field"]) <= 1e-5


def test_matches_numpy_reference_at_paper_size():
    """At 320³ the shapes' smoothing widths reach several voxels (0.9 at 96³), where a cut of the 4σ boxes
    would show; measured agreement 8.5e-8, so a bound ten times the float32 noise (1e-6) guards the profiles."""
    got, ref = synthetic_sample(320, 8), numpy_sample(320, 8)
    assert torch.equal(got["mask"], ref["mask"])
    assert rel_l2(got["chi"], ref["chi"]) <= 1e-6
    assert rel_l2(got["field"], ref["field"]) <= 1e-6


@pytest.mark.parametrize("overlap", ["add", "overwrite"])
@pytest.mark.parametrize("size,seeds", [(16, [0, 1]), (40, [2, 3]), (64, [4])])
def test_float32_matches_float64(size, seeds, overlap):
    st = SynthSettings(overlap=overlap)
    for seed in seeds:
        s32 = synthetic_sample(size, seed, st)
        s64 = synthetic_sample(size, seed, st, dtype=torch.float64)
        assert s32["chi"].dtype == s32["field"].dtype == torch.float32
        assert s64["chi"].dtype == s64["field"].dtype == torch.float64
        assert torch.equal(s32["mask"], s64["mask"])
        assert rel_l2(s32["chi"], s64["chi"]) <= 1e-5
        assert rel_l2(s32["field"], s64["field"]) <= 1e-5


def test_render_maps_equals_single_samples():
    seeds = [3, 14, 15]
    batch = render_maps(40, seeds)
    for k in ("chi", "field", "mask"):
        assert batch[k].shape == (3, 40, 40, 40)
    for i, seed in enumerate(seeds):
        one = synthetic_sample(40, seed)
        assert torch.equal(batch["mask"][i], one["mask"])
        for k in ("chi", "field"):
            scale = one[k].abs().max().item()
            torch.testing.assert_close(batch[k][i], one[k], rtol=1e-6, atol=1e-6 * scale)


def test_device_argument_on_cpu():
    ref = synthetic_sample(24, 2)
    for device in ("cpu", torch.device("cpu")):
        got = synthetic_sample(24, 2, device=device)
        assert all(v.device.type == "cpu" for v in got.values())
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert all(v.device.type == "cpu" for v in render_maps(24, [0, 1], device="cpu").values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("overlap", ["add", "overwrite"])
def test_cuda_matches_cpu(overlap):
    st = SynthSettings(overlap=overlap)
    seeds = [0, 1, 2]
    for size in (33, 96):
        gpu = render_maps(size, seeds, st, device="cuda")
        cpu = render_maps(size, seeds, st)
        assert all(v.device.type == "cuda" for v in gpu.values())
        assert torch.equal(gpu["mask"].cpu(), cpu["mask"])
        assert rel_l2(gpu["chi"], cpu["chi"]) <= 1e-5
        assert rel_l2(gpu["field"], cpu["field"]) <= 1e-5
    one = synthetic_sample(64, 9, st, device=torch.device("cuda"), dtype=torch.float64)
    assert one["chi"].is_cuda and one["chi"].dtype == torch.float64
    assert rel_l2(one["chi"], numpy_sample(64, 9, st)["chi"]) <= 1e-5


def test_same_seed_identical_different_seed_different():
    a, b, c = synthetic_sample(32, 5), synthetic_sample(32, 5), synthetic_sample(32, 6)
    for k in ("chi", "field", "mask"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["chi"], c["chi"])
    x, y = render_maps(48, [1, 2, 3]), render_maps(48, [1, 2, 3])
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_physics_argument_is_used():
    class Doubled:
        def A(self, chi):
            return 2 * forward_field(chi)

    s = synthetic_sample(24, 4, physics=Doubled())
    torch.testing.assert_close(s["field"], 2 * forward_field(s["chi"]))
    op = DipolePhysics(b0_dir=(1.0, 0.0, 0.0))
    maps = render_maps(24, [4, 5], physics=op)
    torch.testing.assert_close(maps["field"], forward_field(maps["chi"], b0_dir=(1.0, 0.0, 0.0)))
    torch.testing.assert_close(maps["chi"][0], s["chi"])


def test_ball_profile_is_stable_near_the_centre():
    """The numpy reference's float32 closed form is off by ~3e-4 at r = 0 (cancellation)."""
    mp = pytest.importorskip("mpmath")  # installed with torch (via sympy)
    mp.mp.dps = 50
    R, sigma = 2.0, 1.5
    r = [0.0, 1e-7, 1e-4, 1e-2, 0.3, 1.0, 2.0, 4.0, 9.0]

    def exact(r):  # the closed form at 50 digits, and its r -> 0 limit
        R_, s, r = mp.mpf(R), mp.mpf(sigma), mp.mpf(r)
        if r == 0:
            return (mp.erf(R_ / (mp.sqrt(2) * s))
                    - mp.sqrt(2 / mp.pi) * R_ / s * mp.exp(-R_**2 / (2 * s**2)))
        a = mp.sqrt(2) * s
        return (mp.erf((R_ - r) / a) + mp.erf((R_ + r) / a)) / 2 + s / (r * mp.sqrt(2 * mp.pi)) * (
            mp.exp(-(R_ + r) ** 2 / (2 * s**2)) - mp.exp(-(R_ - r) ** 2 / (2 * s**2)))

    ref = np.array([float(exact(x)) for x in r])
    for dtype, tol in ((torch.float32, 2e-7), (torch.float64, 1e-15)):
        got = _ball_profile(torch.tensor(r, dtype=dtype), R, sigma).double().numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    hard = _ball_indicator(torch.tensor([0.0, 1.9, 2.1]), 2.0)
    assert torch.equal(hard, torch.tensor([1.0, 1.0, 0.0]))


# --------------------------------------------------------------------------------------------
# properties of the maps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 33, 64])
def test_types_border_mask(size):
    s = synthetic_sample(size, 11)
    assert s["chi"].shape == s["field"].shape == s["mask"].shape == (size,) * 3
    assert s["chi"].dtype == s["field"].dtype == torch.float32 and s["mask"].dtype == torch.bool
    chi = s["chi"].numpy()
    b = math.ceil(size * 40 / 320)
    assert border_voxels(size) == b
    for ax in range(3):
        lo = np.take(chi, np.arange(b), axis=ax)
        hi = np.take(chi, np.arange(size - b, size), axis=ax)
        assert not lo.any() and not hi.any()
    assert not chi[~s["mask"].numpy()].any()
    assert s["mask"].any() and np.count_nonzero(chi) > 0.5 * s["mask"].sum().item()
    # field is the dipole field of chi (and nonzero outside the support)
    torch.testing.assert_close(s["field"], forward_field(s["chi"]))
    assert s["field"][~s["mask"]].abs().max() > 0


def test_shape_values_distribution_and_kinds():
    st = SynthSettings()
    vals, kinds = [], set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        c, a = _draw_ellipsoid(320, rng, st)
        shapes = _draw_shapes(320, rng, st, c, a)
        assert sum(sh.kind == "sphere" for sh in shapes) == st.n_spheres
        assert sum(sh.kind == "cuboid" for sh in shapes) == st.n_cuboids
        kinds |= {sh.kind for sh in shapes}
        vals += [sh.value for sh in shapes]
        for sh in shapes:  # centres inside the ellipsoid's bounding box, within the border
            assert all(abs(p - cc) <= aa for p, cc, aa in zip(sh.center, c, a))
            assert 0.5 <= sh.sigma <= 3.0
    vals = np.array(vals)  # 7200 draws: SE(mean) ~ 0.003, SE(std) ~ 0.002
    assert kinds == {"sphere", "cuboid"}
    assert abs(vals.mean()) < 0.015 and abs(vals.std() - 0.25) < 0.01


def antialiased(fn, n, supersample=4):
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    ax = np.add.outer(np.arange(n), offs).ravel()
    g = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
    inside = fn(*g).astype(float)
    return inside.reshape(n, supersample, n, supersample, n, supersample).mean((1, 3, 5))


@pytest.mark.parametrize("overlap", ["add", "overwrite"])
@pytest.mark.parametrize("kind", ["sphere", "cuboid"])
def test_analytic_smoothing_matches_gaussian_filter(kind, overlap):
    n, c, sigma = 40, (19.3, 20.1, 19.7), 2.0
    if kind == "sphere":
        ext = (9.0,) * 3
        fn = lambda x, y, z: (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 81
    else:
        ext = (8.0, 5.5, 10.0)
    out = render_shapes(n, [[Shape(kind, c, ext, sigma, 0.7)]], overlap)[0].numpy()
    if kind == "sphere":
        pv = antialiased(fn, n)
    else:  # exact partial volume of a box: product of 1-D interval overlaps
        i = np.arange(n)
        f = [np.clip(np.minimum(i + 0.5, cc + e) - np.maximum(i - 0.5, cc - e), 0, 1)
             for cc, e in zip(c, ext)]
        pv = f[0][:, None, None] * f[1][None, :, None] * f[2][None, None, :]
    ref = 0.7 * gaussian_filter(pv, sigma, mode="constant")
    assert np.abs(out - ref).max() < 0.01


def test_overwrite_mode():
    st = SynthSettings(overlap="overwrite")
    sh = [Shape("cuboid", (10.0, 10.0, 10.0), (5.0, 5.0, 5.0), 0.0, 1.0),
          Shape("cuboid", (10.0, 10.0, 10.0), (2.0, 2.0, 2.0), 0.0, -0.5)]
    v = render_shapes(20, [sh], st.overlap)[0]
    assert v[10, 10, 10] == -0.5 and v[14, 10, 10] == 1.0
    v = render_shapes(20, [sh], SynthSettings().overlap)[0]
    assert v[10, 10, 10] == 0.5
    s = synthetic_sample(24, 1, st)
    assert not s["chi"][~s["mask"]].any()


def test_maps_with_unequal_shape_counts_and_empty_kinds():
    """Batched rendering pads cuboid lists of unequal length, handles σ = 0 and empty maps."""
    a = [Shape("cuboid", (8.0, 9.0, 10.0), (3.0, 2.0, 4.0), 1.0, 0.3),
         Shape("sphere", (12.3, 8.0, 9.0), (3.0,) * 3, 0.8, -0.2)]  # off-centre: see below
    b = [Shape("cuboid", (10.0, 10.0, 10.0), (2.0, 5.0, 3.0), 0.5, 0.4),
         Shape("sphere", (9.6, 10.2, 11.1), (4.0,) * 3, 0.0, 0.25)]  # σ = 0: hard edge
    got = render_shapes(20, [a, b, []], SynthSettings().overlap)
    for i, shapes in enumerate([a, b, []]):
        ref = _np_render(20, shapes, SynthSettings())
        assert np.abs(got[i].numpy() - ref).max() < 1e-6


def test_sphere_blocks_do_not_change_the_map(monkeypatch):
    """Tiny blocks (many chunks, slabs of a few x-planes) give the map of the default blocks."""
    import qsmrep.core.shapes as shapes

    ref = render_maps(48, [1, 2])
    monkeypatch.setattr(shapes, "_SPHERE_BLOCK_BYTES", 40 * 300)
    got = render_maps(48, [1, 2])
    torch.testing.assert_close(got["chi"], ref["chi"], rtol=1e-6, atol=1e-6)
    assert rel_l2(got["chi"][1], numpy_sample(48, 2)["chi"]) <= 1e-5


def test_settings_and_size_validation():
    for bad in [dict(n_spheres=-1), dict(n_spheres=0, n_cuboids=0), dict(sphere_radius=(0.2, 0.1)),
                dict(sigma=(-0.1, 0.1)), dict(chi_std=-1.0), dict(border_fraction=0.6),
                dict(overlap="max"), dict(cuboid_side=(0.0, 0.1))]:
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            SynthSettings(**bad)
    for size in (8, 15, 0, -3, 16.0):
        with pytest.raises(ValueError, match="size"):
            synthetic_sample(size, 0)
    with pytest.raises(ValueError, match="seeds"):
        render_maps(16, [])
    with pytest.raises(ValueError, match="dtype"):
        synthetic_sample(16, 0, dtype=torch.float16)
    with pytest.raises(ValueError, match="settings"):
        synthetic_sample(16, 0, settings={"n_spheres": 3})


def test_split_seed():
    seeds = {s: {split_seed(0, s, i) for i in range(200)} for s in ("train", "val", "test")}
    assert all(len(v) == 200 for v in seeds.values())
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"])
    assert not (seeds["val"] & seeds["test"])
    assert split_seed(0, "train", 3) == split_seed(0, "train", 3) != split_seed(1, "train", 3)
    with pytest.raises(ValueError, match="split"):
        split_seed(0, "training", 0)


def test_patches():
    vol = torch.arange(2 * 2 * 10**3, dtype=torch.float32).reshape(2, 2, 10, 10, 10)
    g = torch.Generator().manual_seed(0)
    corner = random_patch_corner(10, 4, g)
    assert len(corner) == 3 and all(0 <= c <= 6 for c in corner)
    assert random_patch_corner(10, 4, torch.Generator().manual_seed(7)) == \
        random_patch_corner(10, 4, torch.Generator().manual_seed(7))
    p = crop(vol, corner, 4)
    assert p.shape == (2, 2, 4, 4, 4)
    assert torch.equal(p[..., 0, 0, 0], vol[..., corner[0], corner[1], corner[2]])
    assert torch.equal(crop(vol, (0, 0, 0), 10), vol)
    with pytest.raises(ValueError, match="corner"):
        crop(vol, (7, 0, 0), 4)
    with pytest.raises(ValueError, match=r"patch_size \(11\).*map size \(10\)"):
        crop(vol, (0, 0, 0), 11)
    with pytest.raises(ValueError, match="patch_size"):
        random_patch_corner(10, 11, g)


def test_plot_orthogonal_slices():
    import matplotlib

    matplotlib.use("Agg")
    from qsmrep.study.figures import plot_orthogonal_slices

    fig = plot_orthogonal_slices(synthetic_sample(24, 0))
    assert len(fig.axes) >= 9


#: Fingerprints of two maps as generator version "torch-1" renders them: (size, seed) → (Σχ, Σ|χ|, Σ field², mask
#: voxels), measured when that version was set. A renderer whose maps differ must bump GENERATOR_VERSION (a run folder
#: then refuses to resume with other maps) and these values with it.
FINGERPRINTS = {"torch-1": {(48, 11): (-645.1395407737349, 2199.272347187776, 89.48915163310005, 9832),
                            (64, 2023): (813.2424599847624, 4853.234229340134, 268.8865348925166, 15337)}}


def test_rendered_maps_are_those_of_this_generator_version():
    from qsmrep.core.synth import GENERATOR_VERSION

    assert GENERATOR_VERSION in FINGERPRINTS, f"record the fingerprints of generator version {GENERATOR_VERSION!r}"
    for (size, seed), (chi_sum, chi_abs, field_energy, voxels) in FINGERPRINTS[GENERATOR_VERSION].items():
        sample = synthetic_sample(size, seed)
        chi, field = sample["chi"].double(), sample["field"].double()
        assert int(sample["mask"].sum()) == voxels
        assert float(chi.sum()) == pytest.approx(chi_sum, rel=1e-5)
        assert float(chi.abs().sum()) == pytest.approx(chi_abs, rel=1e-5)
        assert float(field.pow(2).sum()) == pytest.approx(field_energy, rel=1e-5)
