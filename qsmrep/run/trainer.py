"""Training of one variant: the training step over a data source, validation after every epoch,
checkpoints, resume, history.

The run's files live in a :class:`qsmrep.run.runfolder.RunFolder`. Every file is written
atomically and the completion marker last, so a run killed at any moment (SIGKILL included)
restarts from its last finished epoch, and ``history.csv`` holds each epoch exactly once. The
batches of an epoch depend on (seed, epoch) only (:mod:`qsmrep.run.sources`) and the optimiser
state is restored, so on a CPU an interrupted-and-resumed run ends with the same history (timing
columns aside) and the same weights as an uninterrupted one.

A non-finite loss or gradient with ``nonfinite="stop"`` (or an epoch whose every step was
non-finite with ``nonfinite="skip"``) ends the run as *diverged*: a result, recorded in the
completion marker with the epoch, the iteration and the last finite values, not an error.

Inside an epoch nothing is read back from the device: the step's loss terms and finite flags are
accumulated there (:class:`EpochTally`) and read once at the end of the epoch, which is also where a
``stop`` run learns of its first non-finite step (the steps after it are discarded with the epoch);
the progress bar reads the running loss at most every :data:`POSTFIX_SECONDS`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.physics import DipolePhysics
from qsmrep.core.unet import UNet3D
from qsmrep.run import distributed, runtime
from qsmrep.run.config import Config
from qsmrep.run.data import to_device
from qsmrep.run.runfolder import DIVERGED, FINISHED, HISTORY_COLUMNS, RunFolder, load_model_state
from qsmrep.run.sources import DataSource, SyntheticSource
from qsmrep.run.step import StepResult, TrainingStep
from qsmrep.run.validation import validate

#: the progress bar shows the epoch's running loss at most this often (each time one read from the device)
POSTFIX_SECONDS = 5.0
LOSS_TERMS = ("total", "chi", "field")


def _log(message: str) -> None:
    print(f"[qsmrep] {message}", file=sys.stderr, flush=True)


def build_model(config: Config, device: torch.device | str = "cpu") -> UNet3D:
    """The U-Net of ``config``, initialised from ``config.seed``, in its memory format."""
    torch.manual_seed(config.seed)
    model = UNet3D(**config.model_kwargs()).to(device)
    return runtime.to_memory_format(model, config.memory_format)


def time_training_step(config: Config, steps: int = 5, warmup: int = 2) -> float:
    """Median seconds of one training step of ``config``'s network on this machine, in the setting this machine
    resolves for it (``auto`` device, precision and memory format), on random inputs of its batch and patch size:
    the cost of variants compared on one machine where their runs were timed on several
    (:func:`qsmrep.study.collect.cost_table`). Each step's loss is read back, so the time is the step's whole."""
    config = runtime.resolve(config.replace(device="auto", precision="auto", memory_format="auto", compile="off"))
    device = torch.device(config.device)
    model = build_model(config, device)
    step = TrainingStep.from_config(config, model, PhysicsInformedLoss.from_config(config), device)
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.batch_size, 1, config.patch_size, config.patch_size, config.patch_size)
    field, chi = (scale * torch.randn(shape, generator=generator).to(device) for scale in (0.05, config.synth.chi_std))
    seconds = []
    for _ in range(warmup + steps):
        started = time.perf_counter()
        float(step(field, chi).parts["total"])
        seconds.append(time.perf_counter() - started)
    return float(statistics.median(seconds[warmup:]))


def train(config: Config, out: str | Path, progress: bool = True, force: bool = False,
          on_finish: Callable[[nn.Module], None] | None = None, data: DataSource | None = None) -> pd.DataFrame:
    """Train ``config``'s variant into run folder ``out``; resume if it holds an unfinished run.

    ``data`` is the source of training batches and validation maps (:mod:`qsmrep.run.sources`);
    default: the config's synthetic generator (:class:`~qsmrep.run.sources.SyntheticSource`), built only
    when there is training left to do. ``auto`` settings are resolved for this machine first
    (:func:`qsmrep.run.runtime.resolve`); the folder stores the resolved configuration and refuses to
    continue a run made with another one (another device, precision or data source). Returns the
    history (one row per finished epoch). A complete run, finished or diverged, returns its history
    without training. ``on_finish(model)`` is called with the trained model at the end. Under
    ``torchrun`` with several processes, training is data-parallel (:mod:`qsmrep.run.distributed`);
    rank 0 writes the files and returns the full history.
    """
    config = runtime.resolve(config)
    context = distributed.setup(config.device)
    run = RunFolder(out)
    try:
        with run.lock() if context.is_main else contextlib.nullcontext():
            return Trainer(config, run, context, progress, data).fit(force, on_finish)
    finally:
        context.close()


class EpochTally:
    """One epoch's training figures, accumulated on the device and read back once (:meth:`read`).

    A step *counts* when its loss and gradient norm are finite and, under ``stop``, every earlier step of the
    epoch was too: its loss terms are added to float64 sums in step order (the sums a host loop over the
    ``.item()`` values makes, to the bit) and its total becomes the last finite loss. The first non-finite
    iteration is kept (0: none). ``last_finite``: the device value carried over from the epoch before.
    """

    def __init__(self, device: torch.device, stop: bool, last_finite: torch.Tensor | None = None):
        self.stop = stop
        self.sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=device)
        self.counted = torch.zeros((), dtype=torch.int64, device=device)
        self.first_nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self.all_finite = torch.ones((), dtype=torch.bool, device=device)
        self.last_finite = last_finite if last_finite is not None else \
            torch.full((), math.nan, dtype=torch.float64, device=device)

    def add(self, result: StepResult, iteration: int) -> None:
        """Account for the step of ``iteration`` (1-based), on the device."""
        finite = result.finite
        self.all_finite = self.all_finite & finite
        counts = self.all_finite if self.stop else finite
        terms = torch.stack([result.parts[key] for key in LOSS_TERMS]).double()
        self.sums += torch.where(counts, terms, 0.0)
        self.counted += counts
        self.first_nonfinite = torch.where((self.first_nonfinite == 0) & ~finite, iteration, self.first_nonfinite)
        self.last_finite = torch.where(counts, terms[0], self.last_finite)

    def mean_loss(self) -> float:
        """The mean total loss of the steps counted so far (one read from the device)."""
        return float(self.sums[0] / self.counted.clamp(min=1))

    def read(self) -> dict:
        """``sums`` (list, :data:`LOSS_TERMS`), ``steps`` counted, ``first_nonfinite`` iteration (0: none) and
        ``last_finite`` loss (None: none yet), with one copy from the device."""
        flags = torch.stack([self.counted, self.first_nonfinite]).double()
        values = torch.cat([self.sums, flags, self.last_finite[None]]).tolist()
        last = values[-1]
        return {"sums": values[:len(LOSS_TERMS)], "steps": int(values[-3]), "first_nonfinite": int(values[-2]),
                "last_finite": None if math.isnan(last) else last}


class _Diverged(Exception):
    """Raised inside an epoch when the run ends as diverged (at ``epoch``, ``iteration``)."""

    def __init__(self, epoch: int, iteration: int):
        super().__init__(epoch, iteration)
        self.epoch, self.iteration = epoch, iteration


class Trainer:
    """One run of :func:`train`: the model, its training step and the epochs left to train."""

    def __init__(self, config: Config, run: RunFolder, context: distributed.Context, progress: bool,
                 data: DataSource | None):
        self.config, self.run, self.context, self.data = config, run, context, data
        self.progress = progress and context.is_main
        self.device = torch.device(config.device)
        if context.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", context.local_rank)
        self.rows: list[dict] = []
        self.last_finite: float | None = None  # the last finite step loss, as read at the end of an epoch
        self._last_finite: torch.Tensor | None = None  # the same on the device, carried into the next epoch
        self.bar = None

    def _build(self) -> None:
        """Model, loss and training step (data-parallel and compiled where the config says)."""
        config, context = self.config, self.context
        self.model = build_model(config, self.device)
        net = self.model
        if context.enabled:
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [context.local_rank] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        net = torch.compile(net) if config.compile == "on" else net
        self.loss_fn = PhysicsInformedLoss.from_config(config, DipolePhysics.from_config(config))
        self.step = TrainingStep.from_config(config, self.model, self.loss_fn, self.device, net=net,
                                             agree=context.all_true)

    def _resume(self) -> int:
        """Restore the last finished epoch from ``last.pt``; the first epoch still to train."""
        state = self.run.resume_state(map_location=self.device)
        if state is None:
            return 1
        load_model_state(self.model, state["model"], str(self.run.file(self.run.LAST)))
        self.step.optimizer.load_state_dict(state["optimizer"])
        self.rows = list(state["history"])
        return int(state["epoch"]) + 1

    def fit(self, force: bool, on_finish) -> pd.DataFrame:
        config, run, context = self.config, self.run, self.context
        if context.is_main:
            run.prepare(config, (self.data or SyntheticSource).identity, force)
        context.barrier()
        self._build()
        start_epoch = self._resume()
        context.barrier()
        if run.done() is not None or start_epoch > config.epochs:
            return self._complete(on_finish)
        if context.is_main:
            run.add_machine(runtime.machine_label(self.device))
        if start_epoch > 1 and context.is_main:
            run.note_resume(start_epoch)
            _log(f"train {config.variant} ({config.arm}, seed {config.seed}): resuming {run.path} from epoch "
                 f"{start_epoch} of {config.epochs}")
        if self.data is None:
            data_device = self.device if config.data_device == self.device.type else torch.device(config.data_device)
            self.data = SyntheticSource(config, data_device, progress=self.progress)
        self.bar = _progress_bar(config, self.data.iterations, start_epoch, self.progress)
        self.model.train()
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                self._epoch(epoch)
        except _Diverged as stop:
            return self._diverged(stop.epoch, stop.iteration)
        self.bar.close()
        context.broadcast_buffers(self.model)
        if context.is_main:
            run.mark(FINISHED, epochs=config.epochs)
        if on_finish is not None:
            on_finish(self.model)
        return pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)

    def _complete(self, on_finish) -> pd.DataFrame:
        """A run with nothing left to train: complete its files if the marker is missing, return its history."""
        if self.context.is_main and self.run.done() is None:  # killed after the last epoch's files, before the marker
            self.run.write_history(self.rows)
            self.run.mark(FINISHED, epochs=self.config.epochs)
        if on_finish is not None:
            on_finish(self.model)
        return self.run.history() if self.context.is_main else pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)

    def _train_epoch(self, epoch: int) -> dict:
        """The steps of one epoch; the history columns of its training part. Raises :class:`_Diverged`.

        The loop reads nothing back from the device (module docstring); ``data_seconds`` is the host's time
        spent getting batches (on a GPU: queueing their rendering)."""
        tally = EpochTally(self.device, self.config.nonfinite == "stop", self._last_finite)
        iterations, data_seconds = 0, 0.0
        started = waited = shown = time.perf_counter()
        shard = lambda batch: distributed.shard(batch, self.context)  # noqa: E731
        for iterations, (field, chi) in enumerate(self.data.batches(epoch, shard), 1):
            field, chi = to_device(field, self.device), to_device(chi, self.device)
            data_seconds += time.perf_counter() - waited
            tally.add(self.step(field, chi), iterations)
            self.bar.update(1)
            if not self.bar.disable and time.perf_counter() - shown >= POSTFIX_SECONDS:
                self.bar.set_postfix(epoch=epoch, loss=f"{tally.mean_loss():.4f}", refresh=False)
                shown = time.perf_counter()
            waited = time.perf_counter()
        figures = tally.read()
        self._last_finite, self.last_finite = tally.last_finite, figures["last_finite"]
        if figures["first_nonfinite"] and self.config.nonfinite == "stop":
            raise _Diverged(epoch, figures["first_nonfinite"])
        steps = figures["steps"]
        if steps == 0:
            raise _Diverged(epoch, self.data.iterations)
        means = self.context.mean([total / steps for total in figures["sums"]])
        return {"epoch": epoch, "iterations": iterations, "train_loss": means[0], "train_chi": means[1],
                "train_field": means[2], "skipped_steps": iterations - steps, "started": started,
                "data_seconds": data_seconds}

    def _epoch(self, epoch: int) -> None:
        """Train one epoch; on rank 0 validate it and save its row, checkpoint and resume point."""
        row = self._train_epoch(epoch)
        if not self.context.is_main:
            self.context.barrier()  # rank 0 validates and writes
            return
        config = self.config
        val_started = time.perf_counter()
        val = validate(self.model, self.data.validation, self.loss_fn, self.device, config.precision, config.memory_format)
        started = row.pop("started")
        row.update(val_loss=val["val_loss"], val_nrmse=val["val_nrmse"], dead_fraction=val["dead_fraction"],
                   zero_gradient_fraction=val["zero_gradient_fraction"],
                   seconds=time.perf_counter() - started, val_seconds=time.perf_counter() - val_started,
                   peak_mem_mb=runtime.peak_memory_mb(self.device))
        self.rows.append({key: row[key] for key in HISTORY_COLUMNS})
        self.bar.set_postfix(epoch=epoch, val_nrmse=f"{val['val_nrmse']:.1f}%", refresh=True)
        state = {"model": self.model.state_dict(), "epoch": epoch, "config": config.to_dict(), "history": self.rows,
                 "dead_per_layer": val["dead_per_layer"], "zero_gradient_per_layer": val["zero_gradient_per_layer"]}
        self.run.save_epoch(state, self.step.optimizer.state_dict(), self.rows,
                            keep_checkpoint=epoch in (config.early, config.epochs))
        self.context.barrier()

    def _diverged(self, epoch: int, iteration: int) -> pd.DataFrame:
        """End the run as diverged: history up to the last good epoch, then the marker with where and what."""
        self.bar.close()
        config, rows = self.config, self.rows
        if self.context.is_main:
            last = rows[-1] if rows else {}
            self.run.write_history(rows)
            self.run.mark(DIVERGED, epoch=epoch, iteration=iteration, last_good_epoch=last.get("epoch"),
                          last_finite={key: last[key] for key in ("train_loss", "val_loss", "val_nrmse") if key in last},
                          last_finite_step_loss=self.last_finite)
            _log(f"train {config.variant} ({config.arm}, seed {config.seed}): diverged (non-finite loss or gradient) "
                 f"at epoch {epoch}, iteration {iteration}; a result, recorded in {self.run.file(self.run.DONE)}")
        return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _progress_bar(config: Config, iterations: int, start_epoch: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=config.epochs * iterations, initial=(start_epoch - 1) * iterations,
                desc=f"train {config.variant}", disable=not enabled, mininterval=2, unit="it", dynamic_ncols=True)
