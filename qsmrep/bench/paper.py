"""Paper-scale rows (``bench --profile paper``): what ``./run_all.sh --profile paper`` costs on this card.

Rows (one JSON object each with ``--json``; every row names the ``card``), the decisive ones first:

* ``train_step``: the six variants at the profile's patch and batch (four 160³ patches) in the default setting
  (``auto``: bf16 autocast + channels-last-3d on CUDA), with peak memory, TFLOP/s (network forward+backward
  FLOPs / s) and its fraction of the card's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`) (:mod:`qsmrep.bench.steps`);
* ``data_path``: real training iterations of ELU16 in the default setting with the maps of each iteration
  rendered on the device (:class:`qsmrep.run.data.DeviceBatches`: draws made ahead, side stream) against the
  bare step on fixed tensors (both :class:`qsmrep.run.step.TrainingStep`, which reads nothing back), each a
  block of steps queued without a read in between, as the trainer queues them: seconds per iteration with
  data, the ratio (target ≤ 1.1) and the data-wait fraction;
* ``validation``: per variant, seconds per validation map in the default setting (inference, loss, NRMSE; no
  host read per map) with the maps where a run keeps them (:func:`qsmrep.run.sources.validation_on_host`),
  scaled to ``n_val``, and the seconds to render a map; for ELU16 on a GPU also with the maps kept the other
  way, so the choice (GPU memory, pinned host memory, or rendering again each epoch) can be checked;
* ``memory``: the largest training step's peak, the data path's extra, the validation maps (on the GPU or in
  pinned host memory) and validation's own peak against the card; the smallest card that fits
  (:func:`qsmrep.study.estimate.smallest_card`);
* ``evaluation``: per variant, seconds to score one test map on the device (inference and the five torch
  metrics, :func:`qsmrep.run.evaluate.score_maps`); ``evaluation_shared``: a noisy test map, a baseline's map,
  and the baselines' parameter search on the CPU;
* ``validation_fraction`` and ``projection``: the whole paper run per variant (:mod:`qsmrep.bench.projection`);
* then ``train_step`` in fp32 (TF32 convolutions where the card allows) and, on a GPU, ELU16/32 with cuDNN's
  autotuner (``cudnn_benchmark``: a lead for a faster default), ``monai_step`` (MONAI's ``BasicUNet`` in fp32),
  ``generator`` (seconds per map rendered on the device, batches of four).

Each row is handed to ``emit`` as soon as it is measured; a part that fails gives a row with ``error`` and the
others still run. The same functions run on a CPU at small profiles (the tests use ``smoke``), so the code
path is checked without a GPU; only rows measured on a GPU mean anything for the targets.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from qsmrep import registry
from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.physics import DipolePhysics
from qsmrep.run import baselines
from qsmrep.run.config import Config
from qsmrep.run.data import SyntheticMaps, epoch_plan, map_bytes, patch_batches
from qsmrep.run.evaluate import infer, score_maps
from qsmrep.run.noise import TEST_SNR, NoisyMaps
from qsmrep.run.runtime import cpu_name, resolve, resolve_device
from qsmrep.run.sources import validation_bytes, validation_on_host
from qsmrep.run.step import StepResult, TrainingStep
from qsmrep.run.trainer import build_model
from qsmrep.run.validation import validate
from qsmrep.study.estimate import GIB, smallest_card
from qsmrep.bench.data import generator_rows
from qsmrep.bench.projection import baseline_search_count, projection_rows
from qsmrep.bench.rows import make_row
from qsmrep.bench.steps import StepSpec, require_finite, run_step_case
from qsmrep.bench.timing import PeakMemory, synchronize, timed

#: dense bf16 tensor throughput in TFLOP/s by card name (vendor data sheets, without sparsity)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}
ITERATION_TARGET = 1.1
DATA_PATH_WARMUP = 3  # iterations of the data path before timing
ELU16 = f"{registry.RECOMMENDED_ACTIVATION}{registry.PAPER_CHANNELS[0]}"


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


def variant_configs(profile: str, device: str, **overrides) -> list[Config]:
    """The resolved configs of the six paper variants of ``profile`` on ``device``."""
    return [resolve(Config.from_profile(profile, device=device, activation=a, initial_channels=c, **overrides))
            for a, c in registry.PAPER_VARIANTS]


# ---------------------------------------------------------------------------------------------- training steps
def step_rows(profile: str, device: str, iters: int = 5, setting: str = "default", variants=None):
    """``train_step`` rows, one per variant as it is measured: ``setting`` ``default`` (the run's) or ``fp32``;
    ``variants`` (names) limits them. ``cudnn_benchmark`` rows are the default setting with cuDNN autotuning."""
    config = resolve(Config.from_profile(profile, device=device))
    base = StepSpec(patch=config.patch_size, batch=config.batch_size, device=device, profile=profile, warmup=3,
                    iters=iters, norm=config.norm)
    precision, channels_last = (config.precision, config.memory_format == "channels_last") \
        if setting in ("default", "cudnn_benchmark") else ("fp32", False)
    for activation, channels in registry.PAPER_VARIANTS:
        spec = replace(base, activation=activation, channels=channels, precision=precision, channels_last=channels_last)
        if variants is not None and spec.variant not in variants:
            continue
        if setting == "cudnn_benchmark":
            yield _with_cudnn_benchmark(spec)
        else:
            yield run_step_case(spec, isolate=False)


def _with_cudnn_benchmark(spec: StepSpec) -> dict:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return {**run_step_case(spec, isolate=False), "cudnn_benchmark": True}
    finally:
        torch.backends.cudnn.benchmark = before


def monai_rows(profile: str, device: str, iters: int = 5):
    """``monai_step`` rows: MONAI's ``BasicUNet`` (ELU, fp32) at the profile's patch, per width."""
    config = Config.from_profile(profile)
    for channels in registry.PAPER_CHANNELS:
        yield run_step_case(StepSpec(model="monai", activation=registry.RECOMMENDED_ACTIVATION, channels=channels,
                                     patch=config.patch_size, batch=config.batch_size, device=device, profile=profile,
                                     warmup=3, iters=iters, norm=config.norm), isolate=False)


def _seconds_per_step(step: TrainingStep, batches, count: int) -> tuple[float, tuple]:
    """Seconds per iteration of ``count`` steps on ``batches`` (an iterator) queued as the trainer queues them,
    with no read in between (the device synchronised before the first and after the last; the finite flags
    checked after); and the last ``(field, chi)`` batch."""
    flags, last = [], None
    synchronize(step.device)
    started = time.perf_counter()
    for _ in range(count):
        last = next(batches)
        result = step(*last)
        flags.append(result.finite)
    synchronize(step.device)
    seconds = (time.perf_counter() - started) / count
    require_finite(StepResult(result.parts, torch.stack(flags).all()))
    return seconds, last


def data_path_row(profile: str, device: str, iterations: int = 12, warmup: int = DATA_PATH_WARMUP) -> dict:
    """ELU16 in the default setting: seconds per iteration with maps rendered on the device, vs the bare step."""
    config = resolve(Config.from_profile(profile, device=device, activation=registry.RECOMMENDED_ACTIVATION,
                                         initial_channels=registry.PAPER_CHANNELS[0], cache_maps=False))
    dev = resolve_device(config.device)
    memory = PeakMemory(dev)
    model = build_model(config, dev)
    model.train()
    step = TrainingStep.from_config(config, model, PhysicsInformedLoss.from_config(config), dev)
    maps = SyntheticMaps.from_config(config, "train", dev, cache=False)
    plan = epoch_plan(config.seed, 1, config.n_train, config.map_size, config.patch_size, config.batch_size,
                      warmup + iterations)
    batches = iter(patch_batches(maps, config.patch_size, plan, num_workers=0))
    _seconds_per_step(step, batches, warmup)
    seconds, fixed = _seconds_per_step(step, batches, iterations)
    bare_seconds, _ = _seconds_per_step(step, iter([fixed] * iterations), iterations)
    ratio = seconds / bare_seconds
    return make_row(case="data_path", variant=config.variant, patch=config.patch_size, precision=config.precision,
                    memory_format=config.memory_format, seconds_per_iter=seconds, bare_seconds_per_iter=bare_seconds,
                    ratio=ratio, data_wait_fraction=max(0.0, 1 - bare_seconds / seconds), target=ITERATION_TARGET,
                    meets_target=ratio <= ITERATION_TARGET, iterations=iterations, **memory.read(), figure="ratio",
                    value=ratio, unit="x (iteration with data / bare step)")


# ---------------------------------------------------------------------------------------------- validation
def _validation_seconds(config: Config, dev: torch.device, maps, model) -> tuple[float, dict]:
    """Seconds per map of :func:`validate` over ``maps`` (after one warm-up pass) and its peak memory."""
    loss_fn = PhysicsInformedLoss.from_config(config)
    validate(model, maps, loss_fn, dev, config.precision, config.memory_format)
    memory = PeakMemory(dev)
    seconds, _ = timed(dev, validate, model, maps, loss_fn, dev, config.precision, config.memory_format)
    return seconds / len(maps), memory.read()


def validation_rows(profile: str, device: str, maps: int = 3):
    """``validation`` rows, one per variant (module docstring)."""
    for config in variant_configs(profile, device):
        dev = resolve_device(config.device)
        count, pinned = min(maps, config.n_val), validation_on_host(config, dev)
        render, val = timed(dev, SyntheticMaps.from_config, config, "val", dev, cache=True, n=count, pinned=pinned)
        model = build_model(config, dev)
        per_map, memory = _validation_seconds(config, dev, val, model)
        row = make_row(case="validation", variant=config.variant, patch=config.map_size, precision=config.precision,
                       memory_format=config.memory_format, seconds_per_iter=per_map, seconds_per_map=per_map,
                       render_seconds_per_map=render / count, n_val=config.n_val, seconds_per_epoch=per_map * config.n_val,
                       maps_kept="pinned host memory" if pinned else str(dev.type).upper() + " memory",
                       cache_gib=validation_bytes(config) / GIB, maps=count, **memory, figure="seconds_per_epoch",
                       value=per_map * config.n_val, unit="s/epoch (validation)")
        if config.variant == ELU16 and dev.type == "cuda":
            other = SyntheticMaps.from_config(config, "val", dev, cache=True, n=count, pinned=not pinned)
            row["other_placement_seconds_per_map"] = _validation_seconds(config, dev, other, model)[0]
            row["rerender_seconds_per_map"] = render / count + (row["other_placement_seconds_per_map"] if pinned else per_map)
        yield row


def memory_row(profile: str, device: str, rows: list[dict]) -> dict:
    """What the largest variant holds on the card at once (module docstring), from the measured rows."""
    steps = [r for r in rows if r.get("case") == "train_step" and r.get("default_setting") and r.get("peak_mem_mb")]
    data = next(r for r in rows if r.get("case") == "data_path" and not r.get("error"))
    vals = [r for r in rows if r.get("case") == "validation" and not r.get("error")]
    largest = max(steps, key=lambda r: r["peak_mem_mb"])
    config = next(c for c in variant_configs(profile, device) if c.variant == largest["variant"])
    dev = resolve_device(config.device)
    card = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else None
    elu16_step = next((r["peak_mem_mb"] for r in steps if r["variant"] == ELU16), largest["peak_mem_mb"])
    step, extra = largest["peak_mem_mb"] * 2**20, max(0.0, data["peak_mem_mb"] - elu16_step) * 2**20
    on_host = card is not None and validation_on_host(config, dev, card)
    cache = 0 if on_host else validation_bytes(config)
    inference = max((r["peak_mem_mb"] * 2**20 - (0 if r["maps_kept"] == "pinned host memory" else
                                                   r["maps"] * map_bytes(config.map_size)) for r in vals), default=0.0)
    need = max(step + extra, inference) + cache
    return make_row(case="memory", variant=config.variant, patch=config.patch_size, precision=config.precision,
                    peak_mem_mb=need / 2**20, step_peak_gib=step / GIB, data_path_extra_gib=extra / GIB,
                    validation_maps_gib=validation_bytes(config) / GIB,
                    validation_maps_kept="pinned host memory" if on_host else "GPU memory",
                    validation_inference_peak_gib=inference / GIB, card_gib=card / GIB if card else None,
                    fits=need <= 0.9 * card if card else None, smallest_card=smallest_card(config, int(step), int(extra)),
                    figure="peak_mem_gib", value=need / GIB, unit="GiB on the card at once (largest variant)")


# ---------------------------------------------------------------------------------------------- evaluation
def evaluation_rows(profile: str, device: str, maps: int = 2):
    """``evaluation`` rows per variant: seconds to score one test map on the device (after a warm-up pass)."""
    configs = variant_configs(profile, device)
    dev = resolve_device(configs[0].device)
    test = SyntheticMaps.from_config(configs[0], "test", dev, cache=True, n=min(maps, configs[0].n_test))
    for config in configs:
        model = build_model(config, dev).eval()
        invert = lambda field, m=model, c=config: infer(m, field, dev, c.precision, c.memory_format)  # noqa: E731
        score_maps({}, invert, test)
        seconds, _ = timed(dev, score_maps, {}, invert, test)
        yield make_row(case="evaluation", variant=config.variant, patch=config.map_size, precision=config.precision,
                       memory_format=config.memory_format, seconds_per_iter=seconds / len(test),
                       seconds_per_map=seconds / len(test), maps=len(test), figure="seconds_per_map",
                       value=seconds / len(test), unit="s per test map (inference + five device metrics)")


def evaluation_shared_row(profile: str, device: str) -> dict:
    """Seconds of one noisy test map, of a baseline's map (TKD on the device + metrics), and of the baselines'
    parameter search, which runs on the CPU: one validation map rendered there and one inversion with its NRMSE,
    scaled to the search's size (:func:`qsmrep.bench.projection.baseline_search_count`)."""
    config = resolve(Config.from_profile(profile, device=device))
    dev, physics = resolve_device(config.device), DipolePhysics.from_config(config)
    test = SyntheticMaps.from_config(config, "test", dev, cache=True, n=1)
    noisy = NoisyMaps(test, TEST_SNR)
    noise, _ = min(timed(dev, noisy.__getitem__, 0) for _ in range(2))  # the first also warms up
    tkd = baselines.inverter("TKD", physics, baselines.GRIDS["TKD"][0])
    score_maps({}, tkd, test)
    baseline, _ = timed(dev, score_maps, {}, tkd, test)
    render, val = timed("cpu", SyntheticMaps.from_config, config, "val", "cpu", cache=True, n=1)
    started = time.perf_counter()
    baselines.search("TKD", val, physics, grid=baselines.GRIDS["TKD"][:1], n_maps=1)
    inversion = time.perf_counter() - started
    renders = 2 * min(config.n_val, baselines.TUNE_MAPS)  # tune_for renders its maps for each test set
    search = baseline_search_count(config) * inversion + renders * render
    return make_row(case="evaluation_shared", patch=config.map_size, noise_seconds_per_map=noise,
                    baseline_seconds_per_map=baseline, cpu_render_seconds_per_map=render,
                    cpu_inversion_seconds=inversion, baseline_search_seconds=search, figure="baseline_search_seconds",
                    value=search, unit="s (baselines' parameter search on the CPU, both test sets)")


# ---------------------------------------------------------------------------------------------- the whole set
class _CardRows:
    """The rows so far, each labelled with the card (and TFLOP/s, fraction of peak, default setting) and handed
    to ``emit`` as it arrives."""

    def __init__(self, profile: str, device: str, emit=None):
        dev = resolve_device(device)
        self.cuda = dev.type == "cuda"
        self.card = card_name(dev)
        self.peak = card_peak_tflops(self.card) if self.cuda else None
        default = resolve(Config.from_profile(profile, device=device))
        self.default = (default.precision, default.memory_format == "channels_last")
        self.rows: list[dict] = []
        self.emit = emit

    def add(self, row: dict) -> None:
        row["card"] = self.card
        if row.get("gflops_per_s"):
            row["tflops_per_s"] = row["gflops_per_s"] / 1000
            row["fraction_of_peak"] = row["tflops_per_s"] / self.peak if self.peak else None
        if row.get("case") == "train_step" and row.get("precision"):
            row["default_setting"] = (row["precision"], row["memory_format"] == "channels_last_3d") == self.default
        self.rows.append(row)
        if self.emit is not None:
            self.emit([row])

    def part(self, case: str, rows, *args, **kwargs) -> None:
        """The rows of ``rows(*args, **kwargs)`` (a list or a generator), each added as it is made; an exception
        adds an ``error`` row for ``case`` and the run goes on (the GPU's cached memory is released)."""
        try:
            for row in rows(*args, **kwargs):
                self.add(row)
        except Exception as err:  # noqa: BLE001 - one failing part does not lose the others' rows
            self.add(make_row(case=case, error=f"{type(err).__name__}: {err}"))
        finally:
            if self.cuda:
                torch.cuda.empty_cache()


def paper_rows(profile: str = "paper", device: str = "cuda", use_monai: bool = True, iters: int = 5,
               data_iterations: int = 12, val_maps: int = 3, eval_maps: int = 2, emit=None,
               extras: bool = True) -> list[dict]:
    """Every row of the module docstring, in its order, each labelled with the card; ``emit([row])`` as each arrives.
    ``extras=False`` stops after the projection (no fp32, cuDNN, MONAI or generator rows)."""
    out = _CardRows(profile, device, emit)
    out.part("train_step", step_rows, profile, device, iters)
    out.part("data_path", lambda: [data_path_row(profile, device, data_iterations)])
    out.part("validation", validation_rows, profile, device, val_maps)
    out.part("memory", lambda: [memory_row(profile, device, out.rows)])
    out.part("evaluation", evaluation_rows, profile, device, eval_maps)
    out.part("evaluation_shared", lambda: [evaluation_shared_row(profile, device)])
    out.part("projection", lambda: projection_rows(profile, out.rows))
    if not extras:
        return out.rows
    if out.default != ("fp32", False):
        out.part("train_step", step_rows, profile, device, iters, "fp32")
    if out.cuda:
        out.part("train_step", step_rows, profile, device, iters, "cudnn_benchmark", variants=(ELU16, "elu32"))
    if use_monai:
        out.part("monai_step", monai_rows, profile, device, iters)
    config = Config.from_profile(profile)
    out.part("generator", generator_rows, sizes=(config.map_size,), repeats=2, device=device, batch=config.batch_size)
    return out.rows
