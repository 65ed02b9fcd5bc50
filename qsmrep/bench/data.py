"""The data side of ``bench``: the synthetic generator, the dipole forward model and the loader stall.

Rows:

* ``generator``: seconds per synthetic map (χ, mask and field) of :func:`qsmrep.core.synth.render_maps`
  at each size (``seconds_per_sample``, s/sample; ``voxels_per_s`` = size³ / s);
* ``forward_field``: throughput of :func:`qsmrep.core.physics.forward_field` on a batch of volumes
  (``voxels_per_s``, voxel/s; best of the repeats);
* ``loader_stall``: the fraction of training time the loop waits for data, from the ``history.csv``
  of a short real training run (``data_seconds / seconds``; target ≤ 5 %).
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import torch

from qsmrep.core.physics import forward_field
from qsmrep.core.synth import SynthSettings, render_maps
from qsmrep.run.config import Config
from qsmrep.run.runfolder import RunFolder
from qsmrep.run.runtime import resolve
from qsmrep.run.trainer import train
from qsmrep.bench.rows import make_row
from qsmrep.bench.timing import timed

STALL_TARGET = 0.05


def bench_generator(sizes=(64, 160, 320), repeats: int = 3, settings: SynthSettings | None = None,
                    device: str | torch.device = "cpu", batch: int = 1):
    """Seconds per map (χ, mask and field) of :func:`render_maps` for each size.

    Each timing is one ``render_maps`` call of ``batch`` fresh seeds on ``device`` divided by
    ``batch`` (CUDA synchronised before and after). One warm-up call per size (kernel caches),
    then ``repeats`` timed calls. Returns a list of dicts ``{"size", "repeats", "seconds_mean",
    "seconds_min", "seconds_first", "device", "batch"}`` (seconds per map).
    """
    device = torch.device(device)
    out = []
    for size in sizes:
        times = [timed(device, render_maps, size, range(r * batch, (r + 1) * batch), settings, device=device)[0] / batch
                 for r in range(repeats + 1)]
        first, times = times[0], times[1:]
        out.append({"size": size, "repeats": repeats, "seconds_mean": float(np.mean(times)),
                    "seconds_min": float(np.min(times)), "seconds_first": first,
                    "device": str(device), "batch": batch})
    return out


def bench_forward_field(size: int = 160, batch: int = 4, repeats: int = 3,
                        device: str | torch.device = "cpu") -> dict:
    """Throughput of :func:`forward_field` on a (batch, 1, size, size, size) float32 input.

    Returns ``{"size", "batch", "device", "seconds", "voxels_per_s"}`` (best of ``repeats``).
    """
    x = torch.randn(batch, 1, size, size, size, device=device)
    forward_field(x)  # warm-up / kernel cache
    best = min((timed(x.device, forward_field, x)[0] for _ in range(repeats)), default=math.inf)
    return {"size": size, "batch": batch, "device": str(device), "seconds": best,
            "voxels_per_s": batch * size**3 / best}


def generator_rows(sizes=(64, 160, 320), repeats: int = 3, device: str = "cpu", batch: int = 1) -> list[dict]:
    """``generator`` rows: seconds per synthetic map (χ and field) rendered on ``device``, ``batch`` maps per call."""
    rows = []
    for result in bench_generator(sizes=sizes, repeats=repeats, device=device, batch=batch):
        s = result["seconds_mean"]
        rows.append(make_row(case="generator", patch=result["size"], precision="fp32", seconds_per_iter=s,
                             voxels_per_s=result["size"] ** 3 / s, size=result["size"], repeats=result["repeats"],
                             device=str(device), batch=batch, seconds_per_sample=s, seconds_min=result["seconds_min"],
                             seconds_first=result["seconds_first"], figure="seconds_per_sample", value=s,
                             unit="s/sample"))
    return rows


def forward_field_rows(size: int = 160, batch: int = 4, repeats: int = 3, device: str = "cpu") -> list[dict]:
    """A ``forward_field`` row: voxels per second of the dipole forward model (best of ``repeats``)."""
    r = bench_forward_field(size=size, batch=batch, repeats=repeats, device=device)
    return [make_row(case="forward_field", patch=size, precision="fp32", seconds_per_iter=r["seconds"],
                     voxels_per_s=r["voxels_per_s"], batch=batch, device=r["device"], repeats=repeats,
                     figure="voxels_per_s", value=r["voxels_per_s"], unit="voxel/s")]


def stall_rows(profile: str = "cpu", epochs: int = 2, device: str = "auto", **overrides) -> list[dict]:
    """``loader_stall`` rows from a real short training run (temporary folder): ``data_seconds / seconds``.

    One row for the whole run and one for the last epoch (steady state).
    """
    overrides.setdefault("early_epoch", 0)  # the profile's early checkpoint may lie after the short run's end
    config = resolve(Config.from_profile(profile, epochs=epochs, device=device, **overrides))
    with tempfile.TemporaryDirectory(prefix="qsmrep-bench-") as tmp:
        wall, _ = timed(config.device, train, config, tmp, progress=False)
        history = RunFolder(tmp).history()
    rows = []
    for scope, part in (("run", history), ("last_epoch", history.iloc[[-1]])):
        seconds, data = float(part["seconds"].sum()), float(part["data_seconds"].sum())
        iters = int(part["iterations"].sum())
        fraction = data / seconds if seconds > 0 else float("nan")
        rows.append(make_row(
            case="loader_stall", variant=config.variant, patch=config.patch_size, precision=config.precision,
            memory_format=config.memory_format, seconds_per_iter=seconds / iters,
            voxels_per_s=iters * config.batch_size * config.patch_size**3 / seconds,
            peak_mem_mb=float(part["peak_mem_mb"].max()), peak_mem_kind="training run peak (history.csv)",
            scope=scope, profile=profile, epochs=len(part), num_workers=config.num_workers, data_seconds=data,
            seconds=seconds, wall_seconds=wall if scope == "run" else None, stall_fraction=fraction,
            target=STALL_TARGET, meets_target=fraction <= STALL_TARGET,
            figure="stall_fraction", value=fraction, unit="fraction of epoch time (incl. validation)"))
    return rows
