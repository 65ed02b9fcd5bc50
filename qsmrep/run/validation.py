"""Validation after every epoch: loss and mean NRMSE on the full validation maps, and the dead-unit census.

:func:`validate` runs the network over every validation map (``(1, S, S, S)`` tensors ``chi``,
``field`` in ppm and a bool ``mask``), on the training device and in the training precision;
:class:`qsmrep.run.units.ActivationRecorder` records the dead units of every activation layer on the first map.
Nothing is read back from the device per map: the losses, NRMSEs and the census are read once, after the
last map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.metrics import nrmse_torch
from qsmrep.run import runtime
from qsmrep.run.data import maps_on
from qsmrep.run.units import ActivationRecorder


@torch.inference_mode()
def validate(model: nn.Module, maps: Sequence[dict], loss_fn: PhysicsInformedLoss, device: torch.device,
             precision: str = "fp32", memory_format: str = "contiguous", record_units: bool = True) -> dict:
    """Loss and mean NRMSE (inside each map's mask, percent) on the full validation maps, on ``device``.

    Maps stay where they were rendered (on the device, or in pinned host memory, copied one map ahead
    by :func:`qsmrep.run.data.maps_on`); loss and NRMSE are computed on ``device`` (no copy of the volumes
    to the CPU) and read back once at the end. The first map also records the dead-unit fractions
    (see :class:`ActivationRecorder`).
    """
    was_training = model.training
    model.eval()
    losses, errors, recorder = [], [], None
    for index, sample in enumerate(maps_on(maps, device)):
        field, chi, mask = (sample[key][None] for key in ("field", "chi", "mask"))
        if record_units and index == 0:
            recorder = ActivationRecorder(model)
        with (recorder if index == 0 and recorder else contextlib.nullcontext()), runtime.autocast(device, precision):
            pred = model(runtime.to_memory_format(field, memory_format))
        pred = pred.float()
        losses.append(loss_fn(pred, chi, field))
        errors.append(nrmse_torch(pred, chi, mask, check=False)[0])  # generator maps: masks and references valid
    model.train(was_training)
    val_loss, val_nrmse = torch.stack([torch.stack(losses).double().mean(), torch.stack(errors).mean()]).tolist()
    return {"val_loss": val_loss, "val_nrmse": val_nrmse, **_units(recorder)}


def _units(recorder: ActivationRecorder | None) -> dict:
    """The dead-unit fractions a recorder holds (NaN and empty without one)."""
    if recorder is None:
        return {"dead_fraction": float("nan"), "zero_gradient_fraction": float("nan"), "dead_per_layer": {},
                "zero_gradient_per_layer": {}}
    return {"dead_fraction": recorder.never_positive_fraction(), "zero_gradient_fraction": recorder.dead_fraction(),
            "dead_per_layer": recorder.never_positive_fractions(), "zero_gradient_per_layer": recorder.dead_fractions()}
