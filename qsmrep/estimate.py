"""Up-front resource estimates for a profile (printed by ``run_all.sh`` before the ``paper`` profile).

Activation memory is measured, not guessed: one forward pass at a small patch size records the
number of elements of every module output (what autograd keeps for the backward pass, roughly),
which scales linearly with the number of voxels. Parameters, gradients and the two AdamW moments add
four copies of the weights. The result is an estimate (±30 %), labelled so wherever it is shown.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from qsmrep.config import Config
from qsmrep.unet import UNet3D, count_parameters

GIB = 2**30


def training_memory_bytes(config: Config, probe_size: int | None = None) -> int:
    """Estimated peak memory of one training step (batch ``config.batch_size`` of ``config.patch_size``³)."""
    model = UNet3D(**config.model_kwargs())
    probe = probe_size or 2 ** (config.depth - 1) * 2
    elements = 0

    def hook(_module, _inputs, output):
        nonlocal elements
        elements += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, 1, probe, probe, probe))
    for handle in handles:
        handle.remove()
    scale = config.batch_size * (config.patch_size / probe) ** 3
    bytes_per_value = 2 if config.precision == "bf16" else 4
    return int(elements * scale * bytes_per_value + 4 * 4 * count_parameters(model))


def checkpoint_bytes(config: Config) -> int:
    """Disk of one run: ``last.pt`` (weights + AdamW moments) and two weight-only checkpoints."""
    params = count_parameters(UNet3D(**config.model_kwargs()))
    return params * 4 * (3 + 2)


def estimate(profile: str, out: str | Path = "results", variants=((a, c) for c in (16, 32) for a in ("relu", "leaky_relu", "elu")),
             seeds: int = 1) -> tuple[list[str], list[str]]:
    """(report lines, problems) for training every variant of ``profile``; problems block the run."""
    lines, problems = [], []
    variants = list(variants)
    disk_needed = 0
    worst_memory = 0
    for activation, channels in variants:
        config = Config.from_profile(profile, activation=activation, initial_channels=channels)
        memory = training_memory_bytes(config)
        worst_memory = max(worst_memory, memory)
        disk_needed += checkpoint_bytes(config) * seeds
        lines.append(f"{config.variant}: ~{memory / GIB:.1f} GiB per training step (estimate), "
                     f"{count_parameters(UNet3D(**config.model_kwargs())) / 1e6:.1f} M parameters")
    base = Path(out)
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free
    lines.append(f"disk: ~{disk_needed / GIB:.1f} GiB of checkpoints needed, {free / GIB:.0f} GiB free at {base}")
    if disk_needed > 0.9 * free:
        problems.append(f"not enough disk: ~{disk_needed / GIB:.1f} GiB needed, {free / GIB:.1f} GiB free")
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, {total / GIB:.0f} GiB")
        if worst_memory > total:
            problems.append(f"the largest variant needs ~{worst_memory / GIB:.0f} GiB, the GPU has {total / GIB:.0f} GiB")
    else:
        problems.append("no CUDA GPU: the paper profile trains 6 models × 100 epochs of four 160³ patches; "
                        "on a CPU that takes weeks (use --profile cpu, or set QSMREP_ALLOW_CPU=1 to insist)")
    return lines, problems
