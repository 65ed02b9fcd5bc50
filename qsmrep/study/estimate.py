"""Up-front resource estimates for a profile (printed by ``run_all.sh`` before the ``paper`` profile).

Activation memory is measured, not guessed: one forward pass at a small patch size records the
number of elements of every module output (what autograd keeps for the backward pass, roughly),
which scales linearly with the number of voxels. Parameters, gradients and the two AdamW moments add
four copies of the weights. The result is an estimate (±30 %), labelled so wherever it is shown.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from qsmrep import registry
from qsmrep.run.config import Config
from qsmrep.study.plan import bench_dir
from qsmrep.core.unet import UNet3D, count_parameters

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
    bytes_per_value = 4 if config.precision == "fp32" else 2  # auto is bf16 on a GPU
    return int(elements * scale * bytes_per_value + 4 * 4 * count_parameters(model))


def checkpoint_bytes(config: Config) -> int:
    """Disk of one run: ``last.pt`` (weights + AdamW moments) and two weight-only checkpoints."""
    params = count_parameters(UNet3D(**config.model_kwargs()))
    return params * 4 * (3 + 2)


def read_bench_rows(folder: str | Path) -> list[dict]:
    """Every row of the committed benchmark files ``<folder>/*.jsonl`` (one JSON object per line, as
    ``python -m qsmrep bench --save`` writes them), each with the ``file`` it came from; files in name order."""
    rows = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows += [{**json.loads(line), "file": path.name} for line in path.read_text().splitlines() if line.strip()]
    return rows


def measured_memory_gib(config: Config, bench_folder: str | Path | None = None) -> tuple[float, str] | None:
    """Peak GPU memory of ``config``'s training step from committed benchmark rows, with the card's name.

    Reads :func:`read_bench_rows` of ``results/bench/`` (rows of ``python -m qsmrep bench --json`` measured on a
    GPU): the ``train_step`` row of the same variant, patch, batch and precision (auto = bf16 with channels-last).
    None where nothing was measured."""
    precision = "bf16" if config.precision == "auto" else config.precision
    best = None
    for row in read_bench_rows(bench_folder or bench_dir()):
        if (row.get("case") == "train_step" and str(row.get("device", "")).startswith("cuda")
                and row.get("variant") == config.variant and row.get("patch") == config.patch_size
                and row.get("batch") == config.batch_size and row.get("precision") == precision
                and row.get("norm", registry.DEFAULT_ARM) == config.norm and row.get("peak_mem_mb")):
            best = (row["peak_mem_mb"] / 1024, row.get("card", "GPU"))
    return best


#: profiles that refuse to start without a GPU (the cpu and smoke profiles run anywhere)
GPU_PROFILES = ("paper",)


def estimate(profile: str, out: str | Path = "results", variants=registry.PAPER_VARIANTS, seeds: int = 1,
             arms=(registry.DEFAULT_ARM,)) -> tuple[list[str], list[str]]:
    """(report lines, problems) for training every variant of ``profile``; problems block the run.

    Memory per training step is the GPU measurement where one is committed, else the activation-count estimate."""
    lines, problems = [], []
    disk_needed = 0
    worst_memory = 0
    for arm in arms:
        for activation, channels in variants:
            config = Config.from_profile(profile, activation=activation, initial_channels=channels, norm=arm)
            measured = measured_memory_gib(config)
            memory = measured[0] * GIB if measured else training_memory_bytes(config)
            worst_memory = max(worst_memory, memory)
            disk_needed += checkpoint_bytes(config) * seeds
            how = f"measured on {measured[1]}" if measured else "estimate"
            lines.append(f"{config.variant} ({arm}): ~{memory / GIB:.1f} GiB per training step ({how}), "
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
    elif profile in GPU_PROFILES:
        problems.append("no CUDA GPU: the paper profile trains 6 models × 100 epochs of four 160³ patches; "
                        "on a CPU that takes weeks (use --profile cpu, or set QSMREP_ALLOW_CPU=1 to insist)")
    return lines, problems
