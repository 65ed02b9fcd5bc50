"""``python -m qsmrep bench --profile paper``: what a GPU user needs to plan the paper's full scale.

Rows (one JSON object each with ``--json``; every row names the ``card``):

* ``train_step``: the six variants at the profile's patch and batch (four 160³ patches), in fp32
  (TF32 convolutions where the card allows) and in the default setting (``auto``: bf16 autocast +
  channels-last-3d on CUDA), with peak memory, TFLOP/s (network forward+backward FLOPs / s) and its
  fraction of the card's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`);
* ``monai_step``: MONAI's ``BasicUNet`` in fp32 at the same patch, same widths and normalisation;
* ``data_path``: real training iterations of ELU16 in the default setting with the maps of each
  iteration rendered on the device (:class:`qsmrep.data.DeviceBatches`, side stream), against the
  bare step on fixed tensors: seconds per iteration with data, the ratio (target ≤ 1.1) and the
  data-wait fraction;
* ``generator``: seconds per map rendered on the device, batches of four;
* ``validation``: rendering the validation maps once, and the seconds per epoch of validating them
  in the default setting (measured on a few maps, scaled to ``n_val``), as a fraction of the epoch
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
from qsmrep.config import Config
from qsmrep.runtime import autocast, resolve, resolve_device, to_memory_format

#: dense bf16 tensor throughput in TFLOP/s by card name (vendor data sheets, without sparsity)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}
ITERATION_TARGET, VALIDATION_TARGET, PROJECTION_TARGET_HOURS = 1.1, 0.15, 8.0


def card_name(device: torch.device) -> str:
    """The GPU's name, or ``cpu: <model>`` on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from qsmrep.runtime import cpu_name

    return f"cpu: {cpu_name()}"


def card_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a card from its name (first matching entry of :data:`BF16_PEAK_TFLOPS`), else None."""
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return peak
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rows(profile: str, device: str, iters: int = 5, use_monai: bool = True) -> list[dict]:
    """``train_step`` rows (six variants × fp32 and the default setting) and ``monai_step`` rows (ELU, fp32)."""
    from qsmrep.bench import StepSpec, run_step_case

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


def data_path_row(profile: str, device: str, iterations: int = 12, warmup: int = 3) -> dict:
    """ELU16 in the default setting: seconds per iteration with maps rendered on the device, vs the bare step."""
    from qsmrep.data import SyntheticMaps, epoch_plan, patch_batches
    from qsmrep.loss import PhysicsInformedLoss
    from qsmrep.train import build_model

    config = resolve(Config.from_profile(profile, device=device, activation=registry.RECOMMENDED_ACTIVATION,
                                         initial_channels=registry.PAPER_CHANNELS[0], cache_maps=False))
    dev = resolve_device(config.device)
    model = build_model(config, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = PhysicsInformedLoss.from_config(config)
    maps = SyntheticMaps.from_config(config, "train", dev, cache=False)
    plan = epoch_plan(config.seed, 1, config.n_train, config.map_size, config.patch_size, config.batch_size,
                      warmup + iterations)

    def step(field, chi):
        optimizer.zero_grad(set_to_none=True)
        with autocast(dev, config.precision):
            pred = model(to_memory_format(field, config.memory_format))
        loss = loss_fn(pred, chi, field)
        loss.backward()
        optimizer.step()

    with_data, fixed = [], None
    _sync(dev)
    t0 = time.perf_counter()
    for k, (field, chi) in enumerate(patch_batches(maps, config.patch_size, plan, num_workers=0)):
        step(field, chi)
        _sync(dev)
        now = time.perf_counter()
        if k >= warmup:
            with_data.append(now - t0)
        t0 = now
        fixed = (field, chi)
    bare = []
    for _ in range(iterations):
        _sync(dev)
        t0 = time.perf_counter()
        step(*fixed)
        _sync(dev)
        bare.append(time.perf_counter() - t0)
    seconds, bare_seconds = statistics.median(with_data), statistics.median(bare)
    ratio = seconds / bare_seconds
    return {"case": "data_path", "variant": config.variant, "patch": config.patch_size, "precision": config.precision,
            "memory_format": config.memory_format, "seconds_per_iter": seconds, "bare_seconds_per_iter": bare_seconds,
            "ratio": ratio, "data_wait_fraction": max(0.0, 1 - bare_seconds / seconds), "target": ITERATION_TARGET,
            "meets_target": ratio <= ITERATION_TARGET, "iterations": iterations, "figure": "ratio", "value": ratio,
            "unit": "x (iteration with data / bare step)"}


def validation_row(profile: str, device: str, maps: int = 4) -> dict:
    """Seconds to render the validation maps once and to validate them per epoch (scaled from ``maps`` maps)."""
    from qsmrep.data import SyntheticMaps
    from qsmrep.loss import PhysicsInformedLoss
    from qsmrep.train import build_model, validate

    config = resolve(Config.from_profile(profile, device=device))
    dev = resolve_device(config.device)
    count = min(maps, config.n_val)
    _sync(dev)
    t0 = time.perf_counter()
    val = SyntheticMaps.from_config(config, "val", dev, cache=True, n=count)
    _sync(dev)
    render = (time.perf_counter() - t0) / count
    model = build_model(config, dev)
    loss_fn = PhysicsInformedLoss.from_config(config)
    validate(model, val, loss_fn, dev, config.precision, config.memory_format)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    validate(model, val, loss_fn, dev, config.precision, config.memory_format)
    _sync(dev)
    per_map = (time.perf_counter() - t0) / count
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


def paper_rows(profile: str = "paper", device: str = "cuda", use_monai: bool = True, iters: int = 5,
               data_iterations: int = 12, val_maps: int = 4, emit=None) -> list[dict]:
    """Every row of the module docstring, each labelled with the card; ``emit(rows)`` is called as rows arrive."""
    from qsmrep.bench import generator_rows

    dev = resolve_device(device)
    card = card_name(dev)
    peak = card_peak_tflops(card) if dev.type == "cuda" else None
    default = resolve(Config.from_profile(profile, device=device))
    rows: list[dict] = []

    def add(new):
        for row in new:
            row["card"] = card
            if row.get("gflops_per_s"):
                row["tflops_per_s"] = row["gflops_per_s"] / 1000
                row["fraction_of_peak"] = row["tflops_per_s"] / peak if peak else None
            if row.get("case") == "train_step":
                row["default_setting"] = (row["precision"], row["memory_format"] == "channels_last_3d") == \
                    (default.precision, default.memory_format == "channels_last")
        rows.extend(new)
        if emit is not None:
            emit(new)

    add(step_rows(profile, device, iters, use_monai))
    add([data_path_row(profile, device, data_iterations)])
    config = Config.from_profile(profile)
    for row in generator_rows(sizes=(config.map_size,), repeats=2, device=device, batch=config.batch_size):
        add([row])
    add([validation_row(profile, device, val_maps)])
    add(projection_rows(profile, [r for r in rows if r.get("case") != "train_step" or r.get("default_setting")]))
    return rows
