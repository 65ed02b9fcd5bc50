"""The head phantom (:func:`qsmrep.core.phantom.head_phantom`) as NIfTI files in an acquisition geometry of one's
choosing: a field map, its brain mask and the true χ, to try ``python -m qsmrep predict`` without data of one's own.

The geometry: voxel sizes ``v`` (mm) along the array axes, and the slab tilted by ``tilt`` degrees about the first
array axis, so that the affine is ``A = [R_x(tilt) · diag(v) | t]`` (centred on the scanner origin) and B0 (scanner
z) lies along ``R_x(tilt)ᵀ ẑ = (0, sin tilt, cos tilt)`` in voxel axes, ``tilt`` off the last axis. The field is
the project's forward model in that geometry (:class:`qsmrep.core.physics.DipolePhysics` with ``v`` and that B0),
written in ppm, Hz or rad (:func:`qsmrep.run.predict.to_ppm` inverted). The phantom is drawn on a cubic array, so
with anisotropic voxels the head is stretched along the longer voxel axis.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qsmrep.core.phantom import head_phantom
from qsmrep.core.physics import DipolePhysics
from qsmrep.run.predict import b0_direction_from_affine, to_ppm

NAMES = ("field.nii.gz", "mask.nii.gz", "chi.nii.gz")


def tilted_affine(size: int, voxel_size, tilt_deg: float) -> np.ndarray:
    """``[R_x(tilt) · diag(voxel_size) | t]`` with ``t`` putting the array's centre at the scanner origin."""
    a = math.radians(tilt_deg)
    rotation = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(np.asarray(voxel_size, float))
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (size - 1) / 2)
    return affine


def write_phantom(out_dir: str | Path, size: int = 64, voxel_size=(0.8, 0.8, 1.6), tilt_deg: float = 25.0,
                  units: str = "ppm", b0_tesla: float | None = None, te_seconds: float | None = None) -> dict:
    """Write :data:`NAMES` (field in ``units``, mask 0/1, χ in ppm) into ``out_dir``; returns their paths and the
    geometry (voxel size, B0 direction in voxel axes, its angle to the last axis)."""
    import nibabel as nib

    from qsmrep.run.files import check_writable_dir

    if not 0 <= tilt_deg < 90:
        raise ValueError(f"tilt: must be in [0, 90) degrees, got {tilt_deg}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_writable_dir(out)
    affine = tilted_affine(size, voxel_size, tilt_deg)
    b0 = b0_direction_from_affine(affine)
    phantom = head_phantom(size, DipolePhysics(tuple(voxel_size), b0))
    per_unit = float(to_ppm(np.float64(1.0), units, b0_tesla, te_seconds))  # ppm of one unit of the field
    volumes = (phantom["field"].numpy() / per_unit, phantom["mask"].numpy(), phantom["chi"].numpy())
    paths = {}
    for name, volume in zip(NAMES, volumes):
        paths[name] = out / name
        nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), affine), str(paths[name]))
    return {"paths": paths, "voxel_size": tuple(float(v) for v in voxel_size), "b0_dir": b0,
            "b0_angle_deg": math.degrees(math.acos(min(1.0, abs(b0[2]))))}
