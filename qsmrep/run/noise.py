"""Field noise: a test set a QSM user would recognise, beside the paper's noise-free one.

The paper's test maps are noise-free and their field is made with the same discrete dipole kernel that the
closed-form baselines invert, which flatters those baselines. The noisy set adds white Gaussian noise to the
field inside each map's mask, with standard deviation σ = RMS(B inside the mask) / SNR, outside the mask the
field stays zero (a field map is masked before inversion). Map i's noise comes from a generator seeded with
(seed, i), so the noisy set is the same on every run.
"""

from __future__ import annotations

import torch

#: signal-to-noise ratio of the noisy test set: RMS of the field inside the mask over the noise σ
TEST_SNR = 10.0
NOISE_SEED = 20231


def add_field_noise(field: torch.Tensor, mask: torch.Tensor, snr: float, generator: torch.Generator) -> torch.Tensor:
    """``field`` (…, X, Y, Z) ppm plus N(0, σ²) inside ``mask`` (bool, same shape), σ = RMS(field[mask]) / snr."""
    if not snr > 0:
        raise ValueError(f"snr: must be > 0, got {snr!r}")
    sigma = field[mask].float().pow(2).mean().sqrt() / snr
    noise = torch.randn(field.shape, generator=generator, dtype=torch.float32).to(field.device) * sigma
    return torch.where(mask, field + noise.to(field.dtype), field)


class NoisyMaps:
    """The maps of ``maps`` (a sequence of dicts of (1, S, S, S) ``chi``, ``field``, ``mask``) with field noise."""

    def __init__(self, maps, snr: float = TEST_SNR, seed: int = NOISE_SEED):
        self.maps, self.snr, self.seed = maps, float(snr), int(seed)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.maps[index])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        sample["field"] = add_field_noise(sample["field"], sample["mask"], self.snr, generator)
        return sample

    @property
    def label(self) -> str:
        return f"SNR {self.snr:g}"
