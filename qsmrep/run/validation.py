"""Validation after every epoch: loss and mean NRMSE on the full validation maps, and the dead-unit census.

:func:`validate` runs the network over every validation map (``(1, S, S, S)`` tensors ``chi``,
``field`` in ppm and a bool ``mask``), on the training device and in the training precision;
:class:`ActivationRecorder` records which channels of every activation layer were never positive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.metrics import nrmse_torch
from qsmrep.run import runtime


class ActivationRecorder:
    """Records, per activation layer, which channels are *dead*: never positive on a batch.

    For ReLU a never-positive channel outputs only zeros and passes no gradient (the "dying ReLU"
    of the paper's discussion); for leaky ReLU and ELU the same criterion marks channels stuck in
    the negative regime. Use as a context manager around forward passes.
    """

    def __init__(self, model: nn.Module):
        self.layers = [(name, module) for name, module in model.named_modules()
                       if module.__class__.__module__.startswith("torch.nn.modules.activation")]
        self.alive: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name):
        def hook(_module, _inputs, output):
            positive = (output.detach() > 0).flatten(2).any(dim=2).any(dim=0)
            self.alive[name] = positive | self.alive.get(name, torch.zeros_like(positive))
        return hook

    def dead_fractions(self) -> dict[str, float]:
        """Layer name → fraction of its channels that never were positive."""
        return {name: 1.0 - alive.float().mean().item() for name, alive in self.alive.items()}

    def dead_fraction(self) -> float:
        """Fraction of all channels (over all activation layers) that never were positive."""
        total = sum(a.numel() for a in self.alive.values())
        return 1.0 - sum(a.sum().item() for a in self.alive.values()) / max(total, 1)


@torch.inference_mode()
def validate(model: nn.Module, maps: Sequence[dict], loss_fn: PhysicsInformedLoss, device: torch.device,
             precision: str = "fp32", memory_format: str = "contiguous", record_units: bool = True) -> dict:
    """Loss and mean NRMSE (inside each map's mask, percent) on the full validation maps, on ``device``.

    Maps stay where they were rendered and are moved one at a time; loss and NRMSE are computed on
    ``device`` (no copy of the volumes to the CPU). The first map also records the dead-unit
    fraction (see :class:`ActivationRecorder`).
    """
    was_training = model.training
    model.eval()
    losses, errors, dead, per_layer = [], [], float("nan"), {}
    for index in range(len(maps)):
        sample = maps[index]
        field = sample["field"][None].to(device, non_blocking=True)
        chi = sample["chi"][None].to(device, non_blocking=True)
        mask = sample["mask"][None].to(device, non_blocking=True)
        recorder = ActivationRecorder(model) if record_units and index == 0 else None
        with (recorder or contextlib.nullcontext()), runtime.autocast(device, precision):
            pred = model(runtime.to_memory_format(field, memory_format))
        pred = pred.float()
        if recorder is not None:
            dead, per_layer = recorder.dead_fraction(), recorder.dead_fractions()
        losses.append(loss_fn(pred, chi, field))
        errors.append(nrmse_torch(pred, chi, mask)[0])
    model.train(was_training)
    return {"val_loss": float(torch.stack(losses).double().mean()), "val_nrmse": float(torch.stack(errors).mean()),
            "dead_fraction": dead, "dead_per_layer": per_layer}
