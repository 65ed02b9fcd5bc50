"""One training step: the same function for the trainer and every benchmark.

For a batch of field patches B and label patches χ, each (N, 1, p, p, p) in ppm::

    χ̂ = f_θ(B)                                  under bf16 autocast when precision is bf16
    L = ‖χ̂ − χ‖ + λ ‖D∗χ̂ − D∗χ‖                  qsmrep.core.loss.PhysicsInformedLoss (fp32)
    g = ∇_θ L, clipped to ‖g‖₂ ≤ grad_clip       global L2 norm over all parameters (0: no clipping)
    θ ← AdamW(θ, g)                              lr and decoupled weight decay from the config (paper: 1e-3, 0.01)

The step reads nothing back from the device: it returns the loss terms and the finite flag
(loss and gradient norm finite) as device tensors, which the trainer accumulates and reads once per
epoch, so the host queues step after step while the GPU works. A non-finite step is handled on
the device too, by the trainer's policy ``nonfinite``:

* ``skip``: the step changes no weight. AdamW runs fused (one kernel for all parameters) and is
  handed the flag as ``found_inf``, the attribute torch.amp.GradScaler sets: where it is 1 the
  kernel leaves weights, moments and step count as they were.
* ``stop``: the run ends as diverged at the first non-finite step, and nothing after it is kept
  (the run keeps the last finished epoch), so the update is applied unconditionally with the plain
  AdamW, whose numbers the runs were trained with (the fused kernel differs in the last bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from qsmrep.run import runtime


def make_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters with the config's ``lr`` and ``weight_decay``; fused under
    ``nonfinite="skip"`` (module docstring)."""
    fused = True if config.nonfinite == "skip" else None
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def clip_and_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The gradient's global L2 norm ‖g‖₂ = ‖(‖g_p‖₂)_p‖₂ before clipping (one multi-tensor pass); when ``max_norm``
    is > 0 the gradients are scaled by min(1, max_norm / (‖g‖₂ + 1e-6)), as ``clip_grad_norm_`` does (without
    clipping they are left alone: no pass multiplying them by 1)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


@dataclass
class StepResult:
    """What one step returns, on the device: the detached loss terms (``total``, ``chi``, ``field``; 0-d
    tensors) and ``finite``, a 0-d bool tensor: loss and gradient norm finite (under ``skip`` the step was
    applied exactly where it is true)."""

    parts: dict[str, torch.Tensor]
    finite: torch.Tensor


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
        agree: makes the finite flag (a bool tensor) the same on every process (data-parallel training),
            on the device; default: the local value.
        skip_nonfinite: skip non-finite steps on the device (``optimizer`` must be a fused AdamW,
            :func:`make_optimizer` under ``nonfinite="skip"``); otherwise every update is applied.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *,
                 device: torch.device | str = "cpu", precision: str = "fp32", memory_format: str = "contiguous",
                 grad_clip: float = 0.0, net: nn.Module | None = None,
                 agree: Callable[[torch.Tensor], torch.Tensor] | None = None, skip_nonfinite: bool = False):
        if skip_nonfinite and not optimizer.defaults.get("fused"):
            raise ValueError("skip_nonfinite: needs a fused optimiser, which skips a step on the device (found_inf)")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.device, self.precision, self.memory_format = torch.device(device), precision, memory_format
        self.grad_clip, self.skip_nonfinite = grad_clip, skip_nonfinite
        self.net = net if net is not None else model
        self.agree = agree or (lambda flag: flag)

    @classmethod
    def from_config(cls, config, model: nn.Module, loss_fn: nn.Module, device: torch.device | str, **kwargs) -> "TrainingStep":
        """The step of a resolved ``config`` (precision, memory format, clipping, optimiser, non-finite policy)."""
        return cls(model, loss_fn, make_optimizer(config, model), device=device, precision=config.precision,
                   memory_format=config.memory_format, grad_clip=config.grad_clip,
                   skip_nonfinite=config.nonfinite == "skip", **kwargs)

    def __call__(self, field: torch.Tensor, chi: torch.Tensor) -> StepResult:
        """One step on ``field`` and ``chi`` (N, 1, p, p, p) on the model's device; reads nothing back."""
        with runtime.autocast(self.device, self.precision):
            pred = self.net(runtime.to_memory_format(field, self.memory_format))
        parts = self.loss_fn.components(pred, chi, field)
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        norm = clip_and_norm(self.model, self.grad_clip)
        finite = self.agree(torch.isfinite(parts["total"].detach()) & torch.isfinite(norm))
        if self.skip_nonfinite:
            self.optimizer.found_inf = (~finite).float()
        self.optimizer.step()
        return StepResult({key: value.detach() for key, value in parts.items()}, finite)
