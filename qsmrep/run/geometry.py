"""A field map brought into the frame a network was trained in, and its χ brought back onto the input grid.

The networks of this project are trained on grids of the training voxel size ``t`` (``config.voxel_size``, 1 mm)
with B0 along the training axis ``b_t`` (``config.b0_dir``, the last array axis). A user's field has voxel sizes
``v`` (mm, per array axis) and B0 along ``b`` (a unit vector in voxel axes, from the header or given). Two steps,
each undone in reverse order on the way back (:meth:`Frame.to_training`, :meth:`Frame.to_input`):

1. **Reorientation** (exact: permutations and flips, no interpolation), with nibabel's orientation tools: first to
   the closest RAS orientation of the affine (``io_orientation``, as ``nibabel.as_closest_canonical``), so that a
   field gives the same χ however its axes are stored; then, where B0 is not nearest the training axis, the axis
   nearest B0 is moved there (pointing along ``+b_t``).
2. **Resampling** (only where B0 is more than :data:`ANGLE_TOLERANCE_DEG` off the training axis or a voxel size
   differs from the training one by more than :data:`VOXEL_RTOL`): onto a grid of voxel size ``t`` rotated so that
   B0 lies along ``b_t``. With ``Q`` the smallest rotation taking ``b`` to ``b_t`` (Rodrigues), a voxel at index
   ``i`` sits at ``p = diag(v)(i − c_in)`` mm, and the training grid's index ``j`` at ``Q p = diag(t)(j − c_out)``;
   so ``i = M j + (c_in − M c_out)`` with ``M = diag(v)⁻¹ Qᵀ diag(t)`` (``c`` the grid centres, ``(n − 1)/2``).
   The training grid spans the rotated field of view (``n_out = ⌈|Q| (n v) / t⌉`` per axis). Values are cubic
   B-spline interpolated (``scipy.ndimage.affine_transform``, order :data:`SPLINE_ORDER`), zero outside; the way
   back uses ``M⁻¹``. The field (ppm, ΔB/B0) does not depend on the voxel size, so no value is rescaled.

Resampling smooths: features finer than the training voxel are lost on the way (as for any method that resamples
to the resolution it was built for, e.g. QSMxT's resampling to axial); exact reorientations lose nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: B0 at most this far (degrees) from the training axis counts as along it (no resampling for the angle)
ANGLE_TOLERANCE_DEG = 1.0
#: voxel sizes within this relative difference of the training voxel size count as equal
VOXEL_RTOL = 0.02
#: order of the B-spline interpolation of a resampling (3: cubic)
SPLINE_ORDER = 3
#: what to do where resampling is needed: interpolate onto the training grid and back, or refuse (ValueError)
GEOMETRY_MODES = ("resample", "refuse")


def line_angle_deg(a, b) -> float:
    """Angle between the lines along ``a`` and ``b`` in degrees, in [0, 90] (B0's sign does not matter)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    cosine = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(min(1.0, cosine)))


def _mm(values) -> str:
    """``0.8 × 0.8 × 1.6`` (rounded to 3 decimals, trailing zeros dropped)."""
    return " × ".join(f"{round(float(v), 3):g}" for v in values)


def reorient_vector(vector, ornt: np.ndarray) -> np.ndarray:
    """Components of ``vector`` (voxel axes of the input) in the axes of the reoriented array: input axis ``i``
    becomes axis ``ornt[i, 0]``, its direction flipped where ``ornt[i, 1] == −1``."""
    out = np.zeros(3)
    for axis, (target, flip) in enumerate(np.asarray(ornt, int)):
        out[target] = float(vector[axis]) * flip
    return out


def _b0_ornt(b0: np.ndarray, target_axis: int, target_sign: float) -> np.ndarray:
    """Orientation moving the axis nearest ``b0`` to ``target_axis`` (pointing along ``target_sign``), the other
    two axes kept in their order; the identity where B0 is already nearest ``target_axis``."""
    nearest = int(np.argmax(np.abs(b0)))
    others = iter(a for a in range(3) if a != target_axis)
    ornt = np.array([[next(others) if a != nearest else target_axis, 1] for a in range(3)])
    if np.sign(b0[nearest]) != target_sign:
        ornt[nearest, 1] = -1
    return ornt


def _compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The orientation of applying ``first``, then ``second``."""
    return np.array([[second[a, 0], f * second[a, 1]] for a, f in np.asarray(first, int)])


def rotation_between(a, b) -> np.ndarray:
    """The smallest rotation ``Q`` (3 × 3) taking the line along ``a`` onto the line along ``b``: ``Q â = ±b̂``
    (B0's sign does not matter, so ``−â`` is used where ``â·b̂ < 0``). Rodrigues: ``Q = I + K + K² (1 − c)/s²``,
    ``K`` the cross-product matrix of ``â × b̂``, ``s = |â × b̂|``, ``c = â·b̂``; the identity for parallel lines."""
    a, b = np.asarray(a, float) / np.linalg.norm(a), np.asarray(b, float) / np.linalg.norm(b)
    if a @ b < 0:
        a = -a
    axis = np.cross(a, b)
    s, c = float(np.linalg.norm(axis)), float(a @ b)
    if s < 1e-12:
        return np.eye(3)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k * ((1 - c) / s**2)


@dataclass(frozen=True)
class Resampling:
    """The affine map between a reoriented grid (``shape_in``, voxel ``voxel_in`` mm) and the training grid
    (``shape_out``, ``voxel_out``): input index ``i = matrix @ j + offset`` for training index ``j``."""

    shape_in: tuple[int, int, int]
    shape_out: tuple[int, int, int]
    voxel_in: tuple[float, float, float]
    voxel_out: tuple[float, float, float]
    matrix: np.ndarray
    offset: np.ndarray
    b0_angle_deg: float

    @classmethod
    def plan(cls, shape, voxel_in, b0, voxel_out, b0_out) -> "Resampling":
        """The rotation taking ``b0`` to ``b0_out`` and the grid of ``voxel_out`` that holds the rotated volume."""
        v, t = np.asarray(voxel_in, float), np.asarray(voxel_out, float)
        q = rotation_between(b0, b0_out)
        n = np.asarray(shape)
        n_out = np.maximum(1, np.ceil(np.abs(q) @ (n * v) / t - 1e-6)).astype(int)
        matrix = np.diag(1 / v) @ q.T @ np.diag(t)
        offset = (n - 1) / 2 - matrix @ ((n_out - 1) / 2)
        return cls(tuple(int(x) for x in n), tuple(int(x) for x in n_out), tuple(v), tuple(t), matrix, offset,
                   line_angle_deg(b0, b0_out))

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` (``shape_in``) interpolated onto the training grid (``shape_out``), float32."""
        from scipy.ndimage import affine_transform

        return affine_transform(np.asarray(volume, np.float64), self.matrix, self.offset, output_shape=self.shape_out,
                                order=SPLINE_ORDER, mode="constant", cval=0.0).astype(np.float32)

    def backward(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` (``shape_out``) interpolated back onto the reoriented input grid (``shape_in``), float32."""
        from scipy.ndimage import affine_transform

        inverse = np.linalg.inv(self.matrix)
        return affine_transform(np.asarray(volume, np.float64), inverse, -inverse @ self.offset,
                                output_shape=self.shape_in, order=SPLINE_ORDER, mode="constant",
                                cval=0.0).astype(np.float32)


@dataclass(frozen=True)
class Frame:
    """How one input grid (``shape``, ``voxel_size`` mm, B0 ``b0_dir`` in its voxel axes) maps into the training
    frame (``train_voxel`` mm, B0 along ``train_b0``): the exact reorientation ``ornt`` (nibabel's (3, 2) form:
    input axis ``i`` → axis ``ornt[i, 0]``, flipped where ``ornt[i, 1] == −1``), then ``resampling`` or None."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    train_voxel: tuple[float, float, float]
    train_b0: tuple[float, float, float]
    ornt: np.ndarray
    resampling: Resampling | None

    @property
    def reoriented(self) -> bool:
        return not np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]])

    def to_training(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` (``shape``) in the training frame (the resampled grid's shape where there is one)."""
        from nibabel.orientations import apply_orientation

        out = np.ascontiguousarray(apply_orientation(volume, self.ornt), dtype=np.float32)
        return self.resampling.forward(out) if self.resampling else out

    def to_input(self, volume: np.ndarray) -> np.ndarray:
        """A volume of the training frame back on the input grid (``shape``): the inverse of :meth:`to_training`."""
        from nibabel.orientations import apply_orientation, ornt_transform

        out = self.resampling.backward(volume) if self.resampling else np.asarray(volume, np.float32)
        back = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), self.ornt)
        return np.ascontiguousarray(apply_orientation(out, back), dtype=np.float32)

    def axes_text(self) -> str:
        """``"0→1, 1→0, 2→2 flipped"``: where each input axis goes."""
        return ", ".join(f"{i}→{int(a)}" + (" flipped" if f < 0 else "") for i, (a, f) in enumerate(self.ornt))

    def summary(self) -> str:
        """One line of what is done, e.g. ``reoriented (0→0, 1→2, 2→1); resampled 0.8 × 0.8 × 1.6 mm → 1 × 1 × 1 mm,
        B0 25.0° → 0° off the training axis``."""
        steps = [f"reoriented ({self.axes_text()})"] if self.reoriented else []
        if self.resampling:
            r = self.resampling
            steps.append(f"resampled {_mm(r.voxel_in)} mm → {_mm(r.voxel_out)} mm, B0 {r.b0_angle_deg:.1f}° → 0° off "
                         f"the training axis, and back")
        return "; ".join(steps) or f"already in the training frame ({_mm(self.train_voxel)} mm, B0 along the training axis)"

    def describe(self) -> dict:
        """What :meth:`to_training` does, for a JSON sidecar."""
        r = self.resampling
        return {
            "input": {"shape": list(self.shape), "voxel_size_mm": list(self.voxel_size), "b0_dir_voxel_axes": list(self.b0_dir),
                      "b0_angle_to_training_axis_deg": round(line_angle_deg(self.b0_dir, self.train_b0), 3)},
            "training_frame": {"voxel_size_mm": list(self.train_voxel), "b0_dir": list(self.train_b0)},
            "reorientation": {"applied": self.reoriented, "ornt": self.ornt.astype(int).tolist(), "axes": self.axes_text(),
                              "method": "nibabel io_orientation (closest RAS), then the axis nearest B0 to the training axis"},
            "resampling": None if r is None else {
                "from_voxel_size_mm": list(r.voxel_in), "to_voxel_size_mm": list(r.voxel_out), "from_shape": list(r.shape_in),
                "to_shape": list(r.shape_out), "b0_angle_before_deg": round(r.b0_angle_deg, 3),
                "interpolation": f"B-spline order {SPLINE_ORDER} (scipy.ndimage.affine_transform), zero outside",
                "index_matrix": np.round(r.matrix, 9).tolist(), "index_offset": np.round(r.offset, 6).tolist()},
            "summary": self.summary(),
        }


def _canonical_ornt(affine) -> np.ndarray:
    """nibabel's ``io_orientation`` of ``affine`` (to the closest RAS axes); the identity for an affine it cannot
    orient (a zero axis)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, float))
    return np.array([[0, 1], [1, 1], [2, 1]]) if np.isnan(ornt).any() else ornt.astype(int)


def plan_frame(shape, affine, voxel_size, b0_dir, train_voxel, train_b0, mode: str = "resample") -> Frame:
    """The :class:`Frame` of an input grid (module docstring). ``mode`` ``refuse``: ValueError where the grid would
    need resampling (an oblique B0 or another voxel size), naming both; exact reorientations are always applied."""
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"geometry: {mode!r} is not one of {list(GEOMETRY_MODES)}")
    b0 = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    target = np.asarray(train_b0, float) / np.linalg.norm(train_b0)
    axis = int(np.argmax(np.abs(target)))
    canonical = _canonical_ornt(affine)
    ornt = _compose(canonical, _b0_ornt(reorient_vector(b0, canonical), axis, float(np.sign(target[axis]))))
    b0_r, voxel_r = reorient_vector(b0, ornt), np.abs(reorient_vector(voxel_size, ornt))
    shape_r = tuple(int(n) for n in np.abs(reorient_vector(shape, ornt)))
    angle = line_angle_deg(b0_r, target)
    other_voxel = not np.allclose(voxel_r, train_voxel, rtol=VOXEL_RTOL, atol=0)
    if (angle > ANGLE_TOLERANCE_DEG or other_voxel) and mode == "refuse":
        raise ValueError(f"geometry: B0 is {angle:.1f}° off the training axis and the voxel size is {_mm(voxel_r)} mm "
                         f"(training: {_mm(train_voxel)} mm); --geometry resample interpolates onto the training grid "
                         f"and back")
    resampling = Resampling.plan(shape_r, voxel_r, b0_r, train_voxel, target) \
        if angle > ANGLE_TOLERANCE_DEG or other_voxel else None
    return Frame(tuple(int(n) for n in shape), tuple(float(v) for v in voxel_size), tuple(float(v) for v in b0),
                 tuple(float(v) for v in train_voxel), tuple(float(v) for v in target), ornt, resampling)
