"""Training-step rows: the trainer's own step, timed on random inputs of realistic scale.

Every case times :class:`qsmrep.run.step.TrainingStep`, the step :func:`qsmrep.run.trainer.train` runs
(forward under autocast, :class:`~qsmrep.core.loss.PhysicsInformedLoss` with the field term, backward,
gradient clipping, finite check, AdamW step), built from the case's profile
(:func:`step_config`: learning rate, weight decay, ``grad_clip`` and loss settings are the training's)
on field patches of std 0.03 ppm and χ patches of std 0.1 ppm.

Row keys of ``train_step`` (our U-Net) and ``monai_step`` (MONAI's ``BasicUNet``, same widths, depth,
activation and normalisation; no dropout, transposed-convolution upsampling):

* ``seconds_per_iter``: median seconds of the timed iterations after warm-up (``seconds_min`` the
  fastest); warm-up runs at least ``warmup`` iterations, more while an iteration still takes under
  2/3 of the one before (oneDNN builds bf16/channels-last kernels over several), at most 10;
* ``voxels_per_s``: batch·patch³ / ``seconds_per_iter``;
* ``gflops_per_s``: the network's forward+backward FLOPs (:func:`step_flops`; the dipole FFTs of the
  loss and the optimiser are not counted) / ``seconds_per_iter`` / 1e9;
* ``peak_mem_mb``: CUDA max-allocated on a GPU; on a CPU each case runs in a fresh worker process
  (forkserver) and this is that process's peak RSS, ``peak_mem_increase_mb`` its increase over the
  idle worker (MiB);
* ``loss``: the total loss of the last timed step;
* on a CPU, ``tflops_per_s`` and ``fraction_of_peak`` of the cores' arithmetic peak for the case's precision
  (``peak_basis``: cores × clock × FLOP per cycle, :mod:`qsmrep.bench.cpu_peak`).

``monai_ratio`` rows (:func:`speed_ratio_rows`): MONAI fp32 seconds / our fastest setting's seconds at
the same variant and patch (target of issue 6: ≥ :data:`SPEED_TARGET`).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

import torch

from qsmrep import registry
from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.unet import ACTIVATIONS, UNet3D
from qsmrep.run import runtime
from qsmrep.run.config import Config
from qsmrep.run.step import StepResult, TrainingStep
from qsmrep.bench.cpu_peak import cpu_peak
from qsmrep.bench.rows import make_row
from qsmrep.bench.timing import PeakMemory, timed

DEPTH = 5
MONAI_PATCHES = (32, 48)
SPEED_TARGET = 1.8
FIELD_STD, CHI_STD = 0.03, 0.1  # ppm: the scale of the random inputs
# modules imported once by the forkserver, so that each isolated case starts without import time
PRELOAD = ["qsmrep.bench.steps", "qsmrep.run.step", "qsmrep.run.trainer", "qsmrep.core.loss", "qsmrep.run.runtime"]
MAX_WARMUP, FALLING = 10, 0.67  # warm-up cap; "still falling" = an iteration under 2/3 of the one before
# MONAI's names and arguments for our activations and normalisations (so both nets compute the same functions)
_MONAI_ACT = {"leaky_relu": "leakyrelu"}  # where MONAI's name differs
_MONAI_NORM = {"none": None, "batch": "batch", "instance": ("instance", {"affine": True}),
               "group": ("group", {"num_groups": 8})}


@dataclass(frozen=True)
class StepSpec:
    """One training-step case."""

    model: str = "qsmrep"  # qsmrep | monai
    activation: str = "elu"
    channels: int = 16
    depth: int = DEPTH
    patch: int = 32
    batch: int = 4
    precision: str = "fp32"
    channels_last: bool = False
    warmup: int = 4  # minimum warm-up iterations (more while the time still falls)
    iters: int = 5
    device: str = "cpu"
    seed: int = 0
    profile: str = "cpu"  # optimiser, clipping and loss settings (λ, norms, voxel size, B0) come from this profile
    norm: str = registry.DEFAULT_ARM  # the arm: normalisation of both networks

    @property
    def variant(self) -> str:
        return f"{self.activation}{self.channels}"

    @property
    def memory_format(self) -> str:
        """The layout as the rows name it: ``channels_last_3d`` or ``contiguous``."""
        return "channels_last_3d" if self.channels_last else "contiguous"

    @property
    def setting(self) -> str:
        return f"{self.precision}/{self.memory_format}"


def _model_config(spec: StepSpec) -> Config:
    return Config.from_profile(spec.profile, activation=spec.activation, initial_channels=spec.channels,
                               depth=spec.depth, norm=spec.norm)


def step_config(spec: StepSpec) -> Config:
    """The resolved training configuration of ``spec``: its profile with the spec's variant, depth, arm,
    seed, device, precision and memory format (``channels_last`` or ``contiguous``)."""
    return runtime.resolve(_model_config(spec).replace(
        seed=spec.seed, device=spec.device, precision=spec.precision,
        memory_format="channels_last" if spec.channels_last else "contiguous"))


def build_net(spec: StepSpec) -> torch.nn.Module:
    """The network of ``spec`` on the current default device (no ``.to``; use a device context)."""
    if spec.model == "qsmrep":
        return UNet3D(**_model_config(spec).model_kwargs())
    if spec.model == "monai":
        from monai.networks.nets import BasicUNet  # optional dependency (qsmrep[bench])

        if spec.depth != 5:
            raise ValueError("monai BasicUNet has a fixed depth of 5")
        c = spec.channels
        params = dict(ACTIVATIONS[spec.activation][1])
        name = _MONAI_ACT.get(spec.activation, spec.activation)
        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=(c, 2 * c, 4 * c, 8 * c, 16 * c, c),
                         act=(name, params) if params else name, norm=_MONAI_NORM[spec.norm], dropout=0.0,
                         upsample="deconv")
    raise ValueError(f"model: unknown {spec.model!r}")


def monai_available() -> bool:
    """True when MONAI's networks import."""
    try:
        import monai.networks.nets  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


# ---------------------------------------------------------------------------------------------- FLOPs
def count_flops(model: torch.nn.Module, shape, backward: bool = True) -> int:
    """FLOPs of ``model`` on an input of ``shape`` (forward, plus backward if asked), via FlopCounterMode.

    Counts the matrix products and convolutions (2 FLOPs per multiply-add), as
    :mod:`torch.utils.flop_counter` defines them; elementwise operations are not counted. The input
    does not require grad, so the backward of the first layer has no input gradient.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.randn(*shape, device=device)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


_FLOP_CACHE: dict[tuple, int] = {}


def step_flops(spec: StepSpec) -> int:
    """Forward+backward FLOPs of ``spec``'s network at its batch and patch (cached; meta device, no compute)."""
    key = (spec.model, spec.activation, spec.channels, spec.depth, spec.patch, spec.batch)
    if key not in _FLOP_CACHE:
        shape = (spec.batch, 1, spec.patch, spec.patch, spec.patch)
        try:
            with torch.device("meta"):
                model = build_net(spec)
            flops = count_flops(model, shape)
        except Exception:  # noqa: BLE001 - a layer without a meta kernel: count on the CPU with batch 1
            model = build_net(spec)
            flops = count_flops(model, (1, *shape[1:])) * spec.batch
        _FLOP_CACHE[key] = flops
    return _FLOP_CACHE[key]


# ---------------------------------------------------------------------------------------------- the timed step
def require_finite(result: StepResult) -> StepResult:
    """``result``; FloatingPointError when its step was not applied (a time without the optimiser step)."""
    if not result.finite:
        raise FloatingPointError("non-finite loss or gradient: the step changed no weight, its time is not a training step's")
    return result


def timed_step(step: TrainingStep, field: torch.Tensor, chi: torch.Tensor) -> tuple[float, StepResult]:
    """Seconds of one applied ``step(field, chi)`` (device synchronised before and after) and its result."""
    seconds, result = timed(step.device, step, field, chi)
    return seconds, require_finite(result)


def prepare_step(spec: StepSpec, device: torch.device) -> tuple[TrainingStep, torch.Tensor, torch.Tensor]:
    """The training step of ``spec`` (model seeded with ``spec.seed``, in its memory format) and random inputs."""
    config = step_config(spec)
    torch.manual_seed(config.seed)
    model = runtime.to_memory_format(build_net(spec).to(device), config.memory_format)
    model.train()
    step = TrainingStep.from_config(config, model, PhysicsInformedLoss.from_config(config), device)
    shape = (spec.batch, 1, spec.patch, spec.patch, spec.patch)
    return step, FIELD_STD * torch.randn(shape, device=device), CHI_STD * torch.randn(shape, device=device)


def time_step(spec: StepSpec) -> dict:
    """Run ``spec`` in this process: ``{"times", "warmup_times"`` (s per iteration), ``"peak_mem_mb",
    "peak_mem_increase_mb", "peak_mem_kind", "loss"}``. Raises FloatingPointError on a non-finite step."""
    device = runtime.resolve_device(spec.device)
    memory = PeakMemory(device)
    step, field, chi = prepare_step(spec, device)
    warm: list[float] = []
    while len(warm) < MAX_WARMUP and (len(warm) < spec.warmup or (len(warm) >= 2 and warm[-1] < FALLING * warm[-2])):
        warm.append(timed_step(step, field, chi)[0])
    times = []
    for _ in range(spec.iters):
        seconds, result = timed_step(step, field, chi)
        times.append(seconds)
    return {"times": times, "warmup_times": warm, **memory.read(), "loss": float(result.parts["total"])}


def _isolated_time_step(spec: StepSpec) -> dict:
    """:func:`time_step` in a fresh forkserver worker, so that its peak RSS is this case's alone.

    A worker killed (e.g. by the out-of-memory killer) raises ``BrokenProcessPool`` instead of hanging.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # takes effect when the server starts (first isolated case)
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return pool.submit(time_step, spec).result()


def _case_row(spec: StepSpec, device: torch.device) -> dict:
    """The row of ``spec`` before timing: what was run, where, and under which load."""
    row = make_row(case="train_step" if spec.model == "qsmrep" else "monai_step", variant=spec.variant,
                   patch=spec.patch, precision=spec.precision, memory_format=spec.memory_format, model=spec.model,
                   batch=spec.batch, depth=spec.depth, norm=spec.norm, device=str(device),
                   threads=torch.get_num_threads(), warmup=spec.warmup, iters=spec.iters)
    if hasattr(os, "getloadavg"):
        row["load_avg_1min"] = os.getloadavg()[0]  # > threads: another process competed for the cores
    if device.type == "cuda":
        row["tf32_conv"] = bool(torch.backends.cudnn.allow_tf32)
        row["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return row


def run_step_case(spec: StepSpec, isolate: bool | None = None) -> dict:
    """One row for a training-step case (module docstring). ``isolate`` (default: on a CPU) runs it in a
    fresh process; a failing case (e.g. out of memory) gives a row with ``error`` instead of raising."""
    device = runtime.resolve_device(spec.device)
    if isolate is None:
        isolate = device.type == "cpu"
    row = _case_row(spec, device)
    try:
        flops = step_flops(spec)
        result = _isolated_time_step(spec) if isolate else time_step(spec)
    except Exception as err:  # noqa: BLE001 - one failing case does not stop the run
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    seconds = statistics.median(result["times"])
    row.update(seconds_per_iter=seconds, voxels_per_s=spec.batch * spec.patch**3 / seconds,
               gflops_per_s=flops / seconds / 1e9, peak_mem_mb=result["peak_mem_mb"],
               peak_mem_increase_mb=result["peak_mem_increase_mb"], peak_mem_kind=result["peak_mem_kind"],
               gflop_per_iter=flops / 1e9, seconds_min=min(result["times"]), warmup_used=len(result["warmup_times"]),
               loss=result["loss"], figure="seconds_per_iter", value=seconds, unit="s/iter")
    if device.type == "cpu":
        row.update(cpu_peak_fraction(row["gflops_per_s"], spec.precision))
    return row


def cpu_peak_fraction(gflops_per_s: float, precision: str) -> dict:
    """``tflops_per_s``, ``fraction_of_peak`` and ``peak_basis`` of a CPU step (:mod:`qsmrep.bench.cpu_peak`)."""
    peak = cpu_peak(precision)
    row = {"tflops_per_s": gflops_per_s / 1000}
    if peak:
        row.update(fraction_of_peak=row["tflops_per_s"] / peak["peak_tflops"], peak_tflops=peak["peak_tflops"],
                   peak_basis=peak["peak_basis"])
    return row


def speed_ratio_rows(rows: list[dict]) -> list[dict]:
    """``monai_ratio`` rows: MONAI fp32 s/iter ÷ our fastest s/iter, per variant and patch
    (``speed_ratio_fp32``: ÷ our fp32 contiguous s/iter instead)."""
    out = []
    ours = [r for r in rows if r["case"] == "train_step" and r.get("seconds_per_iter")]
    for ref in rows:
        if ref["case"] != "monai_step" or not ref.get("seconds_per_iter"):
            continue
        same = [r for r in ours if r["variant"] == ref["variant"] and r["patch"] == ref["patch"]]
        if not same:
            continue
        best = min(same, key=lambda r: r["seconds_per_iter"])
        fp32 = [r for r in same if r["precision"] == "fp32" and r["memory_format"] == "contiguous"]
        ratio = ref["seconds_per_iter"] / best["seconds_per_iter"]
        out.append(make_row(
            case="monai_ratio", variant=ref["variant"], patch=ref["patch"], precision=best["precision"],
            memory_format=best["memory_format"], seconds_per_iter=best["seconds_per_iter"],
            voxels_per_s=best["voxels_per_s"], gflops_per_s=best["gflops_per_s"], peak_mem_mb=best["peak_mem_mb"],
            monai_seconds_per_iter=ref["seconds_per_iter"], speed_ratio=ratio,
            speed_ratio_fp32=ref["seconds_per_iter"] / fp32[0]["seconds_per_iter"] if fp32 else None,
            target=SPEED_TARGET, meets_target=ratio >= SPEED_TARGET,
            figure="speed_ratio", value=ratio, unit="x (MONAI fp32 s / ours s)"))
    return out


__all__ = ["StepSpec", "step_config", "build_net", "monai_available", "count_flops", "step_flops", "require_finite",
           "prepare_step",
           "timed_step", "time_step", "run_step_case", "speed_ratio_rows", "PRELOAD"]
