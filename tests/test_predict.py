"""The head phantom and `python -m qsmrep predict` on NIfTI files."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, inv_ornt_aff

from qsmrep.core.metrics import nrmse
from qsmrep.core.phantom import STRUCTURES, head_phantom, label_names
from qsmrep.core.physics import DipolePhysics, forward_field
from qsmrep.core.synth import synthetic_sample
from qsmrep.run.config import Config
from qsmrep.run.predict import GAMMA_BAR_HZ_PER_T, b0_direction_from_affine, predict_nifti, sidecar_path, to_ppm
from qsmrep.run.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def test_phantom_values_and_field():
    p = head_phantom(48)
    chi, mask, labels = p["chi"], p["mask"], p["labels"]
    assert chi.shape == mask.shape == labels.shape == (48, 48, 48)
    assert torch.all(chi[~mask] == 0)
    assert torch.allclose(p["field"], forward_field(chi))
    names = label_names()
    present = {names[i] for i in torch.unique(labels).tolist()}
    assert {"white matter", "grey matter", "left globus pallidus", "vein", "calcification"} <= present
    assert chi[labels == names.index("calcification")].unique().tolist() == [-0.25]  # diamagnetic
    assert chi[labels == names.index("vein")].unique().tolist() == [pytest.approx(0.35)]
    assert all(-0.3 <= value <= 0.4 for *_, value in STRUCTURES)  # realistic ppm range


def test_unit_conversions():
    hz = np.array([GAMMA_BAR_HZ_PER_T * 3 * 1e-6])  # 1 ppm at 3 T
    assert to_ppm(hz, "hz", b0_tesla=3.0)[0] == pytest.approx(1.0)
    te = 0.02
    assert to_ppm(hz * 2 * np.pi * te, "rad", b0_tesla=3.0, te_seconds=te)[0] == pytest.approx(1.0)
    assert to_ppm(hz, "Hz", b0_tesla=3.0)[0] == to_ppm(hz, "HZ", b0_tesla=3.0)[0] == pytest.approx(1.0)  # any case
    with pytest.raises(ValueError, match="b0_tesla"):
        to_ppm(hz, "hz")
    with pytest.raises(ValueError, match="te"):
        to_ppm(hz, "rad", b0_tesla=3.0)


def test_b0_direction_from_affine():
    assert b0_direction_from_affine(np.diag([0.5, 0.5, 2.0, 1.0])) == pytest.approx((0, 0, 1))
    swap = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # voxel x is scanner z
    assert b0_direction_from_affine(swap) == pytest.approx((1, 0, 0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = Config.from_profile("smoke", initial_channels=4, depth=3, epochs=1, early_epoch=1)
    train(config, out, progress=False)
    return out / "epoch_001.pt"


def _save(tmp_path, data, affine, name="field.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def test_predict_round_trip_keeps_affine_and_shape(tmp_path, checkpoint):
    phantom = head_phantom(40)
    affine = np.array([[1.0, 0, 0, -20], [0, 1.0, 0, -22], [0, 0, 1.0, 5], [0, 0, 0, 1]])
    field = _save(tmp_path, phantom["field"].numpy()[:, :37, :], affine)  # 40×37×40: not a multiple of 4
    mask = _save(tmp_path, phantom["mask"].numpy()[:, :37, :].astype(np.float32), affine, "mask.nii.gz")
    out = tmp_path / "chi.nii.gz"
    info = predict_nifti(checkpoint, field, out, mask_path=mask, device="cpu", warn=lambda *_: None)
    image = nib.load(str(out))
    assert image.shape == (40, 37, 40) == tuple(info["output"]["shape"])
    assert np.allclose(image.affine, affine)
    chi = image.get_fdata()
    assert np.isfinite(chi).all() and np.all(chi[~phantom["mask"].numpy()[:, :37, :]] == 0)
    # the same field given in Hz at 3 T gives the same χ (values are ppm either way)
    hz = _save(tmp_path, phantom["field"].numpy()[:, :37, :] * GAMMA_BAR_HZ_PER_T * 3e-6, affine, "hz.nii.gz")
    predict_nifti(checkpoint, hz, tmp_path / "chi_hz.nii", mask_path=mask, units="hz", b0_tesla=3.0, device="cpu",
                  warn=lambda *_: None)
    assert np.allclose(nib.load(str(tmp_path / "chi_hz.nii")).get_fdata(), chi, atol=1e-4)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "qsmrep", "predict", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_predict_refuses_4d_truncated_and_nonfinite(tmp_path, checkpoint):
    four_d = _save(tmp_path, np.zeros((8, 8, 8, 3)), np.eye(4), "four.nii.gz")
    good = _save(tmp_path, np.zeros((16, 16, 16)), np.eye(4), "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    nan = np.zeros((16, 16, 16))
    nan[3, 3, 3] = np.nan
    nonfinite = _save(tmp_path, nan, np.eye(4), "nan.nii.gz")
    for path, word in ((four_d, "4D"), (truncated, "truncated"), (nonfinite, "non-finite")):
        out = tmp_path / f"out_{path.stem}.nii.gz"
        result = _cli("--checkpoint", str(checkpoint), "--field", str(path), "--out", str(out))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in result.stderr
        assert not out.exists() and not list(tmp_path.glob(".out_*"))


def test_predict_cli_writes_output(tmp_path, checkpoint):
    phantom = head_phantom(32)
    field = _save(tmp_path, phantom["field"].numpy(), np.diag([1.0, 1.0, 1.0, 1.0]))
    out = tmp_path / "chi.nii.gz"
    result = _cli("--checkpoint", str(checkpoint), "--field", str(field), "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert nib.load(str(out)).shape == (32, 32, 32)
    with gzip.open(out) as handle:  # a real gzip-compressed NIfTI
        assert len(handle.read()) > 32**3 * 4
    direct = tmp_path / "direct.nii.gz"
    predict_nifti(checkpoint, field, direct, device="cpu", warn=lambda *_: None)
    np.testing.assert_allclose(nib.load(str(out)).get_fdata(), nib.load(str(direct)).get_fdata(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(nib.load(str(out)).affine, nib.load(str(direct)).affine)


def _oblique_affine(voxel, tilt_deg):
    """Voxel axes scaled by ``voxel`` and tilted about the first axis: B0 (scanner z) is ``tilt_deg`` off the last."""
    a = math.radians(tilt_deg)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]]) @ np.diag(voxel)
    affine[:3, 3] = (-20.0, -30.0, 10.0)
    return affine


def _tkd_nrmse_in_and_out_of_frame(chi, field, mask):
    """TKD's NRMSE (%) on ``chi`` in the training frame (1 mm, B0 along the last axis, its own field), and on the
    acquired ``field`` read as if it were in that frame; both fields zeroed outside ``mask`` where one is given."""
    training = DipolePhysics()
    keep = torch.ones_like(chi) if mask is None else torch.from_numpy(mask).float()
    truth, inside = chi.numpy(), np.ones(chi.shape, bool) if mask is None else mask
    in_frame = nrmse(training.tkd(training.A(chi) * keep).numpy(), truth, inside)
    as_if = nrmse(training.tkd(torch.from_numpy(field) * keep).numpy(), truth, inside)
    return in_frame, as_if


def test_tkd_through_the_geometry_path_recovers_an_oblique_anisotropic_field(tmp_path):
    """A field made by the forward model with B0 25° off the last axis and 0.8 × 0.8 × 1.6 mm voxels, as a scanner
    stores it and with its axes permuted and flipped, and once inside a mask: TKD through the geometry path comes
    within a few points of TKD on the same χ in the training frame, far better than TKD applied as if the field were
    in that frame; the output keeps the input's shape and affine, and both storages give the same χ."""
    voxel, tilt = (0.8, 0.8, 1.6), 25.0
    sample = synthetic_sample(64, 3)
    chi, mask = sample["chi"], sample["mask"].numpy()
    affine = _oblique_affine(voxel, tilt)
    b0 = (0.0, math.sin(math.radians(tilt)), math.cos(math.radians(tilt)))
    assert b0_direction_from_affine(affine) == pytest.approx(b0)
    field = DipolePhysics(voxel, b0).A(chi).numpy()
    ornt = np.array([[2, 1], [0, -1], [1, 1]])
    cases = {"scanner": (field, None, affine), "masked": (field, mask, affine),
             "permuted": (apply_orientation(field, ornt), None, affine @ inv_ornt_aff(ornt, field.shape))}
    outputs = {}
    for name, (data, data_mask, data_affine) in cases.items():
        field_path = _save(tmp_path, data, data_affine, f"{name}.nii.gz")
        mask_path = None if data_mask is None else _save(tmp_path, data_mask.astype(np.float32), data_affine, "mask.nii.gz")
        out = tmp_path / f"{name}_chi.nii.gz"
        record = predict_nifti(None, field_path, out, mask_path=mask_path, method="tkd", device="cpu")
        image = nib.load(str(out))
        assert image.shape == data.shape and np.allclose(image.affine, data_affine)
        assert record["geometry"]["resampling"]["from_voxel_size_mm"] == pytest.approx(list(voxel))
        assert record["geometry"]["resampling"]["b0_angle_before_deg"] == pytest.approx(tilt)
        assert b"resampled 0.8x0.8x1.6->1x1x1mm B0 25deg" in image.header["descrip"].tobytes()
        assert json.loads(sidecar_path(out).read_text())["method"] == "TKD"
        outputs[name] = image.get_fdata()
    np.testing.assert_allclose(outputs["permuted"], apply_orientation(outputs["scanner"], ornt), atol=1e-6)
    for name, inside in (("scanner", None), ("masked", mask)):  # measured: 26.7 vs 21.1 and 71.9; 44.4 vs 47.2 and 75.0 %
        in_frame, as_if = _tkd_nrmse_in_and_out_of_frame(chi, field, inside)
        through_geometry = nrmse(outputs[name], chi.numpy(), np.ones(chi.shape, bool) if inside is None else inside)
        assert abs(through_geometry - in_frame) < 7, (name, through_geometry, in_frame)
        assert as_if > 1.5 * through_geometry, (name, as_if, through_geometry)


def test_b0_dir_and_voxel_size_options_are_applied(tmp_path):
    """A field whose B0 lies along the first array axis, stored with an identity affine: ``b0_dir`` makes TKD equal
    the inversion with that geometry (an exact reorientation), without it the field is read as axial."""
    chi = synthetic_sample(32, 1)["chi"]
    sagittal = DipolePhysics(b0_dir=(1.0, 0.0, 0.0))
    path = _save(tmp_path, sagittal.A(chi).numpy(), np.eye(4))
    record = predict_nifti(None, path, tmp_path / "given.nii", method="tkd", b0_dir=(1, 0, 0), device="cpu")
    assert record["geometry"]["resampling"] is None and record["geometry"]["reorientation"]["applied"]
    given = nib.load(str(tmp_path / "given.nii")).get_fdata()
    np.testing.assert_allclose(given, sagittal.tkd(sagittal.A(chi)).numpy(), atol=1e-5)
    predict_nifti(None, path, tmp_path / "header.nii", method="tkd", device="cpu")
    assert np.abs(nib.load(str(tmp_path / "header.nii")).get_fdata() - given).max() > 0.05
    record = predict_nifti(None, path, tmp_path / "coarse.nii", method="tkd", voxel_size=(2, 2, 2), device="cpu")
    assert record["geometry"]["resampling"]["to_shape"] == [64, 64, 64]  # 32 voxels of 2 mm on a 1 mm grid


def test_predict_cli_names_the_model_and_warns_for_a_smoke_one(tmp_path, checkpoint):
    phantom = head_phantom(32)
    field = _save(tmp_path, phantom["field"].numpy() * GAMMA_BAR_HZ_PER_T * 3e-6, np.eye(4))
    out = tmp_path / "chi.nii.gz"
    result = _cli("--checkpoint", str(checkpoint), "--field", str(field), "--out", str(out), "--units", "Hz",
                  "--b0", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "model: elu4 (arm batch, seed 0), profile smoke, epoch 1 of 1 (4 iterations" in result.stdout
    assert "validation NRMSE" in result.stdout and "geometry: already in the training frame" in result.stdout
    assert "WARNING: smoke-scale model" in result.stderr and "python -m qsmrep train --profile cpu" in result.stderr
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["model"]["profile"] == "smoke" and sidecar["model"]["smoke_scale"] is True
    assert sidecar["units"] == "hz" and sidecar["model"]["epoch"] == 1


def test_predict_cli_refuses_resampling_when_asked_and_needs_a_model_for_the_network(tmp_path):
    field = _save(tmp_path, np.zeros((16, 16, 16)), np.diag([0.8, 0.8, 1.6, 1.0]))
    refused = _cli("--method", "tkd", "--field", str(field), "--out", str(tmp_path / "a.nii"), "--geometry", "refuse")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "0.8 × 0.8 × 1.6 mm" in refused.stderr and not (tmp_path / "a.nii").exists()
    no_model = _cli("--field", str(field), "--out", str(tmp_path / "b.nii"))
    assert no_model.returncode == 2 and "--checkpoint" in no_model.stderr


def test_phantom_files_hold_the_forward_field_of_their_own_geometry(tmp_path):
    from qsmrep.run.phantom_nifti import write_phantom

    info = write_phantom(tmp_path, size=32, voxel_size=(0.8, 0.8, 1.6), tilt_deg=25.0, units="hz", b0_tesla=3.0)
    field, chi = (nib.load(str(tmp_path / name)) for name in ("field.nii.gz", "chi.nii.gz"))
    assert field.header.get_zooms() == pytest.approx((0.8, 0.8, 1.6)) and np.allclose(field.affine, chi.affine)
    b0 = b0_direction_from_affine(field.affine)
    assert b0 == pytest.approx((0, math.sin(math.radians(25)), math.cos(math.radians(25)))) and info["b0_angle_deg"] == pytest.approx(25)
    expected_hz = DipolePhysics((0.8, 0.8, 1.6), b0).A(torch.from_numpy(chi.get_fdata().astype(np.float32))).numpy() \
        * GAMMA_BAR_HZ_PER_T * 3e-6
    np.testing.assert_allclose(field.get_fdata(), expected_hz, rtol=1e-4, atol=1e-4)
