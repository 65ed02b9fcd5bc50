"""The head phantom and `python -m qsmrep predict` on NIfTI files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qsmrep.run.config import Config
from qsmrep.core.physics import forward_field
from qsmrep.core.phantom import STRUCTURES, head_phantom, label_names
from qsmrep.run.predict import GAMMA_BAR_HZ_PER_T, b0_direction_from_affine, predict_nifti, to_ppm
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
    info = predict_nifti(checkpoint, field, out, mask_path=mask, device="cpu")
    image = nib.load(str(out))
    assert image.shape == (40, 37, 40) == info["shape"]
    assert np.allclose(image.affine, affine)
    chi = image.get_fdata()
    assert np.isfinite(chi).all() and np.all(chi[~phantom["mask"].numpy()[:, :37, :]] == 0)
    # the same field given in Hz at 3 T gives the same χ (values are ppm either way)
    hz = _save(tmp_path, phantom["field"].numpy()[:, :37, :] * GAMMA_BAR_HZ_PER_T * 3e-6, affine, "hz.nii.gz")
    predict_nifti(checkpoint, hz, tmp_path / "chi_hz.nii", mask_path=mask, units="hz", b0_tesla=3.0, device="cpu")
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
