"""Up-front resource estimates for a profile (printed by ``run_all.sh`` before the ``paper`` profile).

Activation memory is measured, not guessed: one forward pass at a small patch size records the
number of elements of every module output (what autograd keeps for the backward pass, roughly),
which scales linearly with the number of voxels. Parameters, gradients and the two AdamW moments add
four copies of the weights. The result is an estimate (±30 %), labelled so wherever it is shown.

Beside the training step the GPU holds the data: the training maps of an iteration while they are
rendered (or the cached training maps) and the validation maps, which stay on the GPU where they
take at most a quarter of its memory and are kept in pinned host memory otherwise
(:func:`qsmrep.run.sources.validation_on_host`); the paper profile's 100 maps of 320³ take 29.5 GB.
:func:`gpu_memory_bytes` adds the three, and :func:`smallest_card` names the smallest card of
:data:`CARD_MEMORY_GB` on which they fit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from qsmrep import registry
from qsmrep.run.config import Config
from qsmrep.run.data import map_bytes
from qsmrep.run.sources import validation_bytes, validation_on_host
from qsmrep.study.plan import bench_dir
from qsmrep.core.unet import UNet3D, count_parameters

GIB = 2**30
#: GPU memory in GB (10⁹ bytes) by card, from the vendors' data sheets, smallest first
CARD_MEMORY_GB = (("A10 or RTX 4090", 24), ("A100 40GB", 40), ("L40S", 48), ("A100 80GB or H100 SXM/PCIe", 80),
                  ("H100 NVL", 94), ("H200", 141))
#: the part of a card's memory a run plans to fill (the rest: CUDA context, cuDNN workspaces, fragmentation)
USABLE_FRACTION = 0.9
#: GPU bytes per voxel of rendering one training map (χ, mask and field, the FFT's spectrum and its product with
#: the kernel, the renderer's temporaries; an estimate from the tensors :func:`qsmrep.core.synth.render_draws` makes)
RENDER_BYTES_PER_VOXEL = 24


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


def data_memory_bytes(config: Config) -> int:
    """GPU bytes of the training maps: all of them where ``cache_maps``, else one iteration's (``batch_size``
    maps) while they are rendered."""
    if config.cache_maps:
        return config.n_train * map_bytes(config.map_size)
    return config.batch_size * RENDER_BYTES_PER_VOXEL * config.map_size**3


def gpu_memory_bytes(config: Config, step_bytes: int, card_bytes: float, data_bytes: int | None = None) -> int:
    """GPU bytes of a run on a card of ``card_bytes``: the training step, the training maps (``data_bytes``, default
    :func:`data_memory_bytes`) and, where they stay on that card, the validation maps."""
    validation = 0 if validation_on_host(config, "cuda", card_bytes) else validation_bytes(config)
    return int(step_bytes + (data_memory_bytes(config) if data_bytes is None else data_bytes) + validation)


def smallest_card(config: Config, step_bytes: int, data_bytes: int | None = None) -> str | None:
    """The smallest card of :data:`CARD_MEMORY_GB` that fits the run within :data:`USABLE_FRACTION` of its memory,
    with where its validation maps are kept; None where none does."""
    for name, gb in CARD_MEMORY_GB:
        card = gb * 1e9
        need = gpu_memory_bytes(config, step_bytes, card, data_bytes)
        if need <= USABLE_FRACTION * card:
            where = "pinned host memory" if validation_on_host(config, "cuda", card) else "GPU memory"
            return f"{name} ({gb} GB): ~{need / GIB:.1f} GiB on the GPU, validation maps in {where}"
    return None


def _memory_lines(config: Config, step_bytes: int) -> tuple[list[str], list[str]]:
    """Lines on the data's memory and the smallest card; problems where this machine's GPU or RAM cannot hold it."""
    val = validation_bytes(config)
    lines = [f"validation maps: ~{val / GIB:.1f} GiB ({config.n_val} maps of {config.map_size}³: χ, field, mask), "
             f"on the GPU where that is ≤ 25 % of its memory, else in pinned host memory",
             f"training maps on the GPU: ~{data_memory_bytes(config) / GIB:.1f} GiB "
             f"({'all cached' if config.cache_maps else f'{config.batch_size} rendered per iteration'})",
             f"smallest card: {smallest_card(config, step_bytes) or 'none of ' + ', '.join(n for n, _ in CARD_MEMORY_GB)}"]
    problems = []
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        need = gpu_memory_bytes(config, step_bytes, total)
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, {total / GIB:.0f} GiB; this run ~{need / GIB:.1f} GiB")
        if need > USABLE_FRACTION * total:
            problems.append(f"the largest variant with its maps needs ~{need / GIB:.0f} GiB, the GPU has {total / GIB:.0f} GiB")
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if validation_on_host(config, "cuda", total) and val > 0.8 * ram:
            problems.append(f"the validation maps need ~{val / GIB:.0f} GiB of pinned host memory, the machine has {ram / GIB:.0f} GiB")
    return lines, problems


#: profiles that refuse to start without a GPU (the cpu and smoke profiles run anywhere)
GPU_PROFILES = ("paper",)


def estimate(profile: str, out: str | Path = "results", variants=registry.PAPER_VARIANTS, seeds: int = 1,
             arms=(registry.DEFAULT_ARM,)) -> tuple[list[str], list[str]]:
    """(report lines, problems) for training every variant of ``profile``; problems block the run.

    Memory per training step is the GPU measurement where one is committed, else the activation-count estimate;
    the data's memory and the smallest card that fits the largest variant follow (:func:`_memory_lines`)."""
    lines, problems = [], []
    disk_needed = 0
    worst_memory, worst_config = 0, None
    for arm in arms:
        for activation, channels in variants:
            config = Config.from_profile(profile, activation=activation, initial_channels=channels, norm=arm)
            measured = measured_memory_gib(config)
            memory = measured[0] * GIB if measured else training_memory_bytes(config)
            if memory >= worst_memory:
                worst_memory, worst_config = memory, config
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
    memory_lines, memory_problems = _memory_lines(worst_config, worst_memory)
    lines += memory_lines
    problems += memory_problems
    if not torch.cuda.is_available() and profile in GPU_PROFILES:
        problems.append("no CUDA GPU: the paper profile trains 6 models × 100 epochs of four 160³ patches; "
                        "on a CPU that takes weeks (use --profile cpu, or set QSMREP_ALLOW_CPU=1 to insist)")
    return lines, problems
