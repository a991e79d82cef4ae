"""The 1-D side of `name: cnn`: Conv1d stacks over text/sequence columns.

`build_cnn` in cnn.py dispatches here when the data has text/sequence columns and no image. Each
column gets: blocks of Conv1d ('same' padding) [-> BatchNorm] -> activation, a 2-step pool after
each block, dropout; then a global max over real steps. Padding never reaches a real step's
output: padded steps are zeroed before every conv (what the conv's own zero padding would give at
the row's end), batchnorm statistics come from real steps only, and pools downsample the mask
with the values so padding stays padding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.models.mlp import ACTIVATIONS
from forgeml.models.sequence import SequenceModel, pool_max
from forgeml.schema import InputSpec, SequenceInput

if TYPE_CHECKING:
    from forgeml.models.cnn import CNNConfig


class MaskedBatchNorm1d(nn.Module):
    """BatchNorm1d over real steps only: (B, C, L), mask (B, L) -> (B, C, L), zeros at padding.

    Statistics over padded steps would depend on how far a batch is padded; gathering the real
    steps into (N, C) makes nn.BatchNorm1d see exactly those.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        steps = x.transpose(1, 2)  # (B, L, C)
        out = steps.new_zeros(steps.shape)
        out[mask] = self.norm(steps[mask])  # (N, C) real steps
        return out.transpose(1, 2)


def masked_pool(x: Tensor, mask: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Pool (B, C, L) by 2 over real steps only -> (B, C, ceil(L/2)), mask (B, ceil(L/2)).

    An odd L gets one padded step first, so a row's last real step is pooled (alone) whether the
    batch is padded to the row's own length or further. A window is real if any step in it is.
    """
    if x.shape[2] % 2:
        x, mask = F.pad(x, (0, 1)), F.pad(mask, (0, 1), value=False)
    keep = mask.unsqueeze(1)  # (B, 1, L)
    if kind == "max":
        y = F.max_pool1d(x.masked_fill(~keep, float("-inf")), 2)
    else:
        # mean of the real steps of each window: the pool's divisor of 2 cancels out.
        counts = F.avg_pool1d(keep.to(x.dtype), 2)  # (B, 1, L/2) in {0, 0.5, 1}
        y = F.avg_pool1d(x.masked_fill(~keep, 0.0), 2) / counts.clamp_min(0.5)
    pooled = mask.view(mask.shape[0], -1, 2).any(dim=2)  # (B, L/2)
    return y.masked_fill(~pooled.unsqueeze(1), 0.0), pooled


class ConvBlock(nn.Module):
    def __init__(self, cfg: CNNConfig, in_c: int, out_c: int, pool: bool) -> None:
        super().__init__()
        k = cfg.kernel_size
        # BatchNorm subtracts the batch mean, so a conv bias before it would be dead weight.
        self.convs = nn.ModuleList(
            nn.Conv1d(in_c if i == 0 else out_c, out_c, k, padding=k // 2, bias=not cfg.batchnorm)
            for i in range(cfg.convs_per_block)
        )
        self.norms = nn.ModuleList(
            MaskedBatchNorm1d(out_c) for _ in range(cfg.convs_per_block if cfg.batchnorm else 0)
        )
        self.activation = ACTIVATIONS[cfg.activation]()
        self.pool = cfg.pool if pool else None
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        keep = mask.unsqueeze(1)  # (B, 1, L)
        for i, conv in enumerate(self.convs):
            x = conv(x)  # (B, C', L); real steps near the end read the zeroed padding
            if len(self.norms) > 0:
                x = self.norms[i](x, mask)
            # Re-zero padding: biases and activations (sigmoid(0) = 0.5) make it non-zero.
            x = self.activation(x).masked_fill(~keep, 0.0)
        if self.pool is not None:
            x, mask = masked_pool(x, mask, self.pool)  # (B, C', ceil(L/2))
        if self.dropout is not None:
            x = self.dropout(x)
        return x, mask


class Conv1dEncoder(nn.Module):
    """(B, L, in_dim), mask (B, L) -> (B, channels[-1]): conv blocks, then max over real steps."""

    def __init__(self, cfg: CNNConfig, column: SequenceInput, in_dim: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        length = column.max_length  # the longest a batch can be; shorter batches pool alike
        for out_c in cfg.channels:
            # Stop pooling once the longest sequence is down to one step, as the 2-D path does;
            # a shorter batch still pools every block (a 1-step row is unchanged by the pool).
            pool = cfg.pool != "none" and length >= 2
            blocks.append(ConvBlock(cfg, in_dim, out_c, pool))
            if pool:
                length = math.ceil(length / 2)
            in_dim = out_c
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = in_dim

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x.transpose(1, 2)  # (B, L, E) -> (B, E, L), padding already zero
        for block in self.blocks:
            x, mask = block(x, mask)
        return pool_max(x.transpose(1, 2), mask)  # (B, C')


def build_cnn1d(cfg: CNNConfig, spec: InputSpec) -> nn.Module:
    """The 1-D CNN model for the text/sequence columns and extra features in `spec`."""

    def make_encoder(column: SequenceInput, in_dim: int) -> nn.Module:
        return Conv1dEncoder(cfg, column, in_dim)

    return SequenceModel.of(
        spec, cfg, "cnn", make_encoder, cfg.embedding_dim, head_activation=cfg.activation
    )
