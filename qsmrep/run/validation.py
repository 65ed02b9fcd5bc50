"""Validation after every epoch: loss and mean NRMSE on the full validation maps, and the dead-unit census.

:func:`validate` runs the network over every validation map (``(1, S, S, S)`` tensors ``chi``,
``field`` in ppm and a bool ``mask``), on the training device and in the training precision;
:class:`qsmrep.run.units.ActivationRecorder` records the dead units of every activation layer on the first map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.metrics import nrmse_torch
from qsmrep.run import runtime
from qsmrep.run.units import ActivationRecorder


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
    losses, errors, units = [], [], {"dead_fraction": float("nan"), "zero_gradient_fraction": float("nan"),
                                     "dead_per_layer": {}, "zero_gradient_per_layer": {}}
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
            units = {"dead_fraction": recorder.never_positive_fraction(), "zero_gradient_fraction": recorder.dead_fraction(),
                     "dead_per_layer": recorder.never_positive_fractions(),
                     "zero_gradient_per_layer": recorder.dead_fractions()}
        losses.append(loss_fn(pred, chi, field))
        errors.append(nrmse_torch(pred, chi, mask)[0])
    model.train(was_training)
    return {"val_loss": float(torch.stack(losses).double().mean()), "val_nrmse": float(torch.stack(errors).mean()),
            **units}
