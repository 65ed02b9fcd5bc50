"""One training step: the same function for the trainer and every benchmark.

For a batch of field patches B and label patches χ, each (N, 1, p, p, p) in ppm::

    χ̂ = f_θ(B)                                  under bf16 autocast when precision is bf16
    L = ‖χ̂ − χ‖ + λ ‖D∗χ̂ − D∗χ‖                  qsmrep.core.loss.PhysicsInformedLoss (fp32)
    g = ∇_θ L, clipped to ‖g‖₂ ≤ grad_clip       global L2 norm over all parameters (0: no clipping)
    θ ← AdamW(θ, g)                              lr and decoupled weight decay from the config (paper: 1e-3, 0.01)

A step whose loss or gradient norm is not finite changes no weight and reports ``finite=False``;
what follows (stop the run as diverged, or skip the step) is the trainer's policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from qsmrep.run import runtime


def make_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters with the config's ``lr`` and ``weight_decay``."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def clip_and_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The gradient's global L2 norm before clipping; clips it to ``max_norm`` when that is > 0."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else math.inf)


@dataclass
class StepResult:
    """What one step returns: the detached loss terms (``total``, ``chi``, ``field``; 0-d tensors) and
    whether the step was applied (loss and gradient finite)."""

    parts: dict[str, torch.Tensor]
    finite: bool


class TrainingStep:
    """Forward, loss, backward, clipping, finite check and optimiser step of one batch (module docstring).

    Args:
        model: the network whose parameters are optimised (and clipped).
        loss_fn: the physics-informed loss, ``components(pred, chi, field)``.
        optimizer: the optimiser of ``model``'s parameters.
        device, precision, memory_format: where and how the forward pass runs (resolved values).
        grad_clip: maximal global gradient norm, 0 for none.
        net: the module called for the forward pass (a compiled or data-parallel wrapper of ``model``);
            default ``model``.
        agree: makes every process take the same branch on the finite check (data-parallel training);
            default: the local value.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *,
                 device: torch.device | str = "cpu", precision: str = "fp32", memory_format: str = "contiguous",
                 grad_clip: float = 0.0, net: nn.Module | None = None, agree: Callable[[bool], bool] | None = None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.device, self.precision, self.memory_format = torch.device(device), precision, memory_format
        self.grad_clip = grad_clip
        self.net = net if net is not None else model
        self.agree = agree or (lambda flag: flag)

    @classmethod
    def from_config(cls, config, model: nn.Module, loss_fn: nn.Module, device: torch.device | str, **kwargs) -> "TrainingStep":
        """The step of a resolved ``config`` (precision, memory format, clipping, optimiser) for ``model``."""
        return cls(model, loss_fn, make_optimizer(config, model), device=device, precision=config.precision,
                   memory_format=config.memory_format, grad_clip=config.grad_clip, **kwargs)

    def __call__(self, field: torch.Tensor, chi: torch.Tensor) -> StepResult:
        """One step on ``field`` and ``chi`` (N, 1, p, p, p) on the model's device."""
        with runtime.autocast(self.device, self.precision):
            pred = self.net(runtime.to_memory_format(field, self.memory_format))
        parts = self.loss_fn.components(pred, chi, field)
        self.optimizer.zero_grad(set_to_none=True)
        finite = self.agree(bool(torch.isfinite(parts["total"])))
        if finite:
            parts["total"].backward()
            finite = bool(torch.isfinite(clip_and_norm(self.model, self.grad_clip)))
        if finite:
            self.optimizer.step()
        return StepResult({key: value.detach() for key, value in parts.items()}, finite)
