"""Where a training step's time goes: a ``torch.profiler`` breakdown of the step by kind of operation.

``python -m qsmrep bench --breakdown`` profiles the ELU 16 step on the CPU at the profile's batch and patch, in the
setting a run adopts here (:func:`qsmrep.run.runtime.resolve`) and, where that is not plain fp32, in fp32 contiguous
beside it. Each operation's *self* CPU time (its time less that of the operations it calls, so nothing is counted
twice) is summed into one of :data:`CATEGORIES` by :func:`category`, over ``iters`` profiled steps after warm-up.

Row keys of ``step_breakdown`` (one row per setting and category, the largest first):

* ``category``; ``ms_per_iter``: its self CPU time per step (ms); ``share``: of all the step's self time;
* ``calls_per_iter`` and ``top_ops``: the operations behind it, the three largest with their ms per step;
* ``seconds_per_iter``: the profiled step's wall time (median), the same on every row of the setting.

On a CPU the autograd engine runs the backward pass on the calling thread, so the self times add up to about the
step's wall time; the intra-op threads of one operation are inside that operation's time.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from qsmrep.core.unet import ACTIVATIONS
from qsmrep.run import runtime
from qsmrep.bench.headline import ACTIVATION, CHANNELS, adopted_config
from qsmrep.bench.plan import base_spec
from qsmrep.bench.rows import make_row
from qsmrep.bench.steps import StepSpec, prepare_step, timed_step

# the U-Net's activations as aten operations (ReLU's backward is aten::threshold_backward) and as autograd nodes
_ACTIVATION_OPS = (rf"aten::({'|'.join([*ACTIVATIONS, 'threshold'])})(_backward)?_?$"
                   rf"|({'|'.join(name.title().replace('_', '') for name in ACTIVATIONS)})Backward")
#: (category, pattern on the operation's name), the first that matches wins; operations inside
#: ``Optimizer.step`` or ``Optimizer.zero_grad`` are ``optimiser (AdamW)`` whatever their name
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("convolution backward", r"conv\w*backward|ConvolutionBackward"),
    ("convolution forward", r"conv"),
    ("normalisation", r"(batch|instance|group|layer)_?norm|BatchNorm"),
    ("activation", _ACTIVATION_OPS),
    ("dipole FFTs (loss)", r"fft"),
    ("pooling and concatenation", r"max_pool|MaxPool|aten::cat\b|CatBackward"),
    ("casts and layout copies", r"aten::(copy_|_to_copy|to|clone|contiguous)$|ToCopyBackward"),
)
OPTIMISER, OTHER = "optimiser (AdamW)", "other (elementwise, clipping, loss terms, allocation)"
_PATTERNS = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


def category(name: str, ancestors: tuple[str, ...] = ()) -> str:
    """The category of an operation called ``name`` whose enclosing profiler ranges are ``ancestors``."""
    if any(a.startswith("Optimizer.") for a in (name, *ancestors)):
        return OPTIMISER
    for label, pattern in _PATTERNS:
        if pattern.search(name):
            return label
    return OTHER


def _ancestors(event) -> tuple[str, ...]:
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return tuple(names)


def profile_step(spec: StepSpec, iters: int = 3) -> dict:
    """Profile ``iters`` steps of ``spec`` after warm-up: ``{"seconds_per_iter", "categories"}``, where
    ``categories`` maps each category to ``{"ms", "calls", "ops": {op: ms}}`` per step."""
    device = runtime.resolve_device(spec.device)
    step, field, chi = prepare_step(spec, device)
    for _ in range(max(spec.warmup, 2)):
        timed_step(step, field, chi)
    seconds = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            seconds.append(timed_step(step, field, chi)[0])
    totals: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "calls": 0, "ops": defaultdict(float)})
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU or event.self_cpu_time_total <= 0:
            continue
        label = category(event.name, _ancestors(event))
        ms = event.self_cpu_time_total / 1000 / iters
        totals[label]["ms"] += ms
        totals[label]["calls"] += 1
        totals[label]["ops"][event.name] += ms
    for entry in totals.values():
        entry["calls"] /= iters
    return {"seconds_per_iter": statistics.median(seconds), "categories": dict(totals)}


def breakdown_specs(profile: str, device: str, quick: bool = False) -> list[StepSpec]:
    """ELU 16 at the profile's batch and patch in the setting a run adopts on ``device``, then fp32 contiguous
    where that setting differs (not with ``quick``)."""
    config = adopted_config(profile, device)
    base = replace(base_spec(profile, quick=False, device=device), activation=ACTIVATION, channels=CHANNELS)
    adopted = replace(base, precision=config.precision, channels_last=config.memory_format == "channels_last")
    plain = replace(base, precision="fp32", channels_last=False)
    return [adopted] if quick or adopted == plain else [adopted, plain]


def breakdown_rows(spec: StepSpec, iters: int = 3) -> list[dict]:
    """The ``step_breakdown`` rows of ``spec`` (module docstring), the largest category first."""
    result = profile_step(spec, iters)
    categories = result["categories"]
    total = sum(entry["ms"] for entry in categories.values())
    rows = []
    for label, entry in sorted(categories.items(), key=lambda item: -item[1]["ms"]):
        top = sorted(entry["ops"].items(), key=lambda item: -item[1])[:3]
        rows.append(make_row(
            case="step_breakdown", variant=spec.variant, patch=spec.patch, precision=spec.precision,
            memory_format=spec.memory_format, seconds_per_iter=result["seconds_per_iter"], category=label,
            ms_per_iter=entry["ms"], share=entry["ms"] / total, calls_per_iter=entry["calls"],
            top_ops=", ".join(f"{name} {ms:.1f}" for name, ms in top), threads=torch.get_num_threads(),
            batch=spec.batch,
            figure="share", value=entry["ms"] / total, unit=f"of the step's self CPU time: {label}"))
    return rows


def _setting(row: dict) -> tuple:
    return row["variant"], row["batch"], row["patch"], row["precision"], row["memory_format"]


def breakdown_table(rows: list[dict]) -> str:
    """The ``step_breakdown`` rows of ``rows`` as a plain-text table, one block per setting."""
    mine = [r for r in rows if r["case"] == "step_breakdown"]
    lines = []
    for setting in dict.fromkeys(map(_setting, mine)):
        block = [r for r in mine if _setting(r) == setting]
        variant, batch, patch, precision, memory_format = setting
        lines.append(f"{variant}, batch {batch} x {patch}^3, {precision}/{memory_format}, {block[0]['threads']} "
                     f"threads: {block[0]['seconds_per_iter']:.3f} s per profiled step, self CPU time "
                     f"{sum(r['ms_per_iter'] for r in block):.0f} ms per step")
        width = max(len(r["category"]) for r in block)
        lines += [f"  {r['category']:<{width}}  {r['ms_per_iter']:8.1f} ms  {100 * r['share']:5.1f} %   {r['top_ops']}"
                  for r in block]
    return "\n".join(lines)


__all__ = ["CATEGORIES", "OPTIMISER", "OTHER", "category", "profile_step", "breakdown_specs", "breakdown_rows",
           "breakdown_table"]
