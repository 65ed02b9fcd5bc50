"""Provenance of a rendered report: commit, date, machine, CPU/GPU and library versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

from qsmrep.run.gitinfo import code_changes, git
from qsmrep.run.runtime import hardware_summary


def _memory() -> str:
    try:
        kib = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        return ""
    return f"{kib / 2**20:.0f} GiB"


def provenance(profile: str, repo: str | Path = ".") -> dict:
    """Commit (flagged when the code, not the run's outputs, has uncommitted changes), date, machine, CPU
    (model, cores, ATen capability, native bf16), memory, GPU, Python, torch and its thread count."""
    import torch

    hardware = hardware_summary()
    return {
        "profile": profile,
        "commit": git(repo, "rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if code_changes(repo) else ""),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} ({platform.system()} {platform.machine()})",
        "cpu": f"{hardware['cpu']}, {os.cpu_count()} cores",
        "cpu capability (ATen)": hardware["cpu capability"],
        "cpu native bf16 (AMX or AVX512-BF16)": "yes" if hardware["cpu native bf16"] else "no",
        "memory": _memory(),
        "gpu": hardware["gpu"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
    }
