"""Training, validation and test maps from the synthetic generator, and the batches a trainer takes.

Map ``i`` of split ``s`` is the map of seed ``split_seed(data_seed, s, i)`` (:mod:`qsmrep.core.synth`),
rendered with torch on the *data device*: the same picture on every machine and device (within
float tolerance), whatever other maps exist. Where the maps go:

* ``cache_maps`` (small profiles, and validation/test everywhere): every map of a split is rendered
  once, in batches, and kept on the data device, or, rendered on a GPU, in pinned host memory
  (``pinned``: a cache too large for the card, copied back map by map without blocking, :func:`maps_on`);
* not cached, data device CUDA (the ``paper`` profile on a GPU): the maps of the next iteration are
  rendered together on the GPU, on a side stream while the current step runs (:class:`DeviceBatches`);
* not cached, data device CPU: DataLoader worker processes render the maps of the coming batches
  ahead of the training loop (``num_workers`` > 0), or :class:`DeviceBatches` in the loop (0).

An epoch's plan, which maps and which patch corners each iteration uses, is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would. The host's share
of rendering a map, the seeded shape draws, is made ahead for the plan by a background thread
(:class:`AheadDraws`); nothing in the data path reads a value back from the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, Dataset

from qsmrep.core.physics import DipolePhysics
from qsmrep.core.synth import (MapDraw, SynthSettings, crop, draw_maps, random_patch_corner, render_draws,
                               split_seed)

#: maps rendered per call when a split is cached (bounded so that temporaries stay small)
RENDER_CHUNK = 8
#: batches whose shape draws the background thread keeps ready ahead of the rendering
DRAW_AHEAD = 8
#: bytes per voxel of a kept map: χ and field in float32, the mask as bool
MAP_BYTES_PER_VOXEL = 4 + 4 + 1
Plan = list[list[tuple[int, tuple[int, int, int]]]]


def map_bytes(size: int) -> int:
    """Bytes of one kept map of edge ``size`` (χ, field, mask): 295 MB at 320³."""
    return MAP_BYTES_PER_VOXEL * size**3


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without blocking the host: from the CPU to a GPU through pinned memory (already
    pinned tensors are not copied twice), queued on the current stream; unchanged where it already is."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class SyntheticMaps(Dataset):
    """Map ``i`` of a split as a dict of (1, S, S, S) tensors ``chi``, ``field`` (float32, ppm) and bool ``mask``.

    Args:
        split: ``train``, ``val`` or ``test``.
        n: number of maps; size: edge length S; data_seed: the generator's seed.
        settings: generator settings (``None``: defaults); physics: the geometry of the field.
        device: where maps are rendered (and kept, unless ``pinned``).
        cache: render all maps now and keep them; otherwise each access renders its map.
        progress: a progress bar while caching.
        pinned: keep the cache in pinned host memory instead of on a CUDA ``device`` (a cache too large
            for the card; :func:`maps_on` copies it back map by map without blocking).
    """

    def __init__(self, split: str, n: int, size: int, data_seed: int, settings: SynthSettings | None = None,
                 physics: DipolePhysics | None = None, device: torch.device | str = "cpu", cache: bool = True,
                 progress: bool = False, pinned: bool = False):
        self.split, self.n, self.size, self.data_seed = split, n, size, data_seed
        self.settings, self.physics = settings or SynthSettings(), physics or DipolePhysics()
        self.device = torch.device(device)
        if pinned and self.device.type != "cuda":
            raise ValueError(f"pinned: host memory is pinned for a CUDA device, got device {self.device}")
        self.pinned = pinned
        self._cache: dict[str, torch.Tensor] | None = None
        if cache:
            self._cache = self._render_all(progress)

    @classmethod
    def from_config(cls, config, split: str, device=None, cache: bool | None = None, progress: bool = False,
                    n: int | None = None, pinned: bool = False) -> "SyntheticMaps":
        """The ``split`` maps of ``config`` (count from ``n_train``/``n_val``/``n_test`` unless ``n``)."""
        count = n or {"train": config.n_train, "val": config.n_val, "test": config.n_test}[split]
        return cls(split, count, config.map_size, config.data_seed, config.synth, DipolePhysics.from_config(config),
                   device or config.data_device, config.cache_maps if cache is None else cache, progress, pinned)

    def seeds(self, indices: Sequence[int]) -> list[int]:
        return [split_seed(self.data_seed, self.split, int(i)) for i in indices]

    def draws(self, indices: Sequence[int]) -> list[MapDraw]:
        """The host-side shape draws of maps ``indices`` (:func:`qsmrep.core.synth.draw_maps`)."""
        return draw_maps(self.size, self.seeds(indices), self.settings)

    def render(self, indices: Sequence[int], draws: list[MapDraw] | None = None) -> dict[str, torch.Tensor]:
        """Maps ``indices`` rendered together on the device: ``chi``, ``field``, ``mask`` (k, 1, S, S, S);
        ``draws`` are their :meth:`draws` when made ahead."""
        maps = render_draws(self.size, draws or self.draws(indices), self.settings, self.physics, device=self.device)
        return {key: value.unsqueeze(1) for key, value in maps.items()}

    def _render_all(self, progress: bool) -> dict[str, torch.Tensor]:
        """Every map, rendered RENDER_CHUNK at a time into one (n, 1, S, S, S) tensor per key, kept on the device
        or in pinned host memory."""
        chunks = range(0, self.n, RENDER_CHUNK)
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc=f"render {self.split} maps", mininterval=2, leave=False,
                          total=-(-self.n // RENDER_CHUNK), unit="chunk")
        home = torch.device("cpu") if self.pinned else self.device
        cache: dict[str, torch.Tensor] = {}
        for start in chunks:
            part = self.render(range(start, min(start + RENDER_CHUNK, self.n)))
            for key, value in part.items():
                if key not in cache:
                    cache[key] = torch.empty((self.n, *value.shape[1:]), dtype=value.dtype, device=home,
                                             pin_memory=self.pinned)
                cache[key][start:start + len(value)].copy_(value)
        return cache

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


class AheadDraws:
    """The shape draws of the maps of each batch of a plan, made in order by one background thread.

    ``take(k)`` returns batch ``k``'s draws (:meth:`SyntheticMaps.draws`, in the order of :func:`batch_maps`)
    and keeps the draws of the next :data:`DRAW_AHEAD` batches in the making, so the loop that renders never
    waits for numpy and the memory held stays bounded. A context manager: leaving it drops what was not taken.
    """

    def __init__(self, maps: "SyntheticMaps", plan: Plan, ahead: int = DRAW_AHEAD):
        self.maps, self.groups, self.ahead = maps, [batch_maps(batch) for batch in plan], ahead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qsmrep-draws")
        self._futures: dict[int, object] = {}
        for k in range(min(ahead, len(self.groups))):
            self._submit(k)

    def _submit(self, k: int) -> None:
        if k < len(self.groups) and k not in self._futures:
            self._futures[k] = self._pool.submit(self.maps.draws, self.groups[k])

    def take(self, k: int) -> list[MapDraw]:
        self._submit(k)
        self._submit(k + self.ahead)
        return self._futures.pop(k).result()

    def __enter__(self) -> "AheadDraws":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def batch_maps(batch) -> list[int]:
    """The distinct map indices of one batch of a plan, sorted: the maps rendered for it."""
    return sorted({index for index, _ in batch})


class DeviceBatches:
    """Batches of a plan rendered on the maps' device, one render per batch (its distinct maps).

    The draws are made ahead by :class:`AheadDraws`; the loop only launches the rendering. On CUDA each
    batch is rendered on a side stream: batch k+1 is launched once batch k has been handed over (so the
    consumer's step is queued first), the consuming stream waits for it on the device, not the host, and the
    tensors handed over are recorded on that stream, so the caching allocator cannot reuse their memory early.
    On a CPU the same batches are made one after another (the GPU data path, testable anywhere).
    """

    def __init__(self, maps: SyntheticMaps, patch_size: int, plan: Plan):
        self.maps, self.patch_size, self.plan = maps, patch_size, plan

    def _make(self, batch, draws: list[MapDraw]):
        indices = batch_maps(batch)
        rendered = self.maps.render(indices, draws)
        rows = [indices.index(index) for index, _ in batch]
        return _crop_batch(rendered, rows, [corner for _, corner in batch], self.patch_size)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with AheadDraws(self.maps, self.plan) as draws:
            if self.maps.device.type != "cuda":
                for k, batch in enumerate(self.plan):
                    yield self._make(batch, draws.take(k))
                return
            yield from self._on_side_stream(draws)

    def _on_side_stream(self, draws: AheadDraws) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        side = torch.cuda.Stream(self.maps.device)
        consumer = torch.cuda.current_stream(self.maps.device)
        for k, batch in enumerate(self.plan):
            with torch.cuda.stream(side):
                current = self._make(batch, draws.take(k))
            consumer.wait_stream(side)
            for tensor in current:
                tensor.record_stream(consumer)
            yield current


def maps_on(maps: Sequence[dict], device: torch.device | str) -> Iterator[dict]:
    """Each map of ``maps`` (dicts of tensors) on ``device``, in order. Maps kept in pinned host memory
    (:class:`SyntheticMaps` with ``pinned``) reach a GPU by non-blocking copies on a side stream, the next
    map's while the current one is used; the consuming stream waits for each on the device."""
    device = torch.device(device)
    if device.type != "cuda" or not len(maps) or maps[0]["field"].device.type == "cuda":
        yield from ({key: value.to(device) for key, value in maps[index].items()} for index in range(len(maps)))
        return
    side, consumer = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def copy(index: int) -> dict:
        with torch.cuda.stream(side):
            return {key: to_device(value, device) for key, value in maps[index].items()}

    ahead = copy(0)
    for index in range(len(maps)):
        consumer.wait_stream(side)
        current = ahead
        for tensor in current.values():
            tensor.record_stream(consumer)
        if index + 1 < len(maps):
            ahead = copy(index + 1)
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
