"""Transformer encoder (pre-LayerNorm) over text and numeric-sequence columns."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from forgeml.models.sequence import SequenceModel, pool_mean
from forgeml.schema import InputSpec, SequenceInput


class TransformerConfig(BaseModel):
    """`model:` section for `name: transformer`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["transformer"] = "transformer"
    d_model: int = Field(128, ge=1)  # also the token embedding width of text columns
    num_heads: int = Field(4, ge=1)  # d_model must be a multiple
    num_layers: int = Field(2, ge=1)
    ffn_dim: int | None = Field(None, ge=1)  # None: 4 * d_model
    dropout: float = Field(0.1, ge=0, lt=1)  # on attention weights, sublayer outputs, inputs
    positions: Literal["learned", "sinusoidal"] = "learned"
    # cls: a learned [CLS] vector prepended to every row, its final state is the encoding;
    # mean: the mean of the final states over real steps.
    pooling: Literal["cls", "mean"] = "cls"
    vectors: str | None = None  # word2vec/GloVe text file, d_model-dimensional
    freeze_vectors: bool = False  # keep text embeddings fixed during training
    head_hidden: list[Annotated[int, Field(ge=1)]] = []
    head_dropout: float = Field(0.0, ge=0, lt=1)
    category_embedding_dim: int | None = Field(None, ge=1)  # None: min(32, (size+1)//2)

    @model_validator(mode="after")
    def _heads_divide_d_model(self) -> TransformerConfig:
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"model.d_model={self.d_model} must be a multiple of model.num_heads="
                f"{self.num_heads} (each head gets d_model / num_heads dims); change one of them"
            )
        return self


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """(length, dim): sin at even dims, cos at odd dims, wavelengths 2*pi .. 10000*2*pi."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (length, 1)
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rates)  # ceil(dim / 2) columns
    table[:, 1::2] = torch.cos(position * rates[: dim // 2])  # floor(dim / 2) columns
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention; padded keys are never attended."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, length, dim = x.shape
        # (B, L, 3D) -> 3 x (B, heads, L, D / heads)
        q, k, v = (
            self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        )
        # Boolean attn_mask, True = attend: (B, 1, 1, L) broadcasts to (B, heads, L, L) and hides
        # padded keys from every query. Padded queries still see the real keys, so no row of the
        # softmax is all -inf (no nan); their outputs are never pooled.
        attend = mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, L, D / heads)
        return self.out(y.transpose(1, 2).reshape(b, length, dim))  # (B, L, D)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + ffn(LN(x))."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.drop(self.attention(self.norm1(x), mask))
        return x + self.drop(self.ffn(self.norm2(x)))  # (B, L, D)


class TransformerEncoder(nn.Module):
    """(B, L, in_dim), mask (B, L) -> (B, d_model)."""

    def __init__(self, cfg: TransformerConfig, column: SequenceInput, in_dim: int) -> None:
        super().__init__()
        d = cfg.d_model
        # Text arrives embedded at d_model; sequence values (C per step) are projected to it.
        self.project = nn.Linear(in_dim, d) if column.kind == "sequence" else None
        self.cls = nn.Parameter(torch.randn(d) * 0.02) if cfg.pooling == "cls" else None
        self.max_length = column.max_length
        slots = column.max_length + (1 if self.cls is not None else 0)  # the [CLS] slot is 0
        if cfg.positions == "learned":
            self.positions = nn.Parameter(torch.randn(slots, d) * 0.02)  # (slots, D)
        else:
            # Fixed and recomputable: a non-persistent buffer, so not in the state_dict.
            self.register_buffer("positions", sinusoidal_positions(slots, d), persistent=False)
        self.input_dropout = nn.Dropout(cfg.dropout)
        ffn_dim = cfg.ffn_dim if cfg.ffn_dim is not None else 4 * d
        self.blocks = nn.ModuleList(
            EncoderBlock(d, cfg.num_heads, ffn_dim, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)  # pre-LN blocks leave the residual stream unnormalised
        self.out_dim = d

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, length = mask.shape
        if length > self.max_length:
            raise ValueError(
                f"a batch has sequences of length {length}, longer than the column's "
                f"max_length {self.max_length} the positions were sized for"
            )
        if self.project is not None:
            x = self.project(x)  # (B, L, C) -> (B, L, D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, 1, -1), x], dim=1)  # (B, 1 + L, D)
            mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # [CLS] is always real
        x = self.input_dropout(x + self.positions[: x.shape[1]])  # same slot, same position
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)  # (B, L', D)
        return x[:, 0] if self.cls is not None else pool_mean(x, mask)  # (B, D)


def build_transformer(cfg: TransformerConfig, spec: InputSpec) -> nn.Module:
    """Build a transformer encoder model for the text/sequence columns and extra features.

    Raises:
        ConfigError: no text/sequence column, an image column, or a bad vectors file.
    """

    def make_encoder(column: SequenceInput, in_dim: int) -> nn.Module:
        return TransformerEncoder(cfg, column, in_dim)

    return SequenceModel.of(
        spec, cfg, "transformer", make_encoder, cfg.d_model, dim_key="model.d_model"
    )
