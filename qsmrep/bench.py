"""``python -m qsmrep bench``: training-step, generator, forward-field and data-loader figures.

Cases (one row each; ``--json`` prints one JSON object per row on stdout, progress goes to stderr):

* ``train_step``: one training iteration as :func:`qsmrep.train.train` does it (forward under
  autocast, :class:`~qsmrep.loss.PhysicsInformedLoss` with the field term, backward, AdamW step)
  on random inputs of realistic scale (field std 0.03 ppm, χ std 0.1 ppm), for every variant of
  the paper (:data:`qsmrep.registry.PAPER_VARIANTS`, depth 5) at the profile's patch size and
  batch, in fp32, bf16 autocast and channels-last-3d (fp32 and bf16). Seconds per iteration are
  the median of the timed iterations after warm-up; voxels per second are batch·patch³ / s;
  GFLOP/s use the forward+backward FLOPs of the network counted once per model and shape with
  :class:`torch.utils.flop_counter.FlopCounterMode` (on the meta device: no compute; the dipole
  FFTs of the loss and the optimiser are not counted). Peak memory is CUDA max-allocated on a GPU;
  on a CPU each case runs in a fresh worker process (forkserver) and the row gives that process's
  peak resident set size (``peak_mem_mb``, ``peak_mem_kind = "process peak RSS"``) and its increase
  over the idle worker (``peak_mem_increase_mb``).
* ``monai_step``: the same step for MONAI's ``BasicUNet`` configured to the same widths, depth and
  activation and the profile's normalisation (batch norm by default; no dropout, transposed-convolution
  upsampling), fp32, at 32³ and 48³ patches (and the profile's); ``monai_ratio``: MONAI fp32 seconds / our fastest setting's
  seconds at the same variant and patch (target of issue 6: ≥ 1.8). Skipped with a note when
  ``monai`` is not installed (``pip install 'qsmrep[bench]'``) or with ``--no-monai``.
* ``generator``: seconds per synthetic sample (χ and field) at 64³, 160³, 320³
  (:func:`qsmrep.synth.bench_generator`).
* ``forward_field``: dipole forward-model throughput (:func:`qsmrep.synth.bench_forward_field`).
* ``loader_stall``: the fraction of training time the loop waits for data, from the
  ``history.csv`` of a short real training run of the ``cpu`` profile (``data_seconds / seconds``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import torch

from qsmrep import registry
from qsmrep.config import Config
from qsmrep.runtime import autocast, native_bf16, resolve_device
from qsmrep.unet import ACTIVATIONS

PAPER_ACTIVATIONS, PAPER_CHANNELS = registry.PAPER_ACTIVATIONS, registry.PAPER_CHANNELS
QUICK_BUDGET_SECONDS = 240  # --quick stops starting training-step cases after this, so it ends within 5 minutes
DEPTH = 5
MONAI_PATCHES = (32, 48)
SPEED_TARGET = 1.8
# modules imported once by the forkserver, so that each isolated case starts without import time
PRELOAD = ["qsmrep.bench", "qsmrep.train", "qsmrep.loss", "qsmrep.runtime"]
MAX_WARMUP, FALLING = 10, 0.67  # warm-up cap; "still falling" = an iteration under 2/3 of the one before
# (precision, channels_last) settings of the training step
SETTINGS = (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True))
BASE_KEYS = ("case", "variant", "patch", "precision", "memory_format", "seconds_per_iter", "voxels_per_s",
             "gflops_per_s", "peak_mem_mb")
# MONAI activation names for ours (parameters from our registry, so both nets use the same function)
_MONAI_ACT = {"leaky_relu": "leakyrelu"}  # where MONAI's name differs


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- specs
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
    profile: str = "cpu"  # loss settings (λ, norms, voxel size, B0) come from this profile
    norm: str = registry.DEFAULT_ARM  # the arm: normalisation of both networks

    @property
    def variant(self) -> str:
        return f"{self.activation}{self.channels}"

    @property
    def memory_format(self) -> str:
        return "channels_last_3d" if self.channels_last else "contiguous"

    @property
    def setting(self) -> str:
        return f"{self.precision}/{self.memory_format}"


_MONAI_NORM = {"none": None, "batch": "batch", "instance": ("instance", {"affine": True}),
               "group": ("group", {"num_groups": 8})}


def _activation_params(activation: str) -> dict:
    return dict(ACTIVATIONS[activation][1])


def build_net(spec: StepSpec) -> torch.nn.Module:
    """The network of ``spec`` on the current default device (no ``.to``; use a device context)."""
    if spec.model == "qsmrep":
        from qsmrep.unet import UNet3D

        config = Config.from_profile(spec.profile, activation=spec.activation, initial_channels=spec.channels,
                                     depth=spec.depth, norm=spec.norm)
        return UNet3D(**config.model_kwargs())
    if spec.model == "monai":
        from monai.networks.nets import BasicUNet

        if spec.depth != 5:
            raise ValueError("monai BasicUNet has a fixed depth of 5")
        c = spec.channels
        params = _activation_params(spec.activation)
        name = _MONAI_ACT.get(spec.activation, spec.activation)
        act = (name, params) if params else name
        norm = _MONAI_NORM[spec.norm]  # the same normalisation as ours
        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=(c, 2 * c, 4 * c, 8 * c, 16 * c, c),
                         act=act, norm=norm, dropout=0.0, upsample="deconv")
    raise ValueError(f"model: unknown {spec.model!r}")


def monai_available() -> bool:
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


# ---------------------------------------------------------------------------------------------- training step
def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_step(spec: StepSpec) -> dict:
    """Run ``spec`` in this process: ``{"times": [...], "peak_mem_mb", "peak_mem_increase_mb", "peak_mem_kind", "loss"}``."""
    from qsmrep.loss import PhysicsInformedLoss

    device = resolve_device(spec.device)
    cuda = device.type == "cuda"
    rss_before = _rss_mb()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    torch.manual_seed(spec.seed)
    model = build_net(spec).to(device)
    loss_fn = PhysicsInformedLoss.from_config(Config.from_profile(spec.profile))
    shape = (spec.batch, 1, spec.patch, spec.patch, spec.patch)
    field = 0.03 * torch.randn(shape, device=device)
    chi = 0.1 * torch.randn(shape, device=device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        field = field.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, spec.precision):
            pred = model(field)
        loss = loss_fn(pred, chi, field)
        loss.backward()
        optimizer.step()
        return loss

    def timed_step() -> tuple[float, torch.Tensor]:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, loss

    # Warm-up: at least spec.warmup iterations, more while the time still falls by over a third per
    # iteration (oneDNN builds bf16/channels-last kernels over several iterations), at most MAX_WARMUP.
    warm: list[float] = []
    while len(warm) < MAX_WARMUP and (len(warm) < spec.warmup or (len(warm) >= 2 and warm[-1] < FALLING * warm[-2])):
        warm.append(timed_step()[0])
    times = []
    for _ in range(spec.iters):
        seconds, loss = timed_step()
        times.append(seconds)
    value = float(loss.detach())
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        increase, kind = peak - base_alloc / 2**20, "cuda max allocated"
    else:
        peak = _peak_rss_mb()
        increase, kind = peak - rss_before, "process peak RSS"
    return {"times": times, "warmup_times": warm, "peak_mem_mb": peak, "peak_mem_increase_mb": increase, "peak_mem_kind": kind,
            "loss": value}


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


def run_step_case(spec: StepSpec, isolate: bool | None = None) -> dict:
    """One row for a training-step case. ``isolate`` (default: on a CPU) runs it in a fresh process."""
    device = resolve_device(spec.device)
    if isolate is None:
        isolate = device.type == "cpu"
    row = _row(case="train_step" if spec.model == "qsmrep" else "monai_step", variant=spec.variant, patch=spec.patch,
               precision=spec.precision, memory_format=spec.memory_format, model=spec.model, batch=spec.batch,
               depth=spec.depth, norm=spec.norm, device=str(device), threads=torch.get_num_threads(), warmup=spec.warmup,
               iters=spec.iters)
    if hasattr(os, "getloadavg"):
        row["load_avg_1min"] = os.getloadavg()[0]  # > threads: another process competed for the cores
    if device.type == "cuda":
        row["tf32_conv"] = bool(torch.backends.cudnn.allow_tf32)
        row["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    try:
        flops = step_flops(spec)
        result = _isolated_time_step(spec) if isolate else time_step(spec)
    except Exception as err:  # noqa: BLE001 - one failing case (e.g. out of memory) does not stop the run
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    seconds = statistics.median(result["times"])
    voxels = spec.batch * spec.patch**3
    row.update(seconds_per_iter=seconds, voxels_per_s=voxels / seconds, gflops_per_s=flops / seconds / 1e9,
               peak_mem_mb=result["peak_mem_mb"], peak_mem_increase_mb=result["peak_mem_increase_mb"],
               peak_mem_kind=result["peak_mem_kind"], gflop_per_iter=flops / 1e9, seconds_min=min(result["times"]),
               warmup_used=len(result["warmup_times"]), loss=result["loss"], figure="seconds_per_iter", value=seconds, unit="s/iter")
    return row


def _row(**values) -> dict:
    row = {key: None for key in BASE_KEYS}
    row.update(values)
    return row


def speed_ratio_rows(rows: list[dict]) -> list[dict]:
    """``monai_ratio`` rows: MONAI fp32 s/iter ÷ our fastest s/iter, per variant and patch."""
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
        row = _row(case="monai_ratio", variant=ref["variant"], patch=ref["patch"], precision=best["precision"],
                   memory_format=best["memory_format"], seconds_per_iter=best["seconds_per_iter"],
                   voxels_per_s=best["voxels_per_s"], gflops_per_s=best["gflops_per_s"], peak_mem_mb=best["peak_mem_mb"],
                   monai_seconds_per_iter=ref["seconds_per_iter"], speed_ratio=ratio,
                   speed_ratio_fp32=ref["seconds_per_iter"] / fp32[0]["seconds_per_iter"] if fp32 else None,
                   target=SPEED_TARGET, meets_target=ratio >= SPEED_TARGET,
                   figure="speed_ratio", value=ratio, unit="x (MONAI fp32 s / ours s)")
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- data side
def generator_rows(sizes=(64, 160, 320), repeats: int = 3, device: str = "cpu", batch: int = 1) -> list[dict]:
    """Seconds per synthetic map (χ and field) rendered on ``device``, ``batch`` maps per call."""
    from qsmrep.synth import bench_generator

    rows = []
    for result in bench_generator(sizes=sizes, repeats=repeats, device=device, batch=batch):
        s = result["seconds_mean"]
        rows.append(_row(case="generator", patch=result["size"], precision="fp32", seconds_per_iter=s,
                         voxels_per_s=result["size"] ** 3 / s, size=result["size"], repeats=result["repeats"],
                         device=str(device), batch=batch, seconds_per_sample=s, seconds_min=result["seconds_min"],
                         seconds_first=result["seconds_first"], figure="seconds_per_sample", value=s, unit="s/sample"))
    return rows


def forward_field_rows(size: int = 160, batch: int = 4, repeats: int = 3, device: str = "cpu") -> list[dict]:
    from qsmrep.synth import bench_forward_field

    r = bench_forward_field(size=size, batch=batch, repeats=repeats, device=device)
    return [_row(case="forward_field", patch=size, precision="fp32", seconds_per_iter=r["seconds"],
                 voxels_per_s=r["voxels_per_s"], batch=batch, device=r["device"], repeats=repeats,
                 figure="voxels_per_s", value=r["voxels_per_s"], unit="voxel/s")]


def stall_rows(profile: str = "cpu", epochs: int = 2, device: str = "auto", **overrides) -> list[dict]:
    """Data-loader stall from a real short training run (temporary folder): ``data_seconds / seconds``.

    One row for the whole run and one for the last epoch (steady state).
    """
    from qsmrep.runfolder import RunFolder
    from qsmrep.runtime import resolve
    from qsmrep.train import train

    overrides.setdefault("early_epoch", 0)  # the profile's early checkpoint may lie after the short run's end
    config = resolve(Config.from_profile(profile, epochs=epochs, device=device, **overrides))
    with tempfile.TemporaryDirectory(prefix="qsmrep-bench-") as tmp:
        t0 = time.perf_counter()
        train(config, tmp, progress=False)
        wall = time.perf_counter() - t0
        history = RunFolder(tmp).history()
    rows = []
    for scope, part in (("run", history), ("last_epoch", history.iloc[[-1]])):
        seconds, data = float(part["seconds"].sum()), float(part["data_seconds"].sum())
        iters = int(part["iterations"].sum())
        fraction = data / seconds if seconds > 0 else float("nan")
        rows.append(_row(case="loader_stall", variant=config.variant, patch=config.patch_size, precision=config.precision,
                         memory_format=config.memory_format,
                         seconds_per_iter=seconds / iters, voxels_per_s=iters * config.batch_size * config.patch_size**3 / seconds,
                         peak_mem_mb=float(part["peak_mem_mb"].max()), peak_mem_kind="training run peak (history.csv)",
                         scope=scope, profile=profile, epochs=len(part), num_workers=config.num_workers,
                         data_seconds=data, seconds=seconds, wall_seconds=wall if scope == "run" else None,
                         stall_fraction=fraction, target=0.05, meets_target=fraction <= 0.05,
                         figure="stall_fraction", value=fraction, unit="fraction of epoch time (incl. validation)"))
    return rows


# ---------------------------------------------------------------------------------------------- plan
def usable_settings(device: str) -> tuple[tuple[str, bool], ...]:
    """The (precision, channels_last) settings worth timing on ``device``: bf16 only where it is native
    (an AVX2-only CPU emulates bf16 about 50× slower than fp32: those cases would take minutes each)."""
    return SETTINGS if native_bf16(resolve_device(device)) else tuple(s for s in SETTINGS if s[0] == "fp32")


def step_specs(profile: str, quick: bool, device: str) -> list[StepSpec]:
    """Our training-step cases at the profile's patch size (all variants, the usable settings; fewer when quick)."""
    config = Config.from_profile(profile)
    base = StepSpec(patch=config.patch_size, batch=config.batch_size, device=device, profile=profile,
                    warmup=2 if quick else 4, iters=3 if quick else 5, norm=config.norm)
    usable = usable_settings(device)
    specs = []
    for activation in PAPER_ACTIVATIONS:
        for channels in PAPER_CHANNELS:
            settings = usable if not quick or activation in ("elu", "relu") else usable[:1]
            for precision, channels_last in settings:
                specs.append(replace(base, activation=activation, channels=channels, precision=precision,
                                     channels_last=channels_last))
    return specs


def _fastest_setting(rows: list[dict], variant: str) -> tuple[str, bool] | None:
    timed = [r for r in rows if r["case"] == "train_step" and r["variant"] == variant and r.get("seconds_per_iter")]
    if not timed:
        return None
    best = min(timed, key=lambda r: r["seconds_per_iter"])
    return best["precision"], best["memory_format"] == "channels_last_3d"


def comparison_specs(profile: str, quick: bool, device: str, done: list[dict]) -> list[StepSpec]:
    """Our extra cases at the MONAI patch sizes not yet measured, then MONAI fp32 at every comparison patch.

    Quick: elu only, and at a new patch size only the setting that was fastest at the profile's patch.
    """
    config = Config.from_profile(profile)
    patches = sorted({*MONAI_PATCHES, config.patch_size})
    base = StepSpec(batch=config.batch_size, device=device, profile=profile, warmup=2 if quick else 4,
                    iters=3 if quick else 5, norm=config.norm)
    activations = ("elu",) if quick else PAPER_ACTIVATIONS
    ours, monai = [], []
    for activation in activations:
        for channels in PAPER_CHANNELS:
            variant = f"{activation}{channels}"
            for patch in patches:
                if patch % 2 ** (DEPTH - 1):
                    continue
                measured = any(r["case"] == "train_step" and r["variant"] == variant and r["patch"] == patch for r in done)
                if not measured:
                    settings = list(usable_settings(device))
                    if quick:  # only the setting that was fastest at the profile's patch
                        settings = [_fastest_setting(done, variant) or ("fp32", False)]
                    for precision, channels_last in settings:
                        ours.append(replace(base, activation=activation, channels=channels, patch=patch,
                                            precision=precision, channels_last=channels_last))
                monai.append(replace(base, model="monai", activation=activation, channels=channels, patch=patch))
    return ours + monai


# ---------------------------------------------------------------------------------------------- output
def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def summary_table(rows: list[dict]) -> str:
    """A plain-text table of ``rows`` (one line per case; the headline figure with its unit last)."""
    header = ["case", "variant", "patch", "precision", "memory_format", "s/iter", "Mvoxel/s", "GFLOP/s", "peak MiB",
              "figure"]
    lines = [header]
    for r in rows:
        if r.get("error"):
            figure = f"ERROR {r['error']}"
        elif r.get("figure"):
            figure = f"{r['figure']} = {_fmt(r.get('value'), '.4g')} {r.get('unit', '')}".rstrip()
            if r.get("meets_target") is not None:
                figure += f" (target {'met' if r['meets_target'] else 'missed'})"
        else:
            figure = "-"
        mem = r.get("peak_mem_mb")
        lines.append([
            str(r.get("case")), _fmt(r.get("variant")), _fmt(r.get("patch")), _fmt(r.get("precision")),
            _fmt(r.get("memory_format")), _fmt(r.get("seconds_per_iter"), ".4g"),
            _fmt(r["voxels_per_s"] / 1e6 if r.get("voxels_per_s") else None, ".4g"), _fmt(r.get("gflops_per_s"), ".4g"),
            _fmt(mem, ".0f"), figure,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1])
    kinds = sorted({r["peak_mem_kind"] for r in rows if r.get("peak_mem_kind")})
    if kinds:
        out.append(f"peak MiB: {'; '.join(kinds)}. GFLOP/s: network forward+backward FLOPs (FlopCounterMode) / s.")
    return "\n".join(out)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _clean(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------- main
def save_rows(rows: list[dict], card: str, folder=None) -> str:
    """Write ``rows`` as JSON lines to ``results/bench/<card>-<date>.jsonl`` (atomically); returns the path."""
    import datetime as _dt
    import re

    from qsmrep import io
    from qsmrep.results import project_root

    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    path = (folder or project_root() / "results" / "bench") / f"{slug}-{date}.jsonl"
    io.write_text(path, "".join(json.dumps(_clean(r), default=_json_default) + "\n" for r in rows))
    return str(path)


def main(args) -> int:
    """Run the benchmark for ``args`` (``profile``, ``quick``, ``json``, ``no_monai``, ``save``); exit code 1 if a case failed."""
    profile, quick = args.profile, bool(args.quick)
    Config.from_profile(profile)  # ValueError on an unknown profile
    device = str(resolve_device("auto"))
    rows: list[dict] = []
    started = time.perf_counter()

    def emit(new: list[dict]) -> None:
        for row in new:
            rows.append(row)
            if args.json:
                print(json.dumps(_clean(row), default=_json_default), flush=True)
            status = f"ERROR {row['error']}" if row.get("error") else \
                f"{row.get('figure')} = {_fmt(row.get('value'), '.4g')} {row.get('unit', '')}"
            _log(f"{row['case']} {_fmt(row.get('variant'))} {_fmt(row.get('patch'))} {_fmt(row.get('precision'))} "
                 f"{_fmt(row.get('memory_format'))}: {status}  [{time.perf_counter() - started:.0f} s]")

    _log(f"profile {profile}, device {device}, {torch.get_num_threads()} threads, {'quick' if quick else 'full'} run, "
         f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        _log(f"warning: load average {os.getloadavg()[0]:.1f} before the run; other processes may distort the timings")
    use_monai = not getattr(args, "no_monai", False)
    if use_monai and not monai_available():
        _log("note: monai is not installed, MONAI BasicUNet reference skipped (pip install 'qsmrep[bench]')")
        use_monai = False
    elif not use_monai:
        _log("note: --no-monai, MONAI BasicUNet reference skipped")
    if use_monai and "monai.networks.nets" not in PRELOAD:
        PRELOAD.append("monai.networks.nets")

    if profile == "paper":
        from qsmrep.bench_paper import card_name, paper_rows

        if device != "cuda":
            _log("note: no CUDA GPU: the paper-scale rows (steps at 160³, data path, validation, projection) need one; "
                 "measuring the CPU data side at 320³ only, the GPU targets wait for a GPU")
            emit(generator_rows(sizes=(320,), repeats=1, device=device))
            emit(forward_field_rows(size=160, batch=4, repeats=2, device=device))
        else:
            paper_rows(profile, device, use_monai=use_monai, emit=emit)
        if getattr(args, "save", False):
            _log(f"rows saved to {save_rows(rows, card_name(resolve_device(device)))}")
        return _finish(args, rows, started)

    if not native_bf16(resolve_device(device)):
        note = (f"bf16 cases skipped: this {device.upper()} has no native bf16 (capability "
                f"{torch.backends.cpu.get_cpu_capability()}, no AMX or AVX512-BF16); emulated bf16 runs ~50x slower than fp32")
        _log(f"note: {note}")
        emit([_row(case="skipped", precision="bf16", figure="skipped", value=None, unit=note)])
    specs = step_specs(profile, quick, device)
    for i, spec in enumerate(specs, 1):
        if quick and time.perf_counter() - started > QUICK_BUDGET_SECONDS:
            emit([_row(case="skipped", variant=spec.variant, patch=spec.patch, precision=spec.precision,
                       memory_format=spec.memory_format, figure="skipped", value=None,
                       unit=f"--quick time budget of {QUICK_BUDGET_SECONDS} s reached")])
            continue
        _log(f"train step {i}/{len(specs)}: {spec.variant} patch {spec.patch} {spec.setting}")
        emit([run_step_case(spec)])

    if use_monai and not (quick and time.perf_counter() - started > QUICK_BUDGET_SECONDS):
        extra = comparison_specs(profile, quick, device, rows)
        for i, spec in enumerate(extra, 1):
            _log(f"comparison {i}/{len(extra)}: {spec.model} {spec.variant} patch {spec.patch} {spec.setting}")
            emit([run_step_case(spec)])
        emit(speed_ratio_rows(rows))

    _log("generator")
    emit(generator_rows(sizes=(64, 160) if quick else (64, 160, 320), repeats=1 if quick else 3, device=device))
    _log("forward field")
    ff_size = min(160, max(Config.from_profile(profile).patch_size, 64))
    emit(forward_field_rows(size=ff_size, batch=4, repeats=2 if quick else 5, device=device))
    stall_profile = profile if profile in ("cpu", "smoke") else "cpu"
    epochs = 1 if quick else 3
    _log(f"data-loader stall: {stall_profile}-profile training, {epochs} epoch(s)")
    try:
        emit(stall_rows(stall_profile, epochs=epochs, device=device, **({"iters_per_epoch": 8} if quick else {})))
    except Exception as err:  # noqa: BLE001
        emit([_row(case="loader_stall", error=f"{type(err).__name__}: {err}")])
    return _finish(args, rows, started)


def _finish(args, rows: list[dict], started: float) -> int:
    if not args.json:
        print(summary_table(rows))
    failed = [r for r in rows if r.get("error")]
    _log(f"done in {time.perf_counter() - started:.0f} s, {len(rows)} rows, {len(failed)} failed")
    return 1 if failed else 0


__all__ = ["main", "summary_table", "StepSpec", "run_step_case", "time_step", "count_flops", "step_flops",
           "speed_ratio_rows", "generator_rows", "forward_field_rows", "stall_rows", "step_specs", "comparison_specs"]
