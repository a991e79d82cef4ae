"""torch.distributed as a branch, not a subsystem: the helpers every layer may call.

The same code runs with 1 or N processes. Under `torchrun` (WORLD_SIZE > 1) each rank takes its
slice of every global batch and of the evaluation data, sums and metrics are reduced across
ranks, and only rank 0 (`is_main()`) logs and writes files. Without a process group every helper
here is a no-op. Joining the group and the `--nproc` launcher are forgeml/training/distributed.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (gloo and NCCL both reduce CPU/GPU tensors here)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(value: int) -> int:
    """The largest of an integer over ranks (the value itself in one process)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's copy of a (CPU) tensor stacked along a new first dim: (world, *shape)."""
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def global_mean(total: torch.Tensor, count: int) -> float:
    """total / count over all ranks (just this process's numbers without a process group)."""
    if world_size() == 1:
        return (total / max(count, 1)).item()
    both = torch.stack([total.double(), torch.tensor(float(count), device=total.device).double()])
    both = all_reduce_sum(both)
    return (both[0] / max(both[1].item(), 1.0)).item()


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
