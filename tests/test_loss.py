"""Tests of qsmrep.core.loss.PhysicsInformedLoss: L = ‖χ̂ − χ‖ + λ‖D∗χ̂ − B‖."""

import pytest
import torch

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.physics import DipolePhysics, forward_field


def _data(seed=0, shape=(2, 1, 12, 10, 8)):
    g = torch.Generator().manual_seed(seed)
    chi = torch.randn(shape, generator=g) * 0.05
    pred = chi + torch.randn(shape, generator=g) * 0.02
    return pred, chi


def test_zero_at_the_label():
    _, chi = _data()
    field = forward_field(chi)
    for target in ("label", "input"):
        loss = PhysicsInformedLoss(field_target=target)(chi.clone(), chi, field)
        assert loss.dtype == torch.float32 and loss.dim() == 0
        assert loss.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("lam", [0.0, 1.0, 2.5])
def test_equals_hand_computed_l1_terms(lam):
    pred, chi = _data(1)
    field = forward_field(chi)
    loss_fn = PhysicsInformedLoss(lam=lam)
    parts = loss_fn.components(pred, chi, field)
    chi_term = (pred - chi).abs().mean()
    field_term = (forward_field(pred) - forward_field(chi)).abs().mean()
    assert parts["chi"].item() == pytest.approx(chi_term.item(), rel=1e-6)
    assert parts["field"].item() == pytest.approx(field_term.item(), rel=1e-5)
    assert loss_fn(pred, chi, field).item() == pytest.approx(chi_term.item() + lam * field_term.item(), rel=1e-5)


def test_mse_option():
    pred, chi = _data(2)
    field = forward_field(chi)
    loss = PhysicsInformedLoss(chi_norm="mse", field_norm="mse")(pred, chi, field)
    expected = (pred - chi).square().mean() + (forward_field(pred) - forward_field(chi)).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    mixed = PhysicsInformedLoss(chi_norm="mse", field_norm="l1")(pred, chi, field)
    expected = (pred - chi).square().mean() + (forward_field(pred) - forward_field(chi)).abs().mean()
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-5)


def test_field_target_input_vs_label():
    # a patch cut from a larger map: its input field holds contributions from outside the patch
    g = torch.Generator().manual_seed(3)
    big_chi = torch.randn(1, 1, 24, 24, 24, generator=g) * 0.05
    big_field = forward_field(big_chi)
    chi = big_chi[..., 4:16, 4:16, 4:16].contiguous()
    field = big_field[..., 4:16, 4:16, 4:16].contiguous()
    pred = chi + 0.01
    label = PhysicsInformedLoss(field_target="label")(pred, chi, field)
    given = PhysicsInformedLoss(field_target="input")(pred, chi, field)
    assert abs(label.item() - given.item()) > 1e-4
    # on a field made by the forward model of the same map both targets coincide
    field = forward_field(chi)
    label = PhysicsInformedLoss(field_target="label")(pred, chi, field)
    given = PhysicsInformedLoss(field_target="input")(pred, chi, field)
    assert label.item() == pytest.approx(given.item(), rel=1e-6)


def test_voxel_size_and_b0_are_used():
    pred, chi = _data(4)
    field = forward_field(chi)
    a = PhysicsInformedLoss()(pred, chi, field)
    b = PhysicsInformedLoss(physics=DipolePhysics(b0_dir=(1.0, 0.0, 0.0)))(pred, chi, field)
    c = PhysicsInformedLoss(physics=DipolePhysics(voxel_size=(1.0, 1.0, 2.0)))(pred, chi, field)
    assert a.item() != b.item() and a.item() != c.item()
    # the field term is the physics object's forward model
    oblique = DipolePhysics((1.0, 0.9, 1.1), (0.3, 0.0, 1.0))
    parts = PhysicsInformedLoss(physics=oblique).components(pred, chi, field)
    expected = (forward_field(pred, (1.0, 0.9, 1.1), (0.3, 0.0, 1.0)) - forward_field(chi, (1.0, 0.9, 1.1), (0.3, 0.0, 1.0))).abs().mean()
    assert parts["field"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_shape_mismatch():
    pred, chi = _data()
    with pytest.raises(ValueError, match="shape"):
        PhysicsInformedLoss()(pred[..., :-1], chi, chi)
    with pytest.raises(ValueError, match="shape"):
        PhysicsInformedLoss()(pred, chi, chi[..., :-1])


@pytest.mark.parametrize("kwargs, field", [
    (dict(chi_norm="l3"), "chi_norm"),
    (dict(field_norm="huber"), "field_norm"),
    (dict(field_target="pred"), "field_target"),
    (dict(lam=-1.0), "lam"),
    (dict(lam=float("nan")), "lam"),
])
def test_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PhysicsInformedLoss(**kwargs)


def test_bf16_prediction_gives_float32_loss_and_gradient():
    pred, chi = _data(5)
    field = forward_field(chi)
    pred16 = pred.to(torch.bfloat16).requires_grad_(True)
    loss = PhysicsInformedLoss()(pred16, chi, field)
    assert loss.dtype == torch.float32
    reference = PhysicsInformedLoss()(pred16.detach().float(), chi, field)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert pred16.grad.dtype == torch.bfloat16 and pred16.grad.abs().sum() > 0


def test_from_config():
    from qsmrep.run.config import Config

    cfg = Config.from_profile("smoke", lam=0.5, chi_norm="mse", field_target="input", voxel_size=(1, 1, 2), b0_dir=(0, 1, 0))
    loss_fn = PhysicsInformedLoss.from_config(cfg)
    assert (loss_fn.lam, loss_fn.chi_norm, loss_fn.field_norm, loss_fn.field_target) == (0.5, "mse", "l1", "input")
    assert loss_fn.physics == DipolePhysics((1.0, 1.0, 2.0), (0.0, 1.0, 0.0))
