"""Training of one variant: AdamW, validation after every epoch, checkpoints, resume, history.

The run's files live in a :class:`qsmrep.runfolder.RunFolder`. Every file is written atomically
and the completion marker last, so a run killed at any moment (SIGKILL included) restarts from its
last finished epoch, and ``history.csv`` holds each epoch exactly once. The data plan of an epoch
depends on (seed, epoch) only and the optimiser state is restored, so on a CPU an
interrupted-and-resumed run ends with the same history (timing columns aside) and the same weights
as an uninterrupted one.

A non-finite loss or gradient with ``nonfinite="stop"`` (or an epoch whose every step was
non-finite with ``nonfinite="skip"``) ends the run as *diverged*: a result, recorded in the
completion marker with the epoch, the iteration and the last finite values, not an error.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from qsmrep import distributed, runtime
from qsmrep.config import Config
from qsmrep.data import SyntheticMaps, epoch_plan, patch_batches
from qsmrep.loss import PhysicsInformedLoss
from qsmrep.metrics import nrmse_torch
from qsmrep.physics import DipolePhysics
from qsmrep.runfolder import DIVERGED, FINISHED, HISTORY_COLUMNS, RunFolder, load_model_state
from qsmrep.synth import GENERATOR_VERSION
from qsmrep.unet import UNet3D


def _log(message: str) -> None:
    print(f"[qsmrep] {message}", file=sys.stderr, flush=True)


def build_model(config: Config, device: torch.device | str = "cpu") -> UNet3D:
    """The U-Net of ``config``, initialised from ``config.seed``, in its memory format."""
    torch.manual_seed(config.seed)
    model = UNet3D(**config.model_kwargs()).to(device)
    return runtime.to_memory_format(model, config.memory_format)


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
def validate(model: nn.Module, maps: SyntheticMaps, loss_fn: PhysicsInformedLoss, device: torch.device,
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


def _clip_and_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The gradient's global L2 norm before clipping; clips it to ``max_norm`` when that is > 0."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else math.inf)


def train(config: Config, out: str | Path, progress: bool = True, force: bool = False,
          on_finish: Callable[[nn.Module], None] | None = None) -> pd.DataFrame:
    """Train ``config``'s variant into run folder ``out``; resume if it holds an unfinished run.

    ``auto`` settings are resolved for this machine first (:func:`qsmrep.runtime.resolve`); the
    folder stores the resolved configuration and refuses to continue a run made with another one
    (another device, precision or generator). Returns the history (one row per finished epoch). A
    complete run, finished or diverged, returns its history without training. ``on_finish(model)``
    is called with the trained model at the end. Under ``torchrun`` with several processes,
    training is data-parallel (:mod:`qsmrep.distributed`); rank 0 writes the files and returns the
    full history.
    """
    config = runtime.resolve(config)
    context = distributed.setup(config.device)
    run = RunFolder(out)
    try:
        with run.lock() if context.is_main else contextlib.nullcontext():
            return _train(config, run, progress, force, on_finish, context)
    finally:
        context.close()


def _train(config: Config, run: RunFolder, progress: bool, force: bool, on_finish, context: distributed.Context) -> pd.DataFrame:
    if context.is_main:
        run.prepare(config, GENERATOR_VERSION, force)
    context.barrier()
    device = torch.device(config.device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    data_device = device if config.data_device == device.type else torch.device(config.data_device)
    physics = DipolePhysics.from_config(config)
    model = build_model(config, device)
    net = model
    if context.enabled:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[context.local_rank] if device.type == "cuda" else None)
    step_net = torch.compile(net) if config.compile == "on" else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = PhysicsInformedLoss.from_config(config, physics)

    rows: list[dict] = []
    start_epoch = 1
    state = run.resume_state(map_location=device)
    if state is not None:
        load_model_state(model, state["model"], str(run.file(run.LAST)))
        optimizer.load_state_dict(state["optimizer"])
        rows = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
    context.barrier()
    if run.done() is not None or start_epoch > config.epochs:
        if context.is_main and run.done() is None:  # killed after the last epoch's files, before the marker
            run.write_history(rows)
            run.mark(FINISHED, epochs=config.epochs)
        if on_finish is not None:
            on_finish(model)
        return run.history() if context.is_main else pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    if state is not None and context.is_main:
        _log(f"train {config.variant} ({config.arm}, seed {config.seed}): resuming {run.path} from epoch {start_epoch} "
             f"of {config.epochs}")

    train_maps = SyntheticMaps.from_config(config, "train", data_device, progress=progress and context.is_main)
    val_maps = SyntheticMaps.from_config(config, "val", data_device, cache=True, progress=progress and context.is_main)
    bar = _progress_bar(config, start_epoch, progress and context.is_main)
    model.train()
    for epoch in range(start_epoch, config.epochs + 1):
        plan = epoch_plan(config.seed, epoch, config.n_train, config.map_size, config.patch_size,
                          config.batch_size, config.iterations)
        plan = [distributed.shard(batch, context) for batch in plan]
        sums = {"total": 0.0, "chi": 0.0, "field": 0.0}
        steps = skipped = 0
        data_seconds, last_finite = 0.0, None
        started = waited = time.perf_counter()
        for iteration, (field, chi) in enumerate(patch_batches(train_maps, config.patch_size, plan, config.num_workers), 1):
            field, chi = field.to(device, non_blocking=True), chi.to(device, non_blocking=True)
            data_seconds += time.perf_counter() - waited
            with runtime.autocast(device, config.precision):
                pred = step_net(runtime.to_memory_format(field, config.memory_format))
            parts = loss_fn.components(pred, chi, field)
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(parts["total"]))
            if context.enabled:  # every rank must take the same branch, or the gradient all-reduce hangs
                finite = context.mean([float(finite)])[0] == 1.0
            if finite:
                parts["total"].backward()
                finite = bool(torch.isfinite(_clip_and_norm(model, config.grad_clip)))
            if not finite:
                if config.nonfinite == "stop":
                    return _diverged(run, config, context, rows, epoch, iteration, last_finite, bar)
                skipped += 1
            else:
                optimizer.step()
                steps += 1
                for key in sums:
                    sums[key] += parts[key].item()
                last_finite = parts["total"].item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{parts['total'].item():.4f}", refresh=False)
            waited = time.perf_counter()
        if steps == 0:
            return _diverged(run, config, context, rows, epoch, config.iterations, last_finite, bar)
        means = context.mean([sums["total"] / steps, sums["chi"] / steps, sums["field"] / steps])
        if not context.is_main:
            context.barrier()  # rank 0 validates and writes
            continue
        val_started = time.perf_counter()
        val = validate(model, val_maps, loss_fn, device, config.precision, config.memory_format)
        rows.append({
            "epoch": epoch, "iterations": config.iterations,
            "train_loss": means[0], "train_chi": means[1], "train_field": means[2],
            "val_loss": val["val_loss"], "val_nrmse": val["val_nrmse"], "dead_fraction": val["dead_fraction"],
            "skipped_steps": skipped, "seconds": time.perf_counter() - started, "data_seconds": data_seconds,
            "val_seconds": time.perf_counter() - val_started, "peak_mem_mb": runtime.peak_memory_mb(device),
        })
        bar.set_postfix(epoch=epoch, val_nrmse=f"{val['val_nrmse']:.1f}%", refresh=True)
        state = {"model": model.state_dict(), "epoch": epoch, "config": config.to_dict(), "history": rows,
                 "dead_per_layer": val["dead_per_layer"]}
        run.save_epoch(state, optimizer.state_dict(), rows, keep_checkpoint=epoch in (config.early, config.epochs))
        context.barrier()
    bar.close()
    context.broadcast_buffers(model)
    if context.is_main:
        run.mark(FINISHED, epochs=config.epochs)
    if on_finish is not None:
        on_finish(model)
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _diverged(run: RunFolder, config: Config, context: distributed.Context, rows: list[dict], epoch: int,
              iteration: int, last_finite_loss: float | None, bar) -> pd.DataFrame:
    """End the run as diverged: history up to the last good epoch, then the marker with where and what."""
    bar.close()
    if context.is_main:
        last = rows[-1] if rows else {}
        run.write_history(rows)
        run.mark(DIVERGED, epoch=epoch, iteration=iteration, last_good_epoch=last.get("epoch"),
                 last_finite={key: last[key] for key in ("train_loss", "val_loss", "val_nrmse") if key in last},
                 last_finite_step_loss=last_finite_loss)
        _log(f"train {config.variant} ({config.arm}, seed {config.seed}): diverged (non-finite loss or gradient) at "
             f"epoch {epoch}, iteration {iteration}; a result, recorded in {run.file(run.DONE)}")
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _progress_bar(config: Config, start_epoch: int, enabled: bool):
    from tqdm import tqdm

    total = config.epochs * config.iterations
    return tqdm(total=total, initial=(start_epoch - 1) * config.iterations, desc=f"train {config.variant}",
                disable=not enabled, mininterval=2, unit="it", dynamic_ncols=True)


__all__ = ["train", "validate", "build_model", "ActivationRecorder"]
