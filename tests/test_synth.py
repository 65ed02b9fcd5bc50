"""Tests of qsmrep.synth (synthetic generator, seeds, patches) and qsmrep.viz."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from qsmrep.physics import forward_field
from qsmrep.synth import (
    Shape,
    SynthSettings,
    _draw_ellipsoid,
    _draw_shapes,
    _render,
    border_voxels,
    crop,
    random_patch_corner,
    random_patches,
    split_seed,
    synthetic_sample,
)


def test_same_seed_identical_different_seed_different():
    a, b, c = synthetic_sample(32, 5), synthetic_sample(32, 5), synthetic_sample(32, 6)
    for k in ("chi", "field", "mask"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["chi"], c["chi"])


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


@pytest.mark.parametrize("kind", ["sphere", "cuboid"])
def test_analytic_smoothing_matches_gaussian_filter(kind):
    n, c, sigma = 40, (19.3, 20.1, 19.7), 2.0
    if kind == "sphere":
        ext = (9.0,) * 3
        fn = lambda x, y, z: (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 81
    else:
        ext = (8.0, 5.5, 10.0)
    out = _render(n, [Shape(kind, c, ext, sigma, 0.7)], SynthSettings())
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
    v = _render(20, sh, st)
    assert v[10, 10, 10] == -0.5 and v[14, 10, 10] == 1.0
    v = _render(20, sh, SynthSettings())
    assert v[10, 10, 10] == 0.5
    s = synthetic_sample(24, 1, st)
    assert not s["chi"][~s["mask"]].any()


def test_settings_and_size_validation():
    for bad in [dict(n_spheres=-1), dict(n_spheres=0, n_cuboids=0), dict(sphere_radius=(0.2, 0.1)),
                dict(sigma=(-0.1, 0.1)), dict(chi_std=-1.0), dict(border_fraction=0.6),
                dict(overlap="max"), dict(cuboid_side=(0.0, 0.1))]:
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            SynthSettings(**bad)
    for size in (8, 15, 0, -3, 16.0):
        with pytest.raises(ValueError, match="size"):
            synthetic_sample(size, 0)


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
    p = crop(vol, corner, 4)
    assert p.shape == (2, 2, 4, 4, 4)
    assert torch.equal(p[..., 0, 0, 0], vol[..., corner[0], corner[1], corner[2]])
    a = random_patches(vol, 4, torch.Generator().manual_seed(7))
    b = random_patches(vol, 4, torch.Generator().manual_seed(7))
    assert a.shape == (2, 2, 4, 4, 4) and torch.equal(a, b)
    # same location across channels: channel 1 is channel 0 shifted by 1000
    assert torch.equal(a[:, 1] - a[:, 0], torch.full_like(a[:, 0], 1000.0))
    assert torch.equal(random_patches(vol, 10, g), vol)
    with pytest.raises(ValueError, match=r"patch_size \(11\).*map size \(10\)"):
        random_patches(vol, 11, g)
    with pytest.raises(ValueError, match="patch_size"):
        random_patch_corner(10, 11, g)


def test_small_sample_is_fast():
    import time

    synthetic_sample(64, 0)
    t = time.perf_counter()
    synthetic_sample(64, 1)
    assert time.perf_counter() - t < 1.0  # generous; measured ~0.015 s on 2 cores


def test_plot_orthogonal_slices():
    import matplotlib

    matplotlib.use("Agg")
    from qsmrep.viz import plot_orthogonal_slices

    fig = plot_orthogonal_slices(synthetic_sample(24, 0))
    assert len(fig.axes) >= 9
