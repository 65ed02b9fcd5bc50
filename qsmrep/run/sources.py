"""Data sources: what a trainer is handed to train and validate on.

A source has

* ``identity``: a string naming where its data come from (a run folder refuses to resume a run
  with a source of another identity);
* ``iterations``: batches per epoch;
* ``batches(epoch, shard)``: the epoch's ``(field, chi)`` batches, each (B, 1, p, p, p) in ppm, a
  pure function of the epoch (so a resumed run sees exactly the batches an uninterrupted one
  would); ``shard`` maps one batch's items to this process's share (data-parallel training);
* ``validation``: a sequence of maps, each a dict of (1, S, S, S) tensors ``chi``, ``field`` and a
  bool ``mask``.

:class:`SyntheticSource` is the study's (the generator of :mod:`qsmrep.core.synth`);
:class:`TensorSource` holds patches and maps already in memory (a file reader's output, a fixed
noisy set, a test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch

from qsmrep.core.synth import GENERATOR_VERSION
from qsmrep.run.data import SyntheticMaps, epoch_plan, map_bytes, patch_batches

Batch = tuple[torch.Tensor, torch.Tensor]
#: the validation maps stay on the GPU where they take at most this fraction of its memory (the rest holds the
#: training step, ~17 GiB for ELU32 at the paper's scale by the estimate, and its data); beyond it they are kept
#: in pinned host memory
VALIDATION_GPU_FRACTION = 0.25


def validation_bytes(config) -> int:
    """Bytes of the kept validation maps of ``config`` (χ, field, mask of ``n_val`` maps; 29.5 GB for the paper)."""
    return config.n_val * map_bytes(config.map_size)


def validation_on_host(config, device: torch.device | str, card_bytes: int | None = None) -> bool:
    """Whether ``config``'s validation maps, rendered on ``device``, are kept in pinned host memory: on a GPU of
    ``card_bytes`` (default: the device's own memory) when they would take more than
    :data:`VALIDATION_GPU_FRACTION` of it. Copying a kept map back (0.3 GB at 320³, about 6–12 ms over PCIe 4–5, on a side
    stream behind the previous map's inference) was chosen over rendering it again each epoch (the renderer's
    time per map, plus its draws on the host)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    if card_bytes is None:
        card_bytes = torch.cuda.get_device_properties(device).total_memory
    return validation_bytes(config) > VALIDATION_GPU_FRACTION * card_bytes


def _whole(items: list) -> list:
    return items


class DataSource(Protocol):
    identity: str
    iterations: int
    validation: Sequence[dict]

    def batches(self, epoch: int, shard: Callable[[list], list] = _whole) -> Iterable[Batch]: ...


class SyntheticSource:
    """Training patches and validation maps of a config's synthetic generator.

    Training maps are cached or rendered per batch as ``config.cache_maps`` says, on ``device``; the
    epoch's maps and patch corners come from :func:`qsmrep.run.data.epoch_plan` (seed, epoch). The
    validation maps are rendered once on ``device`` and kept there, or in pinned host memory where
    :func:`validation_on_host` says so.
    """

    identity = GENERATOR_VERSION

    def __init__(self, config, device: torch.device | str, progress: bool = False):
        self.config = config
        self.iterations = config.iterations
        self.train_maps = SyntheticMaps.from_config(config, "train", device, progress=progress)
        self.validation = SyntheticMaps.from_config(config, "val", device, cache=True, progress=progress,
                                                    pinned=validation_on_host(config, device))

    def batches(self, epoch: int, shard: Callable[[list], list] = _whole) -> Iterable[Batch]:
        c = self.config
        plan = epoch_plan(c.seed, epoch, c.n_train, c.map_size, c.patch_size, c.batch_size, c.iterations)
        return patch_batches(self.train_maps, c.patch_size, [shard(batch) for batch in plan], c.num_workers)


class TensorSource:
    """Patches and validation maps given as tensors.

    Args:
        field, chi: training patches (N, 1, p, p, p), ppm.
        validation: validation maps, each a dict of (1, S, S, S) ``chi``, ``field`` and bool ``mask``.
        batch_size: patches per batch; an epoch is ``N // batch_size`` batches of a random permutation
            drawn from (seed, epoch).
        identity: names the data for the run folder.
    """

    def __init__(self, field: torch.Tensor, chi: torch.Tensor, validation: Sequence[dict], batch_size: int,
                 seed: int = 0, identity: str = "tensors"):
        if field.shape != chi.shape or field.dim() != 5 or field.shape[1] != 1:
            raise ValueError(f"data: field and chi must both be (N, 1, p, p, p), got {tuple(field.shape)} and "
                             f"{tuple(chi.shape)}")
        if not 1 <= batch_size <= len(field):
            raise ValueError(f"batch_size: must be in 1..{len(field)} (the number of patches), got {batch_size}")
        if not len(validation):
            raise ValueError("validation: at least one validation map is needed")
        self.field, self.chi, self.validation = field, chi, validation
        self.batch_size, self.seed, self.identity = batch_size, seed, identity
        self.iterations = len(field) // batch_size

    def batches(self, epoch: int, shard: Callable[[list], list] = _whole) -> Iterable[Batch]:
        generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        order = torch.randperm(len(self.field), generator=generator).tolist()
        for i in range(self.iterations):
            rows = shard(order[i * self.batch_size:(i + 1) * self.batch_size])
            yield self.field[rows], self.chi[rows]
