"""Paper-scale rows (``bench --profile paper``): what a GPU user needs to plan the paper's full scale.

Rows (one JSON object each with ``--json``; every row names the ``card``):

* ``train_step``: the six variants at the profile's patch and batch (four 160³ patches), in fp32
  (TF32 convolutions where the card allows) and in the default setting (``auto``: bf16 autocast +
  channels-last-3d on CUDA), with peak memory, TFLOP/s (network forward+backward FLOPs / s) and its
  fraction of the card's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`) (:mod:`qsmrep.bench.steps`);
* ``monai_step``: MONAI's ``BasicUNet`` in fp32 at the same patch, same widths and normalisation;
* ``data_path``: real training iterations of ELU16 in the default setting with the maps of each
  iteration rendered on the device (:class:`qsmrep.run.data.DeviceBatches`, side stream), against the
  bare step on fixed tensors (both :class:`qsmrep.run.step.TrainingStep`): seconds per iteration with
  data, the ratio (target ≤ 1.1) and the data-wait fraction;
* ``generator``: seconds per map rendered on the device, batches of four;
* ``validation``: rendering the validation maps once, and the seconds per epoch of validating them
  in the default setting (measured on a few maps, scaled to ``n_val``);
* ``validation_fraction``: validation seconds per epoch as a fraction of the median variant's epoch
  (target ≤ 15 %);
* ``projection``: the projected wall time of ``./run_all.sh --profile paper`` (six variants, one
  seed, one arm) from these figures (target ≤ 8 hours).

The same functions run on a CPU at small profiles (the tests use ``smoke``), so the code path is
checked without a GPU; only rows measured on a GPU mean anything for the targets.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from qsmrep import registry
from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.run.config import Config
from qsmrep.run.data import SyntheticMaps, epoch_plan, patch_batches
from qsmrep.run.runtime import cpu_name, resolve, resolve_device
from qsmrep.run.step import TrainingStep
from qsmrep.run.trainer import build_model
from qsmrep.run.validation import validate
from qsmrep.bench.data import generator_rows
from qsmrep.bench.steps import StepSpec, require_finite, run_step_case, timed_step
from qsmrep.bench.timing import synchronize, timed

#: dense bf16 tensor throughput in TFLOP/s by card name (vendor data sheets, without sparsity)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}
ITERATION_TARGET, VALIDATION_TARGET, PROJECTION_TARGET_HOURS = 1.1, 0.15, 8.0
DATA_PATH_WARMUP = 3  # iterations of the data path before timing


def card_name(device: torch.device) -> str:
    """The GPU's name, or ``cpu: <model>`` on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()}"


def card_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a card from its name (first matching entry of :data:`BF16_PEAK_TFLOPS`), else None."""
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return peak
    return None


def step_rows(profile: str, device: str, iters: int = 5, use_monai: bool = True) -> list[dict]:
    """``train_step`` rows (six variants × fp32 and the default setting) and ``monai_step`` rows (ELU, fp32)."""
    config = resolve(Config.from_profile(profile, device=device))
    base = StepSpec(patch=config.patch_size, batch=config.batch_size, device=device, profile=profile,
                    warmup=3, iters=iters, norm=config.norm)
    settings = [("fp32", False), (config.precision, config.memory_format == "channels_last")]
    specs = [replace(base, activation=a, channels=c, precision=p, channels_last=cl)
             for a, c in registry.PAPER_VARIANTS for p, cl in dict.fromkeys(settings)]
    if use_monai:
        specs += [replace(base, model="monai", activation=registry.RECOMMENDED_ACTIVATION, channels=c)
                  for c in registry.PAPER_CHANNELS]
    return [run_step_case(spec, isolate=False) for spec in specs]


def _seconds_with_data(step: TrainingStep, batches, warmup: int) -> tuple[list[float], tuple]:
    """Seconds from the end of one step to the end of the next (fetching the batch included), after
    ``warmup`` iterations; and the last ``(field, chi)`` batch, for the bare step."""
    seconds, last = [], None
    synchronize(step.device)
    t0 = time.perf_counter()
    for k, (field, chi) in enumerate(batches):
        require_finite(step(field, chi))
        synchronize(step.device)
        now = time.perf_counter()
        if k >= warmup:
            seconds.append(now - t0)
        t0, last = now, (field, chi)
    return seconds, last


def data_path_row(profile: str, device: str, iterations: int = 12, warmup: int = DATA_PATH_WARMUP) -> dict:
    """ELU16 in the default setting: seconds per iteration with maps rendered on the device, vs the bare step."""
    config = resolve(Config.from_profile(profile, device=device, activation=registry.RECOMMENDED_ACTIVATION,
                                         initial_channels=registry.PAPER_CHANNELS[0], cache_maps=False))
    dev = resolve_device(config.device)
    model = build_model(config, dev)
    model.train()
    step = TrainingStep.from_config(config, model, PhysicsInformedLoss.from_config(config), dev)
    maps = SyntheticMaps.from_config(config, "train", dev, cache=False)
    plan = epoch_plan(config.seed, 1, config.n_train, config.map_size, config.patch_size, config.batch_size,
                      warmup + iterations)
    with_data, fixed = _seconds_with_data(step, patch_batches(maps, config.patch_size, plan, num_workers=0), warmup)
    bare = [timed_step(step, *fixed)[0] for _ in range(iterations)]
    seconds, bare_seconds = statistics.median(with_data), statistics.median(bare)
    ratio = seconds / bare_seconds
    return {"case": "data_path", "variant": config.variant, "patch": config.patch_size, "precision": config.precision,
            "memory_format": config.memory_format, "seconds_per_iter": seconds, "bare_seconds_per_iter": bare_seconds,
            "ratio": ratio, "data_wait_fraction": max(0.0, 1 - bare_seconds / seconds), "target": ITERATION_TARGET,
            "meets_target": ratio <= ITERATION_TARGET, "iterations": iterations, "figure": "ratio", "value": ratio,
            "unit": "x (iteration with data / bare step)"}


def validation_row(profile: str, device: str, maps: int = 4) -> dict:
    """Seconds to render the validation maps once and to validate them per epoch (scaled from ``maps`` maps)."""
    config = resolve(Config.from_profile(profile, device=device))
    dev = resolve_device(config.device)
    count = min(maps, config.n_val)
    render, val = timed(dev, SyntheticMaps.from_config, config, "val", dev, cache=True, n=count)
    model = build_model(config, dev)
    loss_fn = PhysicsInformedLoss.from_config(config)
    validate(model, val, loss_fn, dev, config.precision, config.memory_format)  # warm-up
    seconds, _ = timed(dev, validate, model, val, loss_fn, dev, config.precision, config.memory_format)
    per_map, render = seconds / count, render / count
    return {"case": "validation", "variant": config.variant, "patch": config.map_size, "precision": config.precision,
            "memory_format": config.memory_format, "seconds_per_map": per_map, "render_seconds_per_map": render,
            "n_val": config.n_val, "seconds_per_epoch": per_map * config.n_val,
            "render_seconds_once": render * config.n_val, "figure": "seconds_per_epoch",
            "value": per_map * config.n_val, "unit": "s/epoch (validation)"}


def projection_rows(profile: str, rows: list[dict]) -> list[dict]:
    """Validation fraction of the epoch and the projected six-variant wall time, from measured rows
    (``train_step`` rows of the setting the run would use, a ``data_path`` and a ``validation`` row)."""
    config = Config.from_profile(profile)
    steps = {r["variant"]: r["seconds_per_iter"] for r in rows if r.get("case") == "train_step" and r.get("seconds_per_iter")}
    data = next((r for r in rows if r.get("case") == "data_path"), None)
    val = next((r for r in rows if r.get("case") == "validation"), None)
    if not steps or data is None or val is None:
        return []
    extra = data["seconds_per_iter"] - data["bare_seconds_per_iter"]  # data cost per iteration, as measured on ELU16
    epochs = {variant: config.iterations * (seconds + max(extra, 0.0)) + val["seconds_per_epoch"]
              for variant, seconds in steps.items()}
    fraction = val["seconds_per_epoch"] / statistics.median(epochs.values())
    total = sum(config.epochs * seconds + val["render_seconds_once"] for seconds in epochs.values())
    return [{"case": "validation_fraction", "value": fraction, "figure": "validation_fraction",
             "unit": "fraction of the epoch (median variant)", "target": VALIDATION_TARGET,
             "meets_target": fraction <= VALIDATION_TARGET},
            {"case": "projection", "value": total / 3600, "figure": "paper_wall_time", "variants": len(epochs),
             "epoch_seconds": epochs, "unit": "hours (./run_all.sh --profile paper, one seed, one arm)",
             "target": PROJECTION_TARGET_HOURS, "meets_target": total / 3600 <= PROJECTION_TARGET_HOURS}]


class _CardRows:
    """The rows so far, each labelled with the card (and TFLOP/s, fraction of peak, default setting)."""

    def __init__(self, profile: str, device: str, emit=None):
        dev = resolve_device(device)
        self.card = card_name(dev)
        self.peak = card_peak_tflops(self.card) if dev.type == "cuda" else None
        default = resolve(Config.from_profile(profile, device=device))
        self.default = (default.precision, default.memory_format == "channels_last")
        self.rows: list[dict] = []
        self.emit = emit

    def add(self, new: list[dict]) -> None:
        for row in new:
            row["card"] = self.card
            if row.get("gflops_per_s"):
                row["tflops_per_s"] = row["gflops_per_s"] / 1000
                row["fraction_of_peak"] = row["tflops_per_s"] / self.peak if self.peak else None
            if row.get("case") == "train_step":
                row["default_setting"] = (row["precision"], row["memory_format"] == "channels_last_3d") == self.default
        self.rows.extend(new)
        if self.emit is not None:
            self.emit(new)


def paper_rows(profile: str = "paper", device: str = "cuda", use_monai: bool = True, iters: int = 5,
               data_iterations: int = 12, val_maps: int = 4, emit=None) -> list[dict]:
    """Every row of the module docstring, each labelled with the card; ``emit(rows)`` is called as rows arrive."""
    out = _CardRows(profile, device, emit)
    out.add(step_rows(profile, device, iters, use_monai))
    out.add([data_path_row(profile, device, data_iterations)])
    config = Config.from_profile(profile)
    for row in generator_rows(sizes=(config.map_size,), repeats=2, device=device, batch=config.batch_size):
        out.add([row])
    out.add([validation_row(profile, device, val_maps)])
    out.add(projection_rows(profile, [r for r in out.rows if r.get("case") != "train_step" or r.get("default_setting")]))
    return out.rows
