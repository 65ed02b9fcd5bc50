"""Susceptibility maps from a user's own field map (NIfTI) with a trained checkpoint.

Voxel size and B0 direction come from the NIfTI header and affine (overridable). B0 is along the
scanner's z axis; in voxel axes its direction is R⁻¹ẑ, with R the rotation part of the affine. The
networks of this project are trained with B0 along the last voxel axis and 1 mm voxels: a field
acquired otherwise is still inverted, with a warning, since the network cannot know the geometry.

Field units (``units``):

* ``ppm``: ΔB/B0 in parts per million (what the networks take);
* ``hz``: frequency offset Δf; ppm = Δf / (γ̄ · B0) · 10⁶ with γ̄ = 42.577478 MHz/T;
* ``rad``: unwrapped, background-removed phase φ at echo time TE; Δf = φ / (2π · TE), then as Hz.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

GAMMA_BAR_HZ_PER_T = 42.577478e6
UNITS = ("ppm", "hz", "rad")


def to_ppm(field: np.ndarray, units: str, b0_tesla: float | None = None, te_seconds: float | None = None) -> np.ndarray:
    """Convert a field map to ppm (see the module docstring for the formulas)."""
    if units not in UNITS:
        raise ValueError(f"units: {units!r} is not one of {list(UNITS)}")
    if units == "ppm":
        return field
    if not b0_tesla or b0_tesla <= 0:
        raise ValueError(f"b0_tesla: field strength in tesla (> 0) is needed for units {units!r}, got {b0_tesla!r}")
    if units == "rad":
        if not te_seconds or te_seconds <= 0:
            raise ValueError(f"te: echo time (> 0) is needed for units 'rad', got {te_seconds!r}")
        field = field / (2 * math.pi * te_seconds)
    return field / (GAMMA_BAR_HZ_PER_T * b0_tesla) * 1e6


def b0_direction_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Unit vector of the scanner z axis in voxel axes: R⁻¹ ẑ with R = affine[:3, :3] / voxel sizes."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    zooms = np.linalg.norm(linear, axis=0)
    if np.any(zooms == 0):
        raise ValueError("affine: a voxel axis has zero length")
    direction = np.linalg.solve(linear / zooms, np.array([0.0, 0.0, 1.0]))
    direction /= np.linalg.norm(direction)
    return tuple(float(v) for v in direction)


def load_nifti_volume(path: str | Path, name: str = "field"):
    """(data float32 (X, Y, Z), image) from a 3D NIfTI; ValueError if missing, not 3D, truncated or non-finite."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such file {str(path)!r}")
    try:
        image = nib.load(str(path))
        shape = image.shape
        if len(shape) == 4 and shape[3] == 1:
            data = np.asarray(image.dataobj, dtype=np.float32)[..., 0]
        elif len(shape) != 3:
            raise ValueError(f"{name}: {str(path)!r} is {len(shape)}D with shape {shape}; a 3D volume is needed")
        else:
            data = np.asarray(image.dataobj, dtype=np.float32)
    except ValueError as err:
        if str(err).startswith(f"{name}:"):
            raise
        raise ValueError(f"{name}: cannot read {str(path)!r} ({err})") from None
    except Exception as err:  # noqa: BLE001 - truncated gzip/EOF and header errors come in many types
        raise ValueError(f"{name}: cannot read {str(path)!r}: truncated or not NIfTI ({type(err).__name__})") from None
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ValueError(f"{name}: {str(path)!r} holds {bad} non-finite values (NaN/Inf)")
    return data, image


def save_nifti_like(volume: np.ndarray, image, out_path: Path) -> None:
    """Write ``volume`` as float32 NIfTI with ``image``'s affine and header, atomically (temporary name, rename)."""
    import nibabel as nib

    header = image.header.copy()
    header.set_data_dtype(np.float32)
    result = nib.Nifti1Image(volume.astype(np.float32), image.affine, header)
    suffix = ".nii.gz" if out_path.name.endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=f".tmp{suffix}", dir=out_path.parent)
    os.close(fd)
    try:
        nib.save(result, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict_nifti(checkpoint: str | Path, field_path: str | Path, out_path: str | Path, *, mask_path=None,
                  units: str = "ppm", b0_tesla: float | None = None, te_seconds: float | None = None,
                  voxel_size=None, b0_dir=None, device: str = "auto", warn=print) -> dict:
    """Invert ``field_path`` with ``checkpoint`` and write χ (ppm) to ``out_path`` with the input's affine.

    Returns a dict with the geometry used (voxel size, B0 direction, angle to the training B0 axis).
    Nothing is written if any input is invalid.
    """
    from qsmrep.run.evaluate import inference_precision, load_model, predict
    from qsmrep.run.files import check_writable_dir
    from qsmrep.run.runtime import resolve_device

    out_path = Path(out_path)
    if not out_path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"out: {str(out_path)!r} must end in .nii or .nii.gz")
    if units not in UNITS:
        raise ValueError(f"units: {units!r} is not one of {list(UNITS)}")
    dev = resolve_device(device)
    check_writable_dir(out_path.parent)  # before the inference, not after it
    model, config, _epoch = load_model(checkpoint, dev)
    field, image = load_nifti_volume(field_path, "field")
    mask = None
    if mask_path is not None:
        mask_data, _ = load_nifti_volume(mask_path, "mask")
        if mask_data.shape != field.shape:
            raise ValueError(f"mask: shape {mask_data.shape} differs from the field's {field.shape}")
        mask = mask_data > 0
    field = to_ppm(field, units, b0_tesla, te_seconds)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    voxel_size = tuple(voxel_size) if voxel_size is not None else zooms
    b0_dir = tuple(b0_dir) if b0_dir is not None else b0_direction_from_affine(image.affine)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise ValueError(f"voxel_size: must be three numbers > 0, got {voxel_size}")
    b0 = np.asarray(b0_dir, float)
    if b0.shape != (3,) or not np.isfinite(b0).all() or np.linalg.norm(b0) == 0:
        raise ValueError(f"b0_dir: must be three finite numbers, not all zero, got {b0_dir}")
    trained = np.asarray(config.b0_dir, float)
    angle = math.degrees(math.acos(min(1.0, abs(b0 @ trained) / np.linalg.norm(b0) / np.linalg.norm(trained))))
    if angle > 5:
        warn(f"warning: B0 is {angle:.0f}° off the axis the network was trained with {config.b0_dir}; expect errors")
    if not np.allclose(voxel_size, config.voxel_size, rtol=0.2):
        warn(f"warning: voxel size {voxel_size} differs from the training voxel size {config.voxel_size}")
    if mask is not None:
        field = np.where(mask, field, 0.0).astype(np.float32)
    chi = predict(model, torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32)), dev, inference_precision(config, dev),
                  config.memory_format).numpy()
    if mask is not None:
        chi = np.where(mask, chi, 0.0).astype(np.float32)
    save_nifti_like(chi, image, out_path)
    return {"voxel_size": voxel_size, "b0_dir": tuple(float(v) for v in b0 / np.linalg.norm(b0)), "b0_angle_deg": angle,
            "shape": chi.shape}
