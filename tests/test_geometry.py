"""The training frame of a user's field (qsmrep.run.geometry): exact reorientations, the rotation, the resampling's
index map against an analytic function, and the refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff
from scipy.spatial.transform import Rotation

from qsmrep.run.geometry import ANGLE_TOLERANCE_DEG, Resampling, line_angle_deg, plan_frame, rotation_between
from qsmrep.run.predict import b0_direction_from_affine

TRAIN_VOXEL, TRAIN_B0 = (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)


def _frame(shape, affine, mode="resample"):
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    return plan_frame(shape, affine, zooms, b0_direction_from_affine(affine), TRAIN_VOXEL, TRAIN_B0, mode)


@pytest.mark.parametrize("ornt", [[[2, 1], [0, -1], [1, 1]], [[0, -1], [1, 1], [2, -1]], [[1, 1], [2, 1], [0, -1]]])
def test_any_storage_of_the_axes_is_undone_exactly_and_lands_in_one_frame(ornt):
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((6, 7, 8)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    ornt = np.array(ornt)
    stored = apply_orientation(volume, ornt)  # the same voxels, axes stored otherwise
    stored_affine = affine @ inv_ornt_aff(ornt, volume.shape)
    frame = _frame(stored.shape, stored_affine)
    assert frame.resampling is None and frame.reoriented
    np.testing.assert_array_equal(frame.to_training(stored), volume)  # back in the RAS frame of the original
    np.testing.assert_array_equal(frame.to_input(frame.to_training(stored)), stored)


def test_a_sagittally_stored_field_gets_b0_along_the_last_axis():
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # voxel axis 0 is scanner z
    assert b0_direction_from_affine(affine) == pytest.approx((1, 0, 0))
    frame = _frame((5, 6, 7), affine)
    assert frame.resampling is None and frame.to_training(np.zeros((5, 6, 7))).shape[2] == 5
    ramp = np.broadcast_to(np.arange(5.0)[:, None, None], (5, 6, 7))  # increases along scanner z
    along_last = frame.to_training(ramp)
    assert np.all(np.diff(along_last, axis=2) == 1) and np.all(np.diff(along_last, axis=0) == 0)


def test_b0_given_in_voxel_axes_moves_that_axis_last_without_interpolation():
    frame = plan_frame((4, 5, 6), np.eye(4), (1, 1, 1), (0, -1, 0), TRAIN_VOXEL, TRAIN_B0)
    assert frame.resampling is None and frame.to_training(np.zeros((4, 5, 6))).shape == (4, 6, 5)


def test_rotation_between_matches_scipy_and_is_a_rotation():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.standard_normal(3), rng.standard_normal(3)
        if a @ b < 0:
            b = -b  # the smaller turn; B0's sign does not matter
        q = rotation_between(a, b)
        np.testing.assert_allclose(q @ (a / np.linalg.norm(a)), b / np.linalg.norm(b), atol=1e-12)
        np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(q) == pytest.approx(1.0)
        expected, _ = Rotation.align_vectors([b], [a])  # scipy's smallest rotation taking a onto b
        np.testing.assert_allclose(q, expected.as_matrix(), atol=1e-9)
    assert line_angle_deg((0, 1, 1), (0, 0, -1)) == pytest.approx(45.0)


def test_resampling_maps_each_point_where_the_rotation_puts_it():
    """A Gaussian blob off the centre, sampled on an anisotropic grid with an oblique B0, lands on the training grid
    where the analytic blob, rotated by the rotation taking B0 to the last axis, is."""
    shape, voxel = (40, 44, 24), (0.8, 0.9, 1.6)
    tilt = math.radians(25)
    b0 = np.array([0.0, math.sin(tilt), math.cos(tilt)])
    centre, sigma = np.array([3.0, -4.0, 5.0]), 4.0  # mm from the grid's centre

    def blob(points):
        return np.exp(-np.sum((points - centre) ** 2, axis=-1) / (2 * sigma**2))

    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    field = blob((index - (np.array(shape) - 1) / 2) * voxel)
    plan = Resampling.plan(shape, voxel, b0, TRAIN_VOXEL, TRAIN_B0)
    out = plan.forward(field)
    q = rotation_between(b0, TRAIN_B0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in plan.shape_out], indexing="ij"), axis=-1)
    physical = (grid - (np.array(plan.shape_out) - 1) / 2) * TRAIN_VOXEL  # training-frame mm
    expected = blob(physical @ q)  # p = Qᵀ q, row-wise
    assert plan.b0_angle_deg == pytest.approx(25.0)
    assert np.abs(out - expected).max() < 0.01
    back = plan.backward(out)
    assert back.shape == shape and np.abs(back - field).max() < 0.02


def test_refuse_names_the_angle_and_the_voxel_size():
    tilt = math.radians(10)
    with pytest.raises(ValueError, match=r"geometry: B0 is 10\.0° off .* 0\.8 × 0\.8 × 1\.6 mm"):
        plan_frame((8, 8, 8), np.eye(4), (0.8, 0.8, 1.6), (0, math.sin(tilt), math.cos(tilt)), TRAIN_VOXEL, TRAIN_B0,
                   "refuse")
    small = math.radians(ANGLE_TOLERANCE_DEG / 2)
    frame = plan_frame((8, 8, 8), np.eye(4), (1, 1, 1), (0, math.sin(small), math.cos(small)), TRAIN_VOXEL, TRAIN_B0,
                       "refuse")
    assert frame.resampling is None and "already in the training frame" in frame.summary()
