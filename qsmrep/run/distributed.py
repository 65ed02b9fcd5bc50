"""Data-parallel training over several processes (``torchrun --nproc_per_node=N -m qsmrep train …``).

Every rank follows the same epoch plan and takes its share of each batch (rank r takes patches
r, r + N, …), so N ranks together train on the same four patches per iteration as one process
would; DistributedDataParallel averages the gradients, which equals the single-process gradient
of the mean loss up to summation order. Batch normalisation is synchronised over the ranks on
GPUs (SyncBatchNorm, exact); on CPUs PyTorch has no SyncBatchNorm, so each rank normalises its own
share and rank 0's running statistics are broadcast (an approximation of the 4-patch batch).
Rank 0 validates and writes every file; the other ranks wait at a barrier. Backend: NCCL with
CUDA (one GPU per rank, ``LOCAL_RANK``), Gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``created`` if we opened the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean of ``values`` over ranks (identity for one process)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return (tensor / self.world).cpu().tolist()

    def all_true(self, flag):
        """True when ``flag`` is True on every rank (so that all ranks take the same branch; ``flag`` itself for one process).
        A bool tensor is reduced where it lies and returned as a bool tensor: no value is read back to the host."""
        if not self.enabled:
            return flag
        if isinstance(flag, torch.Tensor):
            agreed = flag.to(torch.int32)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            return agreed.bool()
        return self.mean([float(flag)])[0] == 1.0

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def close(self) -> None:
        if self.created and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_name: str) -> Context:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1), or a one-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return Context(rank=rank, world=world, local_rank=local_rank, created=created)


def shard(batch: list, context: Context) -> list:
    """This rank's share of one batch of the epoch plan."""
    if len(batch) % context.world:
        raise ValueError(f"batch_size: {len(batch)} patches cannot be split evenly over {context.world} processes")
    return batch[context.rank::context.world]
