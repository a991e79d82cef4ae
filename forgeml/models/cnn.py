"""Convolutional network over the image input, with numeric/category features joined at the head.

Without an image but with text/sequence columns, the registry builds the 1-D variant in cnn1d.py
from the same config (Conv1d blocks per column, a global max over real steps, the same head).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.schema import InputSpec

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class CNNConfig(BaseModel):
    """`model:` section for `name: cnn`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = Field([32, 64], min_length=1)  # one block each
    kernel_size: int = Field(3, ge=1)  # odd, so 'same' padding keeps H and W (or L)
    convs_per_block: int = Field(1, ge=1)
    batchnorm: bool = True
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    # 2x2 (1-D: 2) after each block, skipped once a side (1-D: max_length) is 1
    pool: Literal["max", "avg", "none"] = "max"
    dropout: float = Field(0.0, ge=0, lt=1)  # after each block
    global_pool: bool = False  # image: global average pool instead of flatten (1-D: always max)
    head_hidden: list[Annotated[int, Field(ge=1)]] = [128]
    head_dropout: float = Field(0.0, ge=0, lt=1)
    # Text columns (1-D only): token embedding width, vectors file to initialise it from.
    embedding_dim: int = Field(128, ge=1)
    vectors: str | None = None  # word2vec/GloVe text file
    freeze_vectors: bool = False  # keep text embeddings fixed during training

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(
                "model.kernel_size must be odd so 'same' padding keeps the image size; "
                f"use {value - 1} or {value + 1}"
            )
        return value


def embedding_dim_for(size: int) -> int:
    # The usual rule of thumb: about half the vocab, capped so wide columns stay cheap.
    return min(32, (size + 1) // 2)


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig, spec: InputSpec) -> None:
        super().__init__()
        if spec.image_shape is None:
            raise ConfigError(
                "model.name=cnn needs an image column, but the data has none; use "
                "model.name=mlp for tabular data or declare an image column in data.columns"
            )
        c, h, w = spec.image_shape
        k = cfg.kernel_size
        blocks: list[nn.Module] = []
        for out_c in cfg.channels:
            layers: list[nn.Module] = []
            for _ in range(cfg.convs_per_block):
                # BatchNorm subtracts the batch mean, so a conv bias before it would be dead weight.
                layers.append(nn.Conv2d(c, out_c, k, padding=k // 2, bias=not cfg.batchnorm))
                if cfg.batchnorm:
                    layers.append(nn.BatchNorm2d(out_c))
                layers.append(ACTIVATIONS[cfg.activation]())
                c = out_c
            # A 2x2 pool on a side of 1 would give 0; stop pooling once the map is that thin.
            if cfg.pool != "none" and min(h, w) >= 2:
                layers.append(POOLS[cfg.pool](2))
                h, w = h // 2, w // 2  # floor, as the pool does
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.global_pool = cfg.global_pool
        image_dim = c if cfg.global_pool else c * h * w

        self.embeddings = nn.ModuleList(
            nn.Embedding(size, embedding_dim_for(size)) for size in spec.category_sizes
        )
        in_dim = image_dim + spec.num_numeric + sum(e.embedding_dim for e in self.embeddings)
        layers = []
        for size in cfg.head_hidden:
            layers += [nn.Linear(in_dim, size), ACTIVATIONS[cfg.activation]()]
            if cfg.head_dropout > 0:
                layers.append(nn.Dropout(cfg.head_dropout))
            in_dim = size
        layers.append(nn.Linear(in_dim, spec.out_dim))
        self.head = nn.Sequential(*layers)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        x = self.blocks(inputs["image"])  # (B, C, H, W) -> (B, C', H', W')
        x = x.mean(dim=(2, 3)) if self.global_pool else x.flatten(1)  # (B, C') or (B, C'*H'*W')
        parts = [x]
        if "numeric" in inputs:
            parts.append(inputs["numeric"])  # (B, num_numeric)
        if len(self.embeddings) > 0:
            category = inputs["category"]  # (B, K) int64
            parts.extend(emb(category[:, k]) for k, emb in enumerate(self.embeddings))
        if len(parts) > 1:
            x = torch.cat(parts, dim=1)  # (B, in_dim)
        return self.head(x)  # (B, out_dim)


def build_cnn(cfg: CNNConfig, spec: InputSpec) -> nn.Module:
    """Build the 2-D CNN for the image shape, extra features and output width in `spec`.

    The registry sends data with text/sequence columns (and no image) to cnn1d.py instead.
    """
    return CNN(cfg, spec)
