"""Training, validation and test data from the synthetic generator.

Map ``i`` of split ``s`` is ``synthetic_sample(map_size, split_seed(data_seed, s, i))``: the same on
every machine, whatever other maps exist. Small profiles keep the maps of a split in memory
(``cache_maps``); at paper scale (1000 maps of 320³ would be about 260 GB) maps are generated on the
fly in DataLoader worker processes, ahead of the training loop.

An epoch's plan, which maps and which patch corners each iteration uses, is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from qsmrep.synth import crop, random_patch_corner, split_seed, synthetic_sample


class SyntheticMaps(Dataset):
    """Map ``i`` of a split as a dict of (1, S, S, S) float tensors ``chi``, ``field`` and bool ``mask``."""

    def __init__(self, split: str, n: int, size: int, data_seed: int, cache: bool = True, progress: bool = False):
        self.split, self.n, self.size, self.data_seed = split, n, size, data_seed
        self._cache: list[dict] | None = None
        if cache:
            indices = range(n)
            if progress:
                from tqdm import tqdm

                indices = tqdm(indices, desc=f"generate {split} maps", mininterval=2, leave=False)
            self._cache = [self._make(i) for i in indices]

    def _make(self, index: int) -> dict:
        sample = synthetic_sample(self.size, split_seed(self.data_seed, self.split, index))
        return {key: value.unsqueeze(0) for key, value in sample.items()}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"map index {index} outside 0..{self.n - 1} of split {self.split!r}")
        return self._cache[index] if self._cache is not None else self._make(index)


class PatchDataset(Dataset):
    """Item ``(map_index, corner)`` → ``(field_patch, chi_patch)``, each (1, p, p, p)."""

    def __init__(self, maps: SyntheticMaps, patch_size: int):
        self.maps, self.patch_size = maps, patch_size

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, item: tuple[int, tuple[int, int, int]]):
        index, corner = item
        sample = self.maps[index]
        return crop(sample["field"], corner, self.patch_size), crop(sample["chi"], corner, self.patch_size)


def epoch_plan(seed: int, epoch: int, n_maps: int, map_size: int, patch_size: int, batch_size: int,
               iterations: int) -> list[list[tuple[int, tuple[int, int, int]]]]:
    """The batches of one epoch: ``iterations`` lists of ``batch_size`` (map index, patch corner).

    Maps are drawn without replacement from successive random permutations of the training maps
    (one epoch of the ``paper`` profile, 250 × 4 patches, is one pass over its 1000 maps); each
    patch corner is uniform over the map. Depends on (seed, epoch) only.
    """
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    needed = iterations * batch_size
    order: list[int] = []
    while len(order) < needed:
        order += torch.randperm(n_maps, generator=generator).tolist()
    items = [(order[k], random_patch_corner(map_size, patch_size, generator)) for k in range(needed)]
    return [items[i * batch_size:(i + 1) * batch_size] for i in range(iterations)]


def patch_loader(maps: SyntheticMaps, patch_size: int, plan, num_workers: int = 0) -> DataLoader:
    """A DataLoader that yields ``(field, chi)`` batches (B, 1, p, p, p) following ``plan``."""
    return DataLoader(
        PatchDataset(maps, patch_size),
        batch_sampler=plan,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
