"""Training, validation and test maps from the synthetic generator, and the batches a trainer takes.

Map ``i`` of split ``s`` is the map of seed ``split_seed(data_seed, s, i)`` (:mod:`qsmrep.core.synth`),
rendered with torch on the *data device*: the same picture on every machine and device (within
float tolerance), whatever other maps exist. Where the maps go:

* ``cache_maps`` (small profiles, and validation/test everywhere): every map of a split is rendered
  once, in batches, and kept on the data device;
* not cached, data device CUDA (the ``paper`` profile on a GPU): the maps of the next iteration are
  rendered together on the GPU, on a side stream while the current step runs (:class:`DeviceBatches`);
* not cached, data device CPU: DataLoader worker processes render the maps of the coming batches
  ahead of the training loop (``num_workers`` > 0), or :class:`DeviceBatches` in the loop (0).

An epoch's plan, which maps and which patch corners each iteration uses, is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from qsmrep.core.physics import DipolePhysics
from qsmrep.core.synth import SynthSettings, crop, random_patch_corner, render_maps, split_seed

#: maps rendered per call when a split is cached (bounded so that temporaries stay small)
RENDER_CHUNK = 8
Plan = list[list[tuple[int, tuple[int, int, int]]]]


class SyntheticMaps(Dataset):
    """Map ``i`` of a split as a dict of (1, S, S, S) tensors ``chi``, ``field`` (float32, ppm) and bool ``mask``.

    Args:
        split: ``train``, ``val`` or ``test``.
        n: number of maps; size: edge length S; data_seed: the generator's seed.
        settings: generator settings (``None``: defaults); physics: the geometry of the field.
        device: where maps are rendered and kept.
        cache: render all maps now and keep them; otherwise each access renders its map.
        progress: a progress bar while caching.
    """

    def __init__(self, split: str, n: int, size: int, data_seed: int, settings: SynthSettings | None = None,
                 physics: DipolePhysics | None = None, device: torch.device | str = "cpu", cache: bool = True,
                 progress: bool = False):
        self.split, self.n, self.size, self.data_seed = split, n, size, data_seed
        self.settings, self.physics = settings or SynthSettings(), physics or DipolePhysics()
        self.device = torch.device(device)
        self._cache: dict[str, torch.Tensor] | None = None
        if cache:
            self._cache = self._render_all(progress)

    @classmethod
    def from_config(cls, config, split: str, device=None, cache: bool | None = None, progress: bool = False,
                    n: int | None = None) -> "SyntheticMaps":
        """The ``split`` maps of ``config`` (count from ``n_train``/``n_val``/``n_test`` unless ``n``)."""
        count = n or {"train": config.n_train, "val": config.n_val, "test": config.n_test}[split]
        return cls(split, count, config.map_size, config.data_seed, config.synth, DipolePhysics.from_config(config),
                   device or config.data_device, config.cache_maps if cache is None else cache, progress)

    def seeds(self, indices: Sequence[int]) -> list[int]:
        return [split_seed(self.data_seed, self.split, int(i)) for i in indices]

    def render(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Maps ``indices`` rendered together: ``chi``, ``field`` (k, 1, S, S, S), ``mask`` (k, 1, S, S, S)."""
        maps = render_maps(self.size, self.seeds(indices), self.settings, self.physics, device=self.device)
        return {key: value.unsqueeze(1) for key, value in maps.items()}

    def _render_all(self, progress: bool) -> dict[str, torch.Tensor]:
        chunks = range(0, self.n, RENDER_CHUNK)
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc=f"render {self.split} maps", mininterval=2, leave=False,
                          total=-(-self.n // RENDER_CHUNK), unit="chunk")
        parts = [self.render(range(start, min(start + RENDER_CHUNK, self.n))) for start in chunks]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"map index {index} outside 0..{self.n - 1} of split {self.split!r}")
        if self._cache is not None:
            return {key: value[index] for key, value in self._cache.items()}
        return {key: value[0] for key, value in self.render([index]).items()}


def epoch_plan(seed: int, epoch: int, n_maps: int, map_size: int, patch_size: int, batch_size: int,
               iterations: int) -> Plan:
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


def _crop_batch(maps: dict[str, torch.Tensor], rows: Sequence[int], corners, patch_size: int):
    """(field, chi) patches (B, 1, p, p, p) from rendered maps, map ``rows[b]`` at ``corners[b]``."""
    field = torch.stack([crop(maps["field"][r], c, patch_size) for r, c in zip(rows, corners)])
    chi = torch.stack([crop(maps["chi"][r], c, patch_size) for r, c in zip(rows, corners)])
    return field, chi


class _PatchDataset(Dataset):
    """Item ``(map_index, corner)`` → ``(field_patch, chi_patch)``, each (1, p, p, p) (DataLoader workers)."""

    def __init__(self, maps: SyntheticMaps, patch_size: int):
        self.maps, self.patch_size = maps, patch_size

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, item):
        index, corner = item
        sample = self.maps[index]
        return crop(sample["field"], corner, self.patch_size), crop(sample["chi"], corner, self.patch_size)


class DeviceBatches:
    """Batches of a plan rendered on the maps' device, one ``render_maps`` call per batch (its distinct maps).

    On CUDA the next batch is rendered on a side stream while the current one is used, and the tensors
    handed over are recorded on the consuming stream, so the caching allocator cannot reuse their memory
    early. On a CPU the same batches are made one after another (the GPU data path, testable anywhere).
    """

    def __init__(self, maps: SyntheticMaps, patch_size: int, plan: Plan):
        self.maps, self.patch_size, self.plan = maps, patch_size, plan

    def _make(self, batch):
        indices = sorted({index for index, _ in batch})
        rendered = self.maps.render(indices)
        rows = [indices.index(index) for index, _ in batch]
        return _crop_batch(rendered, rows, [corner for _, corner in batch], self.patch_size)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.maps.device.type != "cuda":
            yield from (self._make(batch) for batch in self.plan)
            return
        if not self.plan:
            return
        side = torch.cuda.Stream(self.maps.device)
        consumer = torch.cuda.current_stream(self.maps.device)
        with torch.cuda.stream(side):
            ahead = self._make(self.plan[0])
        for k in range(len(self.plan)):
            consumer.wait_stream(side)
            current = ahead
            for tensor in current:
                tensor.record_stream(consumer)
            if k + 1 < len(self.plan):
                with torch.cuda.stream(side):
                    ahead = self._make(self.plan[k + 1])
            yield current


def patch_batches(maps: SyntheticMaps, patch_size: int, plan: Plan, num_workers: int = 0):
    """An iterable of ``(field, chi)`` batches (B, 1, p, p, p) following ``plan``, on the maps' device.

    Cached maps are cropped directly; uncached CPU maps with ``num_workers`` > 0 come from a DataLoader
    whose worker processes render ahead; every other uncached case from :class:`DeviceBatches`.
    """
    if maps.cached:
        return (_crop_batch(maps._cache, [i for i, _ in batch], [c for _, c in batch], patch_size) for batch in plan)
    if maps.device.type == "cpu" and num_workers > 0:
        return DataLoader(_PatchDataset(maps, patch_size), batch_sampler=plan, num_workers=num_workers,
                          prefetch_factor=4, persistent_workers=False)
    return DeviceBatches(maps, patch_size, plan)
