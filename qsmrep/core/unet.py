"""The 3D U-Net of the paper with a selectable activation and width.

"Standard U-Net" (Ronneberger et al. 2015) in 3D, as the paper states, five levels deep:

* encoder level l (l = 0 … depth−1) has ``initial_channels · 2^l`` channels and two 3×3×3
  convolutions (padding 1), each followed by the activation; 2×2×2 max-pooling between levels;
* decoder: 2×2×2 transposed convolution (stride 2) halving the channels, concatenation with the
  encoder skip of the same level, two 3×3×3 convolutions with the activation;
* a final 1×1×1 linear convolution to one output channel (χ in ppm).

Choices where the paper is silent (all settings): the normalisation is the study's *arm*
(:data:`qsmrep.registry.ARMS`). ``norm="none"`` is the "standard U-Net" the paper names and cites,
Ronneberger et al. 2015, which has no normalisation layers; ``norm="batch"`` (the default) puts batch
normalisation after each convolution, before the activation, as the 3D U-Net of Çiçek et al. 2016
and the QSM networks the paper builds on (QSMnet, QSMGAN). Batch normalisation re-centres every
pre-activation and so removes most "dying ReLU" units, the mechanism of the paper's discussion;
both arms are trained and reported side by side. The default is batch because, at the ``cpu``
profile's scale, the standard U-Net's leaky ReLU models blow up on full-size maps in 6 of 8 runs
(see :data:`qsmrep.registry.ARMS` and the committed report). He initialisation
(Kaiming-normal weights with std √(2/fan-in), zero biases), which Ronneberger et al. prescribe for
the U-Net the paper cites. Measured here: without normalisation, He-initialised ELU networks start
with outputs about ten times the scale of the target (ELU's positive mean compounds over the
layers) while ReLU networks start at the target's scale; the ELU networks recover within a few
epochs and then learn faster than with PyTorch's default initialisation (``init="default"``,
Kaiming-uniform with a = √5), whose outputs start near zero and learn slowly for every activation.
Inputs whose spatial size is not a multiple of 2^(depth−1) are zero-padded at the far end and the
output is cropped back to the input size.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from qsmrep import registry

# name → (layer class, default parameters). Leaky slope 0.2 as QSMGAN (paper: "α=-0.2"), ELU α = 1.
ACTIVATIONS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "relu": (nn.ReLU, {}),
    "leaky_relu": (nn.LeakyReLU, {"negative_slope": 0.2}),
    "elu": (nn.ELU, {"alpha": 1.0}),
    "gelu": (nn.GELU, {}),
    "silu": (nn.SiLU, {}),
    "prelu": (nn.PReLU, {"num_parameters": 1, "init": 0.25}),
    "mish": (nn.Mish, {}),
}


ActivationSpec = Union[str, tuple[str, dict[str, Any]]]


def _split_spec(spec: ActivationSpec, params: dict | None = None) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        name, given = spec, {}
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        name, given = spec[0], dict(spec[1])
    else:
        raise ValueError(f"activation: expected a name or (name, params), got {spec!r}")
    given.update(params or {})
    key = registry.activation_key(name)
    if key not in ACTIVATIONS:
        raise ValueError(f"activation: unknown {name!r}{registry.did_you_mean(key, ACTIVATIONS)}; "
                         f"valid names: {', '.join(ACTIVATIONS)}")
    return key, given


def make_activation(spec: ActivationSpec, params: dict | None = None) -> nn.Module:
    """A new activation layer from ``"elu"``, ``("elu", {"alpha": 0.5})`` or name plus ``params``.

    Given parameters override the registry defaults; an unknown name or parameter raises
    ValueError (with the nearest valid name).
    """
    key, given = _split_spec(spec, params)
    cls, defaults = ACTIVATIONS[key]
    kwargs = {**defaults, **given}
    for name, value in given.items():
        if ":" in str(name):
            raise ValueError(f"activation: parameter {name!r} of {key!r}: in YAML write a space after the colon "
                             f"({str(name).replace(':', ': ', 1)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"activation: parameter {name} of {key!r} must be a finite number, got {value!r}")
    if key == "leaky_relu" and not 0 <= kwargs.get("negative_slope", 0) < 1:
        raise ValueError(f"activation: leaky_relu negative_slope must be in [0, 1), got {kwargs['negative_slope']!r}")
    if key == "elu" and not kwargs.get("alpha", 1) > 0:
        raise ValueError(f"activation: elu alpha must be > 0, got {kwargs['alpha']!r}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"activation: bad parameters {given} for {key!r} ({err})") from None


def check_activation(spec: ActivationSpec, params: dict | None = None) -> None:
    """Raise ValueError if ``spec``/``params`` do not build a valid activation."""
    make_activation(spec, params)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    registry.check_choice("norm", norm, registry.NORMS)
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.GroupNorm(min(8, channels), channels)


#: CPU bf16 convolutions on inputs this thin (first spatial extent) run in fp32 instead, see DoubleConv
CPU_BF16_MIN_DEPTH = 3


class DoubleConv(nn.Sequential):
    """(conv 3×3×3 → norm → activation) × 2; (N, in, X, Y, Z) → (N, out, X, Y, Z).

    Under CPU bf16 autocast, an input whose first spatial extent is below :data:`CPU_BF16_MIN_DEPTH`
    (the 2³ bottleneck of a 32³ patch) is convolved in fp32: oneDNN's bf16 weight gradient of a 3³
    convolution on an input of depth 2 is wrong on AVX512-BF16 CPUs (measured with torch 2.13 on an
    AMD EPYC Zen 4: nondeterministic, values up to 1e37 or NaN; input gradient and output are fine).
    These levels hold a tiny share of the FLOPs, so the cost is negligible.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: ActivationSpec, norm: str):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            _norm_layer(norm, out_channels),
            make_activation(activation),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            _norm_layer(norm, out_channels),
            make_activation(activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.shape[2] < CPU_BF16_MIN_DEPTH and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class UNet3D(nn.Module):
    """3D U-Net: field (N, 1, X, Y, Z) in ppm → susceptibility (N, 1, X, Y, Z) in ppm.

    Args:
        initial_channels: channels of the first level (paper: 16 or 32); doubled per level.
        depth: number of levels including the bottleneck (paper: 5).
        activation: registry name or ``(name, params)``, see :data:`ACTIVATIONS`.
        norm: ``batch`` (default: :data:`qsmrep.registry.DEFAULT_ARM`), ``none`` (the standard U-Net), ``instance`` or ``group``.
        init: ``he`` (Kaiming-normal weights, zero biases; Ronneberger 2015) or ``default`` (PyTorch's).
        in_channels, out_channels: 1 and 1 for dipole inversion.
    """

    def __init__(self, initial_channels: int = 16, depth: int = 5, activation: ActivationSpec = "elu",
                 norm: str = registry.DEFAULT_ARM, init: str = "he", in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        if not isinstance(initial_channels, int) or initial_channels < 1:
            raise ValueError(f"initial_channels: must be an integer ≥ 1, got {initial_channels!r}")
        if not isinstance(depth, int) or not 1 <= depth <= 7:
            raise ValueError(f"depth: must be an integer in 1..7, got {depth!r}")
        _norm_layer(norm, 8)
        registry.check_choice("init", init, registry.INITS)
        check_activation(activation)
        self.depth = depth
        self.activation_spec = _split_spec(activation)
        widths = [initial_channels * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(DoubleConv(previous, width, activation, norm))
            previous = width
        self.pool = nn.MaxPool3d(2)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose3d(width * 2, width, kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(width * 2, width, activation, norm))
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)
        if init == "he":
            self.he_initialisation()

    @property
    def size_multiple(self) -> int:
        """Spatial sizes that pass without padding are multiples of this (2^(depth−1))."""
        return 2 ** (self.depth - 1)

    def he_initialisation(self) -> None:
        """He initialisation (Kaiming normal, fan-in, ReLU gain) of every convolution; zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"input: expected shape (N, C, X, Y, Z), got {tuple(x.shape)}")
        size = x.shape[-3:]
        m = self.size_multiple
        pad = [(-s) % m for s in size]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([skips.pop(), upsample(x)], dim=1))
        x = self.head(x)
        if any(pad):
            x = x[..., : size[0], : size[1], : size[2]]
        return x


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
