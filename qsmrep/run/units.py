"""Dead units: channels of an activation layer whose slope stays (almost) zero on every voxel.

A unit (channel) of an activation f is *dead* on a set of inputs when |f'(x)| < ε · max_t |f'(t)| at every
voxel x of the channel, with ε = :data:`SLOPE_FRACTION` (1 %): it passes (almost) no gradient back. For the
activations of the paper:

* ReLU: f'(x) = 0 for x ≤ 0, so a unit is dead when its input is never positive (the "dying ReLU");
* ELU (α): f'(x) = α·eˣ for x < 0, so a unit is dead when its input stays below ln ε ≈ −4.6 (saturated);
  negative outputs alone do not make it dead;
* leaky ReLU (negative slope s ≥ ε): never dead.

For every activation whose slope is small only below some input x_ε (all of the registry's), a channel is dead
exactly when the largest input it receives is ≤ x_ε; :func:`dead_threshold` finds x_ε from f' on a fine grid,
and :class:`ActivationRecorder` keeps each channel's largest input. The older count, channels whose output is
never positive (for ReLU the same units; for ELU and leaky ReLU not dead at all), is kept beside it.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn

#: history column of the dead-unit fraction by the slope criterion (``dead_fraction``: never positive)
DEAD_COLUMN = "zero_gradient_fraction"
#: a unit is dead when its slope stays below this fraction of the activation's largest slope
SLOPE_FRACTION = 0.01
#: the inputs at which an activation's slope is probed: −30 … 10, 0.001 apart, 0 exactly (made on first use: a torch
#: operation at import would start the OpenMP pool in the benchmark's forkserver, whose forked workers then hang)
_GRID_STEPS = (-30000, 10001, 1000)


def is_activation(module: nn.Module) -> bool:
    return module.__class__.__module__.startswith("torch.nn.modules.activation")


def _key(module: nn.Module) -> tuple:
    params = tuple(round(float(p.detach().float().mean()), 6) for p in module.parameters())
    return (type(module).__name__, repr(module), params)


@functools.lru_cache(maxsize=64)
def _threshold(key: tuple, module: nn.Module) -> float:
    probe = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    probe._forward_hooks.clear(), probe._forward_pre_hooks.clear()  # a recorder's hooks are not the function
    with torch.inference_mode(False), torch.enable_grad():  # validation runs in inference mode
        low, high, per_unit = _GRID_STEPS
        grid = torch.arange(low, high, dtype=torch.float64) / per_unit
        t = grid.clone().requires_grad_(True)
        slope, = torch.autograd.grad(probe(t).sum(), t)
    small = slope.abs() < SLOPE_FRACTION * slope.abs().max()
    if not bool(small[0]):
        return -math.inf  # the slope never becomes small: no input makes the unit dead
    first_large = int(torch.nonzero(~small)[0]) if bool((~small).any()) else len(t)
    return float(grid[first_large - 1])


def dead_threshold(module: nn.Module) -> float:
    """x_ε of an activation layer: a channel whose inputs are all ≤ x_ε is dead (−inf: never dead)."""
    return _threshold(_key(module), module)


class ActivationRecorder:
    """Records, per activation layer and channel, the largest input and whether the output was ever positive.

    Use as a context manager around forward passes of ``model``; inputs are (N, C, X, Y, Z).
    """

    def __init__(self, model: nn.Module):
        self.layers = [(name, module) for name, module in model.named_modules() if is_activation(module)]
        self.peak: dict[str, torch.Tensor] = {}
        self.alive: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for name, module in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._input_hook(name)))
            self._handles.append(module.register_forward_hook(self._output_hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _input_hook(self, name):
        def hook(_module, inputs):
            peak = inputs[0].detach().float().transpose(0, 1).flatten(1).amax(dim=1)
            self.peak[name] = peak if name not in self.peak else torch.maximum(self.peak[name], peak)
        return hook

    def _output_hook(self, name):
        def hook(_module, _inputs, output):
            positive = (output.detach() > 0).flatten(2).any(dim=2).any(dim=0)
            self.alive[name] = positive | self.alive.get(name, torch.zeros_like(positive))
        return hook

    def _dead(self) -> dict[str, torch.Tensor]:
        modules = dict(self.layers)
        return {name: peak <= dead_threshold(modules[name]) for name, peak in self.peak.items()}

    def dead_fractions(self) -> dict[str, float]:
        """Layer name → fraction of its channels that are dead by the slope criterion (module docstring)."""
        return {name: dead.float().mean().item() for name, dead in self._dead().items()}

    def dead_fraction(self) -> float:
        """Fraction of all channels (over all activation layers) that are dead by the slope criterion."""
        dead = list(self._dead().values())
        return sum(d.sum().item() for d in dead) / max(sum(d.numel() for d in dead), 1)

    def never_positive_fractions(self) -> dict[str, float]:
        """Layer name → fraction of its channels whose output was never positive."""
        return {name: 1.0 - alive.float().mean().item() for name, alive in self.alive.items()}

    def never_positive_fraction(self) -> float:
        """Fraction of all channels whose output was never positive."""
        total = sum(a.numel() for a in self.alive.values())
        return 1.0 - sum(a.sum().item() for a in self.alive.values()) / max(total, 1)
