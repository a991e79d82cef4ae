"""The language-modelling task's loss and eval step: next-token cross-entropy and perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.distributed import global_mean
from forgeml.inference.batches import forward_batches, this_rank


def lm_loss(outputs: Tensor, target: Tensor) -> Tensor:
    """Mean next-token cross-entropy: outputs (B, T, V) logits, target (B, T) ids."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), target.reshape(-1))


def evaluate(model: nn.Module, data: Any, *, batch_size: int, precision: str) -> dict[str, Any]:
    """Mean next-token loss over every token of `data`'s blocks, and its perplexity."""
    device = next(model.parameters()).device
    data = this_rank(model, data, batch_size=batch_size, precision=precision)
    loss_sum, count = torch.zeros((), device=device, dtype=torch.float64), 0
    for outputs, target in forward_batches(model, data, batch_size=batch_size, precision=precision):
        loss_sum += lm_loss(outputs, target).double() * target.numel()  # (B, T) tokens
        count += target.numel()
    loss = global_mean(loss_sum, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
