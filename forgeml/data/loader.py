"""In-memory tensors for training: data that fits in memory becomes tensors once, and batches
are index slices of them (no per-sample Python in the hot loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TensorData:
    inputs: dict[str, Tensor]  # "numeric" (N, F) / "category" (N, K) / "image" (N, C, H, W)
    target: Tensor | None  # (N,) int64 class index or float32 value; None when unlabelled

    def __post_init__(self) -> None:
        sizes = {len(v) for v in self.inputs.values()}
        if self.target is not None:
            sizes.add(len(self.target))
        if len(sizes) != 1:
            raise ValueError(f"inputs and target have different lengths: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, index: Tensor | slice) -> tuple[dict[str, Tensor], Tensor | None]:
        inputs = {k: v[index] for k, v in self.inputs.items()}
        return inputs, (self.target[index] if self.target is not None else None)

    def to(self, device: torch.device) -> TensorData:
        return TensorData(
            {k: v.to(device) for k, v in self.inputs.items()},
            self.target.to(device) if self.target is not None else None,
        )
