"""The arithmetic peak of this machine's CPU cores, to put a training step's FLOP/s beside it.

    peak = cores × clock × FLOP per cycle and core

* cores: the CPUs torch may use (``torch.get_num_threads()``, at most ``os.cpu_count()``);
* clock: the nominal clock, ``cpu MHz`` of ``/proc/cpuinfo`` (a VM reports its nominal clock there; turbo
  clocks are not counted);
* FLOP per cycle and core, a multiply-add counted as two FLOPs (the convention of the step's FLOP count):

  ==============  ====================================================================  ========
  instruction     how                                                                   FLOP/cyc
  ==============  ====================================================================  ========
  AMX (bf16)      one TMUL, 16 × 32 × 16 bf16 multiply-adds per 16 cycles = 1024 MAC     2048
  AVX512-BF16     two 512-bit ``vdpbf16ps`` per cycle, 16 lanes × 2 bf16 multiply-adds      128
  AVX-512 (fp32)  two 512-bit FMA units, 16 lanes each                                    64
  AVX2 (fp32)     two 256-bit FMA units, 8 lanes each                                     32
  ==============  ====================================================================  ========

  bf16 uses the best bf16 instruction the CPU has (none: the fp32 figure, oneDNN then emulates bf16);
  fp32 the widest FMA. These are Sapphire Rapids' per-core throughputs; a CPU that issues fewer per cycle
  (Zen 4 runs its 512-bit instructions on 256-bit units: about half of the AVX-512 rows) has a
  lower real peak, and the fraction printed for it is then an underestimate.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

#: FLOP per cycle and core by instruction (module docstring)
FLOP_PER_CYCLE = {"amx_bf16": 2048, "avx512_bf16": 128, "avx512f": 64, "avx2": 32}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The ``flags`` of the first CPU of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_clock_ghz(cpuinfo: str | None = None) -> float | None:
    """The nominal clock (GHz) of the first CPU of ``/proc/cpuinfo``; None where it is not there."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)$", text, re.MULTILINE)
    return float(match.group(1)) / 1000 if match else None


def flop_per_cycle(precision: str, flags: set[str]) -> tuple[int, str] | None:
    """(FLOP per cycle and core, the instruction) for ``precision`` (``fp32`` or ``bf16``) on a CPU with ``flags``."""
    order = ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if precision == "bf16" else ("avx512f", "avx2")
    for flag in order:
        if flag in flags:
            return FLOP_PER_CYCLE[flag], flag
    return None


def cpu_peak(precision: str, cpuinfo: str | None = None, cores: int | None = None) -> dict | None:
    """``{"peak_tflops", "peak_basis"}`` of this CPU for ``precision``, or None where flags or clock are unknown."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    clock, per_cycle = cpu_clock_ghz(text), flop_per_cycle(precision, cpu_flags(text))
    if clock is None or per_cycle is None:
        return None
    cores = cores or min(torch.get_num_threads(), os.cpu_count() or 1)
    flops, instruction = per_cycle
    return {"peak_tflops": cores * clock * flops / 1000,
            "peak_basis": f"{cores} cores × {clock:.2f} GHz × {flops} FLOP/cycle ({instruction})"}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
