"""A model over data in eval mode, batch by batch: what evaluation and prediction both run.

`data` is a `TensorData` or anything with its `__len__` and `batch(index)` (a language model's
`TokenBlocks`, one row per block).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from forgeml.data.tensors import TensorData
from forgeml.distributed import all_reduce_max, is_sharded, rank, world_size
from forgeml.runtime import autocast


@torch.no_grad()
def forward_batches(
    model: nn.Module, data: Any, *, batch_size: int, precision: str
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Eval-mode outputs batch by batch: yields (float32 outputs, target or None), e.g.
    ((B, out_dim), (B,)) for a table model or ((B, T, V), (B, T)) for a language model."""
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(data), batch_size):
        inputs, target = data.batch(slice(start, start + batch_size))
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        with autocast(precision, device):
            outputs = model(inputs)
        yield outputs.float(), (target.to(device) if target is not None else None)


def this_rank(model: nn.Module, data: Any, *, batch_size: int, precision: str) -> Any:
    """The rows of `data` this rank scores (all of them in one process); the caller reduces the
    metric states over ranks.

    Under FSDP a forward is a collective, so every rank must run as many batches as the others:
    a rank with fewer runs one-row forwards first to make up the difference.
    """
    if world_size() == 1:
        return data
    part = TensorData(*data.batch(slice(rank(), None, world_size())))
    if is_sharded(model):
        batches = math.ceil(len(part) / batch_size)
        for _ in range(all_reduce_max(batches) - batches):
            next(forward_batches(model, data, batch_size=1, precision=precision))
    return part
