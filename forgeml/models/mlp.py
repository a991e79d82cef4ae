"""Multilayer perceptron over numeric, category and (flattened) image inputs."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.schema import InputSpec

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLPConfig(BaseModel):
    """`model:` section for `name: mlp`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["mlp"] = "mlp"
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = [128, 64]  # [] : a linear model
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)  # after each hidden activation
    norm: Literal["none", "batchnorm", "layernorm"] = "none"
    embedding_dim: int | None = Field(None, ge=1)  # per category column; None: min(32, (size+1)//2)


def embedding_dim_for(size: int, embedding_dim: int | None) -> int:
    # The usual rule of thumb: about half the vocab, capped so wide columns stay cheap.
    return embedding_dim if embedding_dim is not None else min(32, (size + 1) // 2)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, spec: InputSpec) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(size, embedding_dim_for(size, cfg.embedding_dim))
            for size in spec.category_sizes
        )
        image_dim = 0
        if spec.image_shape is not None:
            c, h, w = spec.image_shape
            image_dim = c * h * w
        in_dim = spec.num_numeric + sum(e.embedding_dim for e in self.embeddings) + image_dim
        if in_dim == 0:
            raise ConfigError(
                "model.name=mlp needs at least one input column (numeric, category or image), "
                "but the data has none; declare feature columns in data.columns "
                "or remove them from data.exclude"
            )

        layers: list[nn.Module] = []
        for size in cfg.hidden_sizes:
            # BatchNorm subtracts the batch mean, so a bias before it would be dead weight.
            layers.append(nn.Linear(in_dim, size, bias=cfg.norm != "batchnorm"))
            if cfg.norm == "batchnorm":
                layers.append(nn.BatchNorm1d(size))
            elif cfg.norm == "layernorm":
                layers.append(nn.LayerNorm(size))
            layers.append(ACTIVATIONS[cfg.activation]())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            in_dim = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, spec.out_dim)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        parts: list[Tensor] = []
        if "numeric" in inputs:
            parts.append(inputs["numeric"])  # (B, num_numeric)
        if len(self.embeddings) > 0:
            category = inputs["category"]  # (B, K) int64
            # one (B, dim_k) block per category column
            parts.extend(emb(category[:, k]) for k, emb in enumerate(self.embeddings))
        if "image" in inputs:
            parts.append(inputs["image"].flatten(1))  # (B, C, H, W) -> (B, C*H*W)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, in_dim)
        return self.head(self.body(x))  # (B, out_dim)


def build_mlp(cfg: MLPConfig, spec: InputSpec) -> nn.Module:
    """Build an MLP for the inputs and output width in `spec`."""
    return MLP(cfg, spec)
