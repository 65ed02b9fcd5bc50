"""Where and how a run executes: device, precision, memory format, compilation, memory figures.

``auto`` settings of :class:`qsmrep.run.config.Config` are resolved here, once, for the machine at
hand (:func:`resolve`); a run folder stores the resolved values, so a run never silently continues
on hardware that would compute it differently.

Precision ``auto`` picks bf16 autocast only where the hardware computes bf16 natively: CUDA GPUs
with bf16 support, and CPUs with AMX tiles or AVX512-BF16 whose bf16 convolutions pass a quick
soundness probe against fp32 (:func:`cpu_bf16_sound`). Elsewhere (e.g. an AVX2-only CPU) oneDNN
emulates bf16 about 50× slower than fp32, so ``auto`` stays fp32 there. Memory format ``auto`` is
channels-last-3d together with bf16 (measured faster on both CPU and GPU) and contiguous with fp32
(channels-last alone gains nothing there). ``compile`` ``auto`` is off: ``torch.compile`` becomes a
default only where an end-to-end measurement shows the gain.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path

import torch

from qsmrep.run.config import Config


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ValueError for other names (``cpu``, ``cuda``, ``cuda:N`` only)
    and when CUDA is asked for but absent."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise ValueError(f"device: {name!r} is not one of auto, cpu, cuda (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but no CUDA device is available")
    return torch.device(name)


def cpu_bf16_unit() -> str | None:
    """What computes bf16 in hardware on this CPU: ``AMX`` (tiles), ``AVX512-BF16`` (instructions), or None."""
    for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        if getattr(torch.cpu, check, None) is not None and getattr(torch.cpu, check)():
            return name
    return None


def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16 instructions)."""
    return cpu_bf16_unit() is not None


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 natively (see the module docstring)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_native_bf16()


@functools.lru_cache(maxsize=1)
def cpu_bf16_sound(shapes=((3, 3, 3), (4, 4, 4), (8, 8, 8)), channels: int = 16, repeats: int = 2) -> bool:
    """True when this CPU's bf16 3³ convolution (output, input and weight gradients) agrees with fp32 within
    2 % and repeats bit-identically on inputs of ``shapes`` (the depths ≥ 3 the U-Net runs in bf16; thinner
    inputs run in fp32, see :class:`qsmrep.core.unet.DoubleConv`). A probe of a few milliseconds, against kernel
    bugs like the one that makes the bf16 weight gradient wrong at depth 2."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1)
    for shape in shapes:
        x = torch.randn(2, channels, *shape, generator=generator)
        grad_out = torch.randn(2, channels, *shape, generator=generator)
        results = []
        for precision in ("fp32", *["bf16"] * repeats):
            conv.zero_grad()
            xx = x.clone().requires_grad_(True)
            with autocast("cpu", precision):
                y = conv(xx)
            y.backward(grad_out.to(y.dtype))
            results.append([y.float().detach(), xx.grad.float(), conv.weight.grad.clone()])
        reference, first = results[0], results[1]
        for fast in results[1:]:
            for a, b, ref in zip(fast, first, reference):
                if not torch.equal(a, b) or not torch.isfinite(a).all() or (a - ref).norm() > 0.02 * ref.norm():
                    return False
    return True


def fast_bf16(device: torch.device) -> bool:
    """True when ``auto`` should pick bf16 on ``device``: native bf16, and on a CPU a sound one (:func:`cpu_bf16_sound`)."""
    return native_bf16(device) and (device.type == "cuda" or cpu_bf16_sound())


def resolve(config: Config) -> Config:
    """``config`` with every ``auto`` replaced by this machine's choice (device as ``cpu``/``cuda``)."""
    device = resolve_device(config.device)
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if fast_bf16(device) else "fp32"
    memory_format = config.memory_format
    if memory_format == "auto":
        memory_format = "channels_last" if precision == "bf16" else "contiguous"
    data_device = device.type if config.data_device == "auto" else resolve_device(config.data_device).type
    compile_mode = "off" if config.compile == "auto" else config.compile
    return config.replace(device=device.type, precision=precision, memory_format=memory_format,
                          data_device=data_device, compile=compile_mode)


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast context for the network (``precision="bf16"``), a no-op for fp32."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(tensor_or_module, memory_format: str):
    """``channels_last`` → channels-last-3d layout of a 5-D tensor or a module; else unchanged."""
    if memory_format != "channels_last":
        return tensor_or_module
    if isinstance(tensor_or_module, torch.Tensor):
        return tensor_or_module.contiguous(memory_format=torch.channels_last_3d)
    return tensor_or_module.to(memory_format=torch.channels_last_3d)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far in MiB: CUDA max allocated on a GPU, else peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine_label(device: torch.device | str = "cpu") -> str:
    """What a run's seconds on ``device`` are measured on, in one line: the GPU's name, or the CPU's model, its ATen
    capability, its bf16 unit and the threads torch uses (e.g. ``AMD EPYC, AVX512, AVX512-BF16, 1 thread``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    parts = [cpu_name(), torch.backends.cpu.get_cpu_capability(), cpu_bf16_unit() or "no native bf16",
             f"{threads} thread{'s' if threads > 1 else ''}"]
    return ", ".join(parts)


def hardware_summary() -> dict:
    """CPU name, ATen CPU capability, native bf16 on the CPU, and the GPU (or ``none``)."""
    return {
        "cpu": cpu_name(),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "cpu native bf16": cpu_native_bf16(),
        "cpu bf16 sound": cpu_native_bf16() and cpu_bf16_sound(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
