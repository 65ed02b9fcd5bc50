"""Dead units by the slope criterion: ReLU units die when never positive, ELU units only when saturated, leaky
ReLU units never; the never-positive count is kept beside it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qsmrep.run.units import SLOPE_FRACTION, ActivationRecorder, dead_threshold


@pytest.mark.parametrize("module, expected", [
    (nn.ReLU(), 0.0),
    (nn.ELU(alpha=1.0), math.log(SLOPE_FRACTION)),  # f'(x) = α eˣ < 0.01 · α  ⇔  x < ln 0.01
    (nn.ELU(alpha=2.0), math.log(SLOPE_FRACTION)),  # α scales every slope alike
    (nn.LeakyReLU(0.2), -math.inf),  # its slope never falls below 0.2
    (nn.PReLU(init=0.25), -math.inf),
])
def test_dead_threshold_matches_the_closed_form(module, expected):
    got = dead_threshold(module)
    assert got == expected if math.isinf(expected) else abs(got - expected) <= 1e-3


def test_gelu_threshold_is_where_its_slope_stays_below_one_percent():
    x = torch.linspace(-10, 10, 200001, dtype=torch.float64, requires_grad=True)
    slope, = torch.autograd.grad(nn.GELU()(x).sum(), x)
    small = slope.abs() < SLOPE_FRACTION * slope.abs().max()
    assert abs(dead_threshold(nn.GELU()) - x.detach()[~small][0].item()) <= 2e-3


class _Layer(nn.Module):
    def __init__(self, activation: nn.Module):
        super().__init__()
        self.act = activation

    def forward(self, x):
        return self.act(x)


def _record(activation: nn.Module, x: torch.Tensor) -> ActivationRecorder:
    model = _Layer(activation)
    with ActivationRecorder(model) as recorder:
        model(x)
    return recorder


def _inputs() -> torch.Tensor:
    """Four channels: positive somewhere; negative but above ln 0.01; far below ln 0.01; exactly zero."""
    x = torch.zeros(2, 4, 3, 3, 3)
    x[:, 0] = torch.linspace(-1, 1, 54).reshape(2, 3, 3, 3)
    x[:, 1] = -2.0
    x[:, 2] = -8.0
    return x


def test_elu_is_not_dead_for_negative_outputs_alone():
    recorder = _record(nn.ELU(), _inputs())
    assert recorder.never_positive_fractions()["act"] == pytest.approx(3 / 4)  # channels 1, 2 and 3
    assert recorder.dead_fractions()["act"] == pytest.approx(1 / 4)  # only channel 2 is saturated


def test_relu_dies_when_never_positive_and_leaky_relu_never_does():
    relu = _record(nn.ReLU(), _inputs())
    assert relu.dead_fractions()["act"] == pytest.approx(3 / 4) == relu.never_positive_fractions()["act"]
    leaky = _record(nn.LeakyReLU(0.2), _inputs())
    assert leaky.dead_fraction() == 0.0 and leaky.never_positive_fraction() == pytest.approx(3 / 4)


def test_the_record_accumulates_over_forward_passes():
    model = _Layer(nn.ReLU())
    with ActivationRecorder(model) as recorder:
        model(-torch.ones(1, 2, 2, 2, 2))
        assert recorder.dead_fraction() == 1.0
        x = -torch.ones(1, 2, 2, 2, 2)
        x[0, 1, 0, 0, 0] = 0.5
        model(x)
    assert recorder.dead_fractions()["act"] == 0.5
