"""The ``default_step`` row: the ELU 16 training step in the setting a run of the profile adopts on this machine.

The row puts three things side by side, from the ``train_step`` rows of the same bench run: the seconds per
iteration of ELU 16 in the default setting (what ``precision``/``memory_format``/``compile`` ``auto`` resolve to
here, :func:`qsmrep.run.runtime.resolve`), the plain fp32 contiguous step of the same run, and the verdict of the
bf16 accuracy guard (:func:`qsmrep.run.runtime.cpu_bf16_sound` on a CPU: bf16 convolution output and gradients
within 2 % of fp32 and repeatable; a CPU that fails it trains in fp32). Where the profile has a step target
(:data:`STEP_TARGET_SECONDS`, on a CPU) the row says whether it is met.
"""

from __future__ import annotations

import torch

from qsmrep.run import runtime
from qsmrep.run.config import Config
from qsmrep.bench.rows import make_row

#: CPU step targets in s/iter for ELU 16 at the profile's patch and batch (issue 23: ≤ 0.10 s at 4 × 32³ on a
#: 2-core AMX machine)
STEP_TARGET_SECONDS = {"cpu": 0.10}
ACTIVATION, CHANNELS = "elu", 16
VARIANT = f"{ACTIVATION}{CHANNELS}"


def adopted_config(profile: str, device: str) -> Config:
    """The profile's configuration with ``auto`` settings (precision, memory format, compile) resolved for ``device``."""
    return runtime.resolve(Config.from_profile(profile).replace(device=device))


def guard_verdict(device: str) -> str:
    """What the bf16 accuracy guard says on ``device``, in words."""
    dev = runtime.resolve_device(device)
    if dev.type == "cuda":
        return "CUDA bf16 (native; no probe)" if runtime.native_bf16(dev) else "no native bf16: fp32"
    if not runtime.cpu_native_bf16():
        return f"no native bf16 (capability {torch.backends.cpu.get_cpu_capability()}): fp32"
    return ("passed: bf16 convolutions within 2 % of fp32 and repeatable" if runtime.cpu_bf16_sound()
            else "failed: bf16 convolutions disagree with fp32, the run trains in fp32")


def _row_of(rows: list[dict], precision: str, memory_format: str) -> dict | None:
    for row in rows:
        if (row["case"] == "train_step" and row.get("variant") == VARIANT and row.get("precision") == precision
                and row.get("memory_format") == memory_format and row.get("seconds_per_iter")):
            return row
    return None


def default_step_rows(rows: list[dict], profile: str, device: str) -> list[dict]:
    """One ``default_step`` row from the ``train_step`` rows in ``rows`` (none when ELU 16's default-setting
    step was not timed, e.g. cut by the ``--quick`` budget)."""
    config = adopted_config(profile, device)
    memory_format = "channels_last_3d" if config.memory_format == "channels_last" else "contiguous"
    default = _row_of(rows, config.precision, memory_format)
    if default is None:
        return []
    fp32 = _row_of(rows, "fp32", "contiguous")
    seconds = default["seconds_per_iter"]
    target = STEP_TARGET_SECONDS.get(profile) if runtime.resolve_device(device).type == "cpu" else None
    fp32_seconds = fp32["seconds_per_iter"] if fp32 else None
    verdict = guard_verdict(device)
    fp32_text = f"fp32 {fp32_seconds:.3f} s/iter" if fp32_seconds else "fp32 not timed"
    return [make_row(
        case="default_step", variant=VARIANT, patch=default["patch"], precision=config.precision,
        memory_format=memory_format, seconds_per_iter=seconds, voxels_per_s=default["voxels_per_s"],
        gflops_per_s=default["gflops_per_s"], peak_mem_mb=default["peak_mem_mb"],
        tflops_per_s=default.get("tflops_per_s"), fraction_of_peak=default.get("fraction_of_peak"),
        peak_basis=default.get("peak_basis"), compile=config.compile, fp32_seconds_per_iter=fp32_seconds,
        speedup_vs_fp32=fp32_seconds / seconds if fp32_seconds else None, guard=verdict, target=target,
        meets_target=None if target is None else seconds <= target,
        figure="seconds_per_iter", value=seconds,
        unit=f"s/iter in the default setting ({config.precision}/{memory_format}, compile {config.compile}); "
             f"{fp32_text}; guard {verdict}")]
