"""Susceptibility maps from a user's own field map (NIfTI): a trained network, or a classical inversion, applied
in the frame the network was trained in.

Geometry: the voxel size comes from the header's zooms, the B0 direction from the affine (B0 is along the
scanner's z axis; in voxel axes it is R⁻¹ẑ, with R the affine's rotation part); both can be overridden.
:mod:`qsmrep.run.geometry` brings the field into the training frame (the checkpoint's ``voxel_size`` and
``b0_dir``; for a classical inversion without a checkpoint, the default configuration's) by exact reorientation
and, where needed, resampling, and brings χ back onto the input grid (``geometry="refuse"``: a ValueError where
resampling would be needed). The classical inversions (``method`` ``tkd`` | ``tikhonov``,
:func:`qsmrep.run.baselines.invert`) take the same path as the network.

Field units (``units``, case-insensitive):

* ``ppm``: ΔB/B0 in parts per million (what the networks take);
* ``hz``: frequency offset Δf; ppm = Δf / (γ̄ · B0) · 10⁶ with γ̄ = 42.577478 MHz/T;
* ``rad``: unwrapped, background-removed phase φ at echo time TE; Δf = φ / (2π · TE), then as Hz.

Outputs: χ in ppm as NIfTI with the input's shape, affine and header (its ``descrip`` says what was done), and a
JSON sidecar beside it (``chi.nii.gz`` → ``chi.json``): input, geometry steps, method, model and its metrics.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from qsmrep import __version__
from qsmrep.run import modelcard
from qsmrep.run.geometry import GEOMETRY_MODES, plan_frame

GAMMA_BAR_HZ_PER_T = 42.577478e6
UNITS = ("ppm", "hz", "rad")
#: what inverts the field: the checkpoint's network, or a classical inversion (names of qsmrep.run.baselines)
METHODS = {"network": None, "tkd": "TKD", "tikhonov": "Tikhonov"}


def to_ppm(field: np.ndarray, units: str, b0_tesla: float | None = None, te_seconds: float | None = None) -> np.ndarray:
    """Convert a field map to ppm (see the module docstring for the formulas); ``units`` is case-insensitive."""
    units = str(units).lower()
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


def save_nifti_like(volume: np.ndarray, image, out_path: Path, description: str = "") -> None:
    """Write ``volume`` as float32 NIfTI with ``image``'s affine and header (``descrip`` set to ``description``, ASCII,
    at most 80 characters), atomically (temporary name, rename)."""
    import nibabel as nib

    header = image.header.copy()
    header.set_data_dtype(np.float32)
    if description:
        header["descrip"] = description.encode("ascii", "replace")[:80]
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


def sidecar_path(out_path: str | Path) -> Path:
    """The JSON sidecar of an output NIfTI: ``chi.nii.gz`` → ``chi.json`` (BIDS style)."""
    out_path = Path(out_path)
    stem = out_path.name[: -len(".nii.gz")] if out_path.name.endswith(".nii.gz") else out_path.stem
    return out_path.with_name(f"{stem}.json")


def default_parameter(method: str) -> float:
    """The textbook parameter of a classical inversion: the default of :meth:`DipolePhysics.tkd` (threshold 0.19)
    or :meth:`DipolePhysics.tikhonov` (α 0.05), read from their signatures (the one place that states them)."""
    from qsmrep.core.physics import DipolePhysics

    function = {"tkd": DipolePhysics.tkd, "tikhonov": DipolePhysics.tikhonov}[method]
    return float(next(p.default for p in inspect.signature(function).parameters.values() if p.name not in ("self", "field")))


def _read_field(field_path, mask_path, units: str, b0_tesla, te_seconds):
    """(field ppm, zero outside the mask; mask bool or None; the field's image)."""
    field, image = load_nifti_volume(field_path, "field")
    mask = None
    if mask_path is not None:
        mask_data, _ = load_nifti_volume(mask_path, "mask")
        if mask_data.shape != field.shape:
            raise ValueError(f"mask: shape {mask_data.shape} differs from the field's {field.shape}")
        mask = mask_data > 0
    field = to_ppm(field, units, b0_tesla, te_seconds)
    if mask is not None:
        field = np.where(mask, field, 0.0)
    return np.asarray(field, np.float32), mask, image


def _acquisition(image, voxel_size, b0_dir) -> tuple[tuple, tuple, str]:
    """(voxel size mm, B0 unit vector in voxel axes, where they came from), checked."""
    zooms = tuple(round(float(z), 6) for z in image.header.get_zooms()[:3])  # float32 in the header: 0.800000011920929
    voxel = tuple(float(v) for v in voxel_size) if voxel_size is not None else zooms
    b0 = np.asarray(b0_dir if b0_dir is not None else b0_direction_from_affine(image.affine), float)
    if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
        raise ValueError(f"voxel_size: must be three numbers > 0, got {voxel}")
    if b0.shape != (3,) or not np.isfinite(b0).all() or np.linalg.norm(b0) == 0:
        raise ValueError(f"b0_dir: must be three finite numbers, not all zero, got {tuple(b0)}")
    source = ("voxel size " + ("given" if voxel_size is not None else "from the header") + ", B0 "
              + ("given" if b0_dir is not None else "from the affine"))
    return voxel, tuple(float(v) for v in b0 / np.linalg.norm(b0)), source


def _inverter(method: str, checkpoint, parameter, dev):
    """(field (X, Y, Z) numpy in the training frame → χ̂ numpy, the training config, the method's record)."""
    from qsmrep.core.physics import DipolePhysics
    from qsmrep.run import baselines
    from qsmrep.run.config import Config
    from qsmrep.run.evaluate import inference_precision, load_model, predict

    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {list(METHODS)}")
    if method == "network":
        if checkpoint is None:
            raise ValueError("checkpoint: --method network needs --checkpoint (or use --method tkd|tikhonov)")
        model, config, epoch = load_model(checkpoint, dev)
        precision = inference_precision(config, dev)
        invert = lambda f: predict(model, torch.from_numpy(f), dev, precision, config.memory_format).numpy()  # noqa: E731
        return invert, config, {"method": "network", "model": modelcard.describe(checkpoint, config, epoch)}
    config = load_model(checkpoint, "cpu")[1] if checkpoint is not None else Config()
    value = default_parameter(method) if parameter is None else float(parameter)
    physics = DipolePhysics.from_config(config)
    invert = baselines.inverter(METHODS[method], physics, value)
    record = {"method": METHODS[method], "parameter": {"name": baselines.PARAMETER[METHODS[method]], "value": value,
                                                       "default": parameter is None}}
    return lambda f: torch.as_tensor(invert(torch.from_numpy(f))).cpu().numpy(), config, record


def _method_text(record: dict, config) -> str:
    """``method: TKD, threshold 0.19 (the default), in the training frame (1 × 1 × 1 mm, B0 along (0, 0, 1))``."""
    parameter = record["parameter"]
    return (f"method: {record['method']}, {parameter['name']} {parameter['value']:g}"
            f"{' (the default)' if parameter['default'] else ''}, in the training frame "
            f"({' × '.join(f'{v:g}' for v in config.voxel_size)} mm, B0 along {tuple(config.b0_dir)})")


def _header_description(record: dict, frame) -> str:
    """The output header's ``descrip`` (ASCII, ≤ 80 characters): version, method, geometry steps."""
    model = record.get("model")
    what = f"{model['variant']}@{model['epoch']} {model['profile']}" if model else record["method"]
    steps = ["reoriented"] if frame.reoriented else []
    if frame.resampling:
        r = frame.resampling
        steps.append(f"resampled {'x'.join(f'{v:g}' for v in r.voxel_in)}->{'x'.join(f'{v:g}' for v in r.voxel_out)}mm "
                     f"B0 {r.b0_angle_deg:.0f}deg")
    return f"qsmrep {__version__} chi ppm {what}; {', '.join(steps) or 'training frame'}; see .json"[:80]


def predict_nifti(checkpoint: str | Path | None, field_path: str | Path, out_path: str | Path, *, mask_path=None,
                  units: str = "ppm", b0_tesla: float | None = None, te_seconds: float | None = None,
                  voxel_size=None, b0_dir=None, device: str = "auto", method: str = "network",
                  parameter: float | None = None, geometry: str = "resample", model_notes: dict | None = None,
                  warn=print, say=lambda line: None) -> dict:
    """Invert ``field_path`` and write χ (ppm) to ``out_path`` with the input's shape, affine and header, and the JSON
    sidecar :func:`sidecar_path` beside it.

    ``method`` ``network`` needs ``checkpoint``; ``tkd`` | ``tikhonov`` take ``parameter`` (threshold or α; default
    :func:`default_parameter`) and the checkpoint's training frame, if one is given. ``model_notes`` (e.g. a test
    NRMSE known from a metrics table) are added to the model's record. Before the inference, ``say`` receives a line
    naming the model (or method) and one naming the geometry steps, ``warn`` the warnings (a smoke-scale model).
    Returns the sidecar's record. Nothing is written if any input is invalid.
    """
    from qsmrep.run.files import check_writable_dir, write_json
    from qsmrep.run.runtime import resolve_device

    out_path = Path(out_path)
    if not out_path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"out: {str(out_path)!r} must end in .nii or .nii.gz")
    if str(units).lower() not in UNITS:
        raise ValueError(f"units: {units!r} is not one of {list(UNITS)}")
    if geometry not in GEOMETRY_MODES:
        raise ValueError(f"geometry: {geometry!r} is not one of {list(GEOMETRY_MODES)}")
    dev = resolve_device(device)
    check_writable_dir(out_path.parent)  # before the inference, not after it
    invert, config, record = _inverter(method, checkpoint, parameter, dev)
    if "model" in record:
        record["model"].update(model_notes or {})
    field, mask, image = _read_field(field_path, mask_path, units, b0_tesla, te_seconds)
    voxel, b0, source = _acquisition(image, voxel_size, b0_dir)
    frame = plan_frame(field.shape, image.affine, voxel, b0, config.voxel_size, config.b0_dir, geometry)
    say(f"model: {modelcard.text(record['model'])}" if "model" in record else _method_text(record, config))
    say(f"geometry: {frame.summary()}")
    for line in modelcard.warnings(record.get("model")):
        warn(line)
    chi = frame.to_input(invert(frame.to_training(field)))
    if mask is not None:
        chi = np.where(mask, chi, 0.0).astype(np.float32)
    record = {"qsmrep": __version__, "field": str(field_path), "mask": None if mask_path is None else str(mask_path),
              "units": str(units).lower(), "b0_tesla": b0_tesla, "te_seconds": te_seconds, "acquisition": source,
              **record, "geometry": frame.describe(),
              "output": {"path": str(out_path), "shape": list(chi.shape), "affine": "the field's", "units": "ppm"}}
    save_nifti_like(chi, image, out_path, _header_description(record, frame))
    write_json(sidecar_path(out_path), record)
    return record
