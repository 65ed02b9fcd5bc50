"""Wall-clock time and peak memory of measured work, the same way for every benchmark row.

A timing is ``time.perf_counter`` around the work, with the CUDA device synchronised before and
after, so queued kernels are counted where they run. Peak memory is CUDA max-allocated on a GPU and
the process's peak resident set size on a CPU (:func:`qsmrep.run.runtime.peak_memory_mb`), in MiB.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch

from qsmrep.run import runtime

T = TypeVar("T")


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device | str, work: Callable[..., T], /, *args, **kwargs) -> tuple[float, T]:
    """``(seconds, work(*args, **kwargs))``, ``device`` synchronised before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = work(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - started, result


def _rss_mb() -> float:
    """This process's current resident set size in MiB (``/proc/self/status``; NaN where unreadable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakMemory:
    """The peak memory of the work done between construction and :meth:`read`.

    On CUDA the allocator's peak is reset at construction; on a CPU the peak RSS cannot be reset, so
    the increase is taken over the RSS at construction (a fresh worker process makes it the case's own).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.kind = "cuda max allocated"
        else:
            self.base_mb = _rss_mb()
            self.kind = "process peak RSS"

    def read(self) -> dict:
        """``{"peak_mem_mb", "peak_mem_increase_mb", "peak_mem_kind"}`` (MiB)."""
        peak = runtime.peak_memory_mb(self.device)
        return {"peak_mem_mb": peak, "peak_mem_increase_mb": peak - self.base_mb, "peak_mem_kind": self.kind}
