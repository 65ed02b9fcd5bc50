"""What a checkpoint is, for a user applying it: how it was trained, its validation NRMSE at that epoch (from its run
folder's ``history.csv``), and whether it is only a smoke-scale model that tests a set-up.

A model is *smoke-scale* when its profile is ``smoke`` or it has seen fewer training iterations than the smallest
model of the reference study, the ``cpu`` profile's early checkpoint (its ``early_epoch`` × iterations per epoch).
"""

from __future__ import annotations

from pathlib import Path

from qsmrep.run.config import Config
from qsmrep.run.runfolder import RunFolder

#: the command that makes a model worth applying (README, "Own data")
TRAIN_COMMAND = "python -m qsmrep train --profile cpu --out models/elu16"


def smallest_reference_iterations() -> int:
    """Training iterations of the reference study's smallest model: the ``cpu`` profile's early checkpoint."""
    cpu = Config.from_profile("cpu")
    return cpu.early * cpu.iterations


def describe(checkpoint: str | Path, config: Config, epoch: int) -> dict:
    """The checkpoint's model, training scale and validation NRMSE (percent, None where its history is absent)."""
    history = RunFolder(Path(checkpoint).parent).history()
    rows = history[history.epoch == epoch] if len(history) else history
    iterations = epoch * config.iterations
    return {
        "checkpoint": str(checkpoint), "variant": config.variant, "arm": config.arm, "seed": config.seed,
        "profile": config.profile, "epoch": int(epoch), "epochs": config.epochs, "iterations": iterations,
        "batches": f"{config.batch_size} × {config.patch_size}³ patches of {config.map_size}³ maps",
        "val_nrmse_percent": float(rows.val_nrmse.iloc[-1]) if len(rows) else None,
        "smoke_scale": config.profile == "smoke" or iterations < smallest_reference_iterations(),
    }


def text(model: dict) -> str:
    """One line: ``elu16 (arm batch, seed 0), profile cpu, epoch 25 of 25 (400 iterations of …), validation NRMSE
    45.1 %``, then the test NRMSE where one is known (keys added by :mod:`qsmrep.study.reference`)."""
    line = (f"{model['variant']} (arm {model['arm']}, seed {model['seed']}), profile {model['profile']}, epoch "
            f"{model['epoch']} of {model['epochs']} ({model['iterations']} iterations of {model['batches']})")
    if model.get("val_nrmse_percent") is not None:
        line += f", validation NRMSE {model['val_nrmse_percent']:.1f} %"
    if model.get("test_nrmse_percent") is not None:
        line += f", test NRMSE {model['test_nrmse_percent']:.1f} % ({model['test_table']})"
    elif model.get("reference_test_nrmse_percent") is not None:
        line += (f"; not evaluated here (the committed reference's {model['variant']} at epoch {model['epoch']}: "
                 f"{model['reference_test_nrmse_percent']:.1f} % test NRMSE, mean of {model['reference_seeds']} seeds)")
    return line


def warnings(model: dict | None) -> list[str]:
    """Lines to print before using ``model``: a loud one for a smoke-scale model, a note for an early checkpoint."""
    if not model:
        return []
    lines = []
    if model["smoke_scale"]:
        lines.append(f"WARNING: smoke-scale model (profile {model['profile']}, {model['iterations']} training iterations): "
                     f"it tests the set-up and gives no usable susceptibility map; make a real one with: {TRAIN_COMMAND}")
    if model["epoch"] < model["epochs"]:
        lines.append(f"note: an early checkpoint (epoch {model['epoch']} of {model['epochs']})")
    return lines
