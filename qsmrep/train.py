"""Training of one variant: AdamW, validation after every epoch, checkpoints, resume, history.

Layout of a run folder ``out``::

    config.yaml        the resolved configuration (written first; a different config is refused)
    history.csv        one row per finished epoch (epoch, train_loss, …, val_loss, val_nrmse, seconds, …)
    last.pt            model + optimiser + history after the last finished epoch (resume point)
    epoch_EEE.pt       checkpoints at the early epoch (20 % of the budget) and the last epoch
    FAILED.json        only when training stopped on a non-finite loss/gradient

Every file is written atomically, so a run killed at any moment (SIGKILL included) restarts from
its last finished epoch, and ``history.csv`` holds each epoch exactly once. The data plan of an
epoch depends on (seed, epoch) only and the optimiser state is restored, so on a CPU an
interrupted-and-resumed run ends with the same history (timing columns aside) and the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from qsmrep import distributed, io
from qsmrep.config import Config
from qsmrep.data import SyntheticMaps, epoch_plan, patch_loader
from qsmrep.loss import PhysicsInformedLoss
from qsmrep.metrics import nrmse
from qsmrep.unet import UNet3D

HISTORY_COLUMNS = [
    "epoch", "iterations", "train_loss", "train_chi", "train_field", "val_loss", "val_nrmse", "dead_fraction",
    "skipped_steps", "seconds", "data_seconds", "peak_mem_mb",
]
TIMING_COLUMNS = ("seconds", "data_seconds", "peak_mem_mb")
CONFIG_FILE, HISTORY_FILE, LAST_FILE, FAILED_FILE = "config.yaml", "history.csv", "last.pt", "FAILED.json"
# Fields that do not change the numbers a run produces (on one machine); a resumed run may differ in them.
EXECUTION_FIELDS = ("num_workers", "val_batch_size", "profile")


class NonFiniteError(RuntimeError):
    """A NaN or Inf loss or gradient stopped training."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast context for the network (``precision="bf16"``), a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(config: Config, device: torch.device | str = "cpu") -> UNet3D:
    """The U-Net of ``config``, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    model = UNet3D(**config.model_kwargs()).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


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


@torch.no_grad()
def validate(model: nn.Module, maps: SyntheticMaps, loss_fn: PhysicsInformedLoss, device: torch.device,
             precision: str = "fp32", record_units: bool = True) -> dict:
    """Loss and mean NRMSE (inside each map's mask, percent) on full validation maps.

    The first map also records the dead-unit fraction (see :class:`ActivationRecorder`).
    """
    was_training = model.training
    model.eval()
    losses, errors, dead, per_layer = [], [], float("nan"), {}
    for index in range(len(maps)):
        sample = maps[index]
        field = sample["field"][None].to(device)
        chi = sample["chi"][None].to(device)
        recorder = ActivationRecorder(model) if record_units and index == 0 else None
        with (recorder or contextlib.nullcontext()), autocast(device, precision):
            pred = model(field)
        pred = pred.float()
        if recorder is not None:
            dead, per_layer = recorder.dead_fraction(), recorder.dead_fractions()
        losses.append(loss_fn(pred, chi, field).item())
        errors.append(nrmse(pred[0, 0].cpu().numpy(), chi[0, 0].cpu().numpy(), sample["mask"][0].numpy()))
    model.train(was_training)
    return {"val_loss": float(np.mean(losses)), "val_nrmse": float(np.mean(errors)), "dead_fraction": dead,
            "dead_per_layer": per_layer}


def _check_same_config(out: Path, config: Config) -> None:
    path = out / CONFIG_FILE
    if not path.exists():
        return
    try:
        saved = Config.load(path).to_dict()
    except Exception as err:  # noqa: BLE001 - any unreadable config is reported the same way
        raise ValueError(f"out: {path} is unreadable ({err}); remove it or choose another folder") from None
    current = config.to_dict()
    differing = [k for k in current if k not in EXECUTION_FIELDS and saved.get(k) != current[k]]
    if differing:
        k = differing[0]
        raise ValueError(f"out: {out} holds a run with a different config ({k}: {saved.get(k)!r} there, {current[k]!r} now); "
                         "use another folder or --force")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); ValueError if it is not a readable qsmrep checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: no such file {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupted/truncated files raise many kinds of errors
        raise ValueError(f"checkpoint: {str(path)!r} is corrupted or not a checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "epoch"} <= set(ckpt):
        raise ValueError(f"checkpoint: {str(path)!r} is not a qsmrep checkpoint (missing model/config/epoch)")
    return ckpt


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model``; ValueError naming the first mismatching tensor."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise ValueError(f"{source}: architecture mismatch: parameter {name} missing")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{source}: architecture mismatch: {name} has shape {tuple(state[name].shape)}, "
                             f"the model expects {tuple(tensor.shape)}")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ValueError(f"{source}: architecture mismatch: unexpected parameter {extra[0]}")
    model.load_state_dict(state)


def _grads_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def train(config: Config, out: str | Path, progress: bool = True, force: bool = False,
          on_finish: Callable[[nn.Module], None] | None = None) -> pd.DataFrame:
    """Train ``config``'s variant into folder ``out``; resume if it holds an unfinished run.

    Returns the history (one row per epoch). A finished run returns its history without training.
    Raises :class:`NonFiniteError` on a non-finite loss or gradient with ``nonfinite="stop"``.
    ``on_finish(model)`` is called with the trained model at the end. Under ``torchrun`` with
    several processes, training is data-parallel (:mod:`qsmrep.distributed`); rank 0 writes the
    files and returns the full history.
    """
    context = distributed.setup(config.device)
    try:
        return _train(config, Path(out), progress, force, on_finish, context)
    finally:
        context.close()


def _train(config: Config, out: Path, progress: bool, force: bool, on_finish, context: distributed.Context) -> pd.DataFrame:
    if context.is_main:
        out = io.check_writable_dir(out)
        io.remove_temporaries(out)
        if force:
            for path in [out / CONFIG_FILE, out / HISTORY_FILE, out / LAST_FILE, out / FAILED_FILE, *out.glob("epoch_*.pt")]:
                path.unlink(missing_ok=True)
        _check_same_config(out, config)
        io.write_text(out / CONFIG_FILE, config.to_yaml())
    context.barrier()
    device = resolve_device(config.device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    model = build_model(config, device)
    net = model
    if context.enabled:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[context.local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = PhysicsInformedLoss.from_config(config)

    rows: list[dict] = []
    start_epoch = 1
    if (out / LAST_FILE).exists():
        ckpt = load_checkpoint(out / LAST_FILE, map_location=device)
        load_model_state(model, ckpt["model"], str(out / LAST_FILE))
        optimizer.load_state_dict(ckpt["optimizer"])
        rows = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
    context.barrier()
    if context.is_main:
        (out / FAILED_FILE).unlink(missing_ok=True)
    if start_epoch > config.epochs:
        if context.is_main:
            _write_history(out, rows)
        if on_finish is not None:
            on_finish(model)
        return pd.DataFrame(rows, columns=HISTORY_COLUMNS)

    train_maps = SyntheticMaps("train", config.n_train, config.map_size, config.data_seed, config.cache_maps, progress)
    val_maps = SyntheticMaps("val", config.n_val, config.map_size, config.data_seed, config.cache_maps, progress)
    bar = _progress_bar(config, start_epoch, progress and context.is_main)
    model.train()
    for epoch in range(start_epoch, config.epochs + 1):
        plan = epoch_plan(config.seed, epoch, config.n_train, config.map_size, config.patch_size,
                          config.batch_size, config.iterations)
        plan = [distributed.shard(batch, context) for batch in plan]
        sums = {"total": 0.0, "chi": 0.0, "field": 0.0}
        steps = skipped = 0
        data_seconds = 0.0
        started = time.perf_counter()
        waited = time.perf_counter()
        for iteration, (field, chi) in enumerate(patch_loader(train_maps, config.patch_size, plan, config.num_workers), 1):
            field, chi = field.to(device, non_blocking=True), chi.to(device, non_blocking=True)
            if config.channels_last:
                field = field.contiguous(memory_format=torch.channels_last_3d)
            data_seconds += time.perf_counter() - waited
            with autocast(device, config.precision):
                pred = net(field)
            parts = loss_fn.components(pred, chi, field)
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(parts["total"]))
            if context.enabled:  # every rank must take the same branch, or the gradient all-reduce hangs
                finite = context.mean([float(finite)])[0] == 1.0
            if finite:
                parts["total"].backward()
                finite = _grads_finite(model)
            if not finite:
                if config.nonfinite == "stop":
                    if context.is_main:
                        _write_failure(out, epoch, iteration, rows)
                    raise NonFiniteError(
                        f"non-finite loss or gradient at epoch {epoch}, iteration {iteration}; training stopped, "
                        f"last good checkpoint: {out / LAST_FILE if rows else 'none (first epoch)'}")
                skipped += 1
            else:
                optimizer.step()
                steps += 1
                for key in sums:
                    sums[key] += parts[key].item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{parts['total'].item():.4f}", refresh=False)
            waited = time.perf_counter()
        if steps == 0:
            if context.is_main:
                _write_failure(out, epoch, config.iterations, rows)
            raise NonFiniteError(f"every step of epoch {epoch} was non-finite and skipped; training stopped")
        means = context.mean([sums["total"] / steps, sums["chi"] / steps, sums["field"] / steps])
        if not context.is_main:
            context.barrier()  # rank 0 validates and writes
            continue
        val = validate(model, val_maps, loss_fn, device, config.precision)
        rows.append({
            "epoch": epoch, "iterations": config.iterations,
            "train_loss": means[0], "train_chi": means[1], "train_field": means[2],
            "val_loss": val["val_loss"], "val_nrmse": val["val_nrmse"], "dead_fraction": val["dead_fraction"],
            "skipped_steps": skipped, "seconds": time.perf_counter() - started, "data_seconds": data_seconds,
            "peak_mem_mb": peak_memory_mb(device),
        })
        bar.set_postfix(epoch=epoch, val_nrmse=f"{val['val_nrmse']:.1f}%", refresh=True)
        state = {"model": model.state_dict(), "epoch": epoch, "config": config.to_dict(), "history": rows,
                 "dead_per_layer": val["dead_per_layer"]}
        if epoch in (config.early, config.epochs):
            io.save_torch(out / checkpoint_name(epoch), state)
        io.save_torch(out / LAST_FILE, {**state, "optimizer": optimizer.state_dict()})
        _write_history(out, rows)
        context.barrier()
    bar.close()
    context.broadcast_buffers(model)
    if on_finish is not None:
        on_finish(model)
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far in MiB: CUDA max allocated on a GPU, else peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress_bar(config: Config, start_epoch: int, enabled: bool):
    from tqdm import tqdm

    total = config.epochs * config.iterations
    return tqdm(total=total, initial=(start_epoch - 1) * config.iterations, desc=f"train {config.variant}",
                disable=not enabled, mininterval=2, unit="it", dynamic_ncols=True)


def _write_history(out: Path, rows: list[dict]) -> None:
    io.write_text(out / HISTORY_FILE, pd.DataFrame(rows, columns=HISTORY_COLUMNS).to_csv(index=False))


def _write_failure(out: Path, epoch: int, iteration: int, rows: list[dict]) -> None:
    io.write_json(out / FAILED_FILE, {"reason": "non-finite loss or gradient", "epoch": epoch, "iteration": iteration,
                                       "last_good_epoch": rows[-1]["epoch"] if rows else None})


def is_finished(out: str | Path, config: Config) -> bool:
    """True when ``out`` holds the final checkpoint of ``config``'s run."""
    return (Path(out) / checkpoint_name(config.epochs)).exists() and not (Path(out) / FAILED_FILE).exists()


def read_history(out: str | Path) -> pd.DataFrame:
    """The history table of a run folder (empty frame with the columns if there is none)."""
    path = Path(out) / HISTORY_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=HISTORY_COLUMNS)


__all__ = ["train", "validate", "build_model", "load_checkpoint", "load_model_state", "NonFiniteError",
           "ActivationRecorder", "resolve_device", "autocast", "is_finished", "read_history", "checkpoint_name"]
