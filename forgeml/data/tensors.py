"""In-memory tensors for training: data that fits in memory becomes tensors once, and batches
are index slices of them (no per-sample Python in the hot loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TensorData:
    inputs: dict[str, Tensor]  # the batch keys of schema.py, each with N rows
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
        for key in [k for k in inputs if k.startswith("mask:")]:
            # Rows are left-aligned: cut the padding every row of this batch has at the end, so
            # a batch of short texts costs what its longest row needs, not max_length.
            mask = inputs[key]  # (B, L) bool
            longest = int(mask.sum(1).max()) if len(mask) else 0
            if 0 < longest < mask.shape[1]:
                name = key.removeprefix("mask:")
                for k in (key, "text:" + name, "seq:" + name):
                    if k in inputs:
                        inputs[k] = inputs[k][:, :longest]
        return inputs, (self.target[index] if self.target is not None else None)

    def to(self, device: torch.device) -> TensorData:
        return TensorData(
            {k: v.to(device) for k, v in self.inputs.items()},
            self.target.to(device) if self.target is not None else None,
        )
