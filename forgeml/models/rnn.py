"""Recurrent networks (RNN, LSTM, GRU) over text and numeric-sequence columns.

The classic Keras text classifier Embedding -> LSTM(100) -> Dense(1, sigmoid) is
`{name: rnn, cell: lstm, hidden_size: 100, pooling: last}` on a binary task: the model returns
(B, 1) logits and the loop applies BCE-with-logits (the sigmoid lives in the loss).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from forgeml.models.sequence import Pooling, SequenceModel
from forgeml.schema import InputSpec, SequenceInput

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNConfig(BaseModel):
    """`model:` section for `name: rnn`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    hidden_size: int = Field(128, ge=1)  # per direction
    num_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked layers, as nn.LSTM's
    # last: final state (both directions' when bidirectional); mean/max/attention: over real steps
    pooling: Literal["last", "mean", "max", "attention"] = "last"
    embedding_dim: int = Field(128, ge=1)  # token embedding width of text columns
    vectors: str | None = None  # word2vec/GloVe text file to initialise text embeddings from
    freeze_vectors: bool = False  # keep text embeddings fixed during training
    head_hidden: list[Annotated[int, Field(ge=1)]] = []
    head_dropout: float = Field(0.0, ge=0, lt=1)
    category_embedding_dim: int | None = Field(None, ge=1)  # None: min(32, (size+1)//2)


class RNNEncoder(nn.Module):
    """(B, L, in_dim), mask (B, L) -> (B, out_dim) with out_dim = hidden_size * directions."""

    def __init__(self, cfg: RNNConfig, in_dim: int) -> None:
        super().__init__()
        self.rnn = CELLS[cfg.cell](
            in_dim,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            # nn.RNN warns about dropout with one layer, where there is nothing between layers.
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.directions = 2 if cfg.bidirectional else 1
        self.out_dim = cfg.hidden_size * self.directions
        self.pooling = None if cfg.pooling == "last" else Pooling(cfg.pooling, self.out_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(dim=1).cpu()  # (B,) pack_padded_sequence wants them on the CPU
        # Packing runs each row for exactly its length: padding never enters the state, and the
        # backward direction starts at the last real step, not at the end of the padding.
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, state = self.rnn(packed)
        if self.pooling is None:
            h_n = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n)
            # h_n: (layers * directions, B, H), layer-major; the last layer's are at the end. The
            # forward direction's final state is at each row's last real step, the backward one's
            # at step 0 after reading the whole row: together the "last" of both directions.
            return h_n[-self.directions :].transpose(0, 1).flatten(1)  # (B, directions * H)
        # (B, L, directions * H), zeros at padded steps; total_length keeps L aligned with mask.
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=mask.shape[1])
        return self.pooling(output, mask)


def build_rnn(cfg: RNNConfig, spec: InputSpec) -> nn.Module:
    """Build an RNN/LSTM/GRU model for the text/sequence columns and extra features in `spec`.

    Raises:
        ConfigError: no text/sequence column, an image column, or a bad vectors file.
    """

    def make_encoder(column: SequenceInput, in_dim: int) -> nn.Module:
        return RNNEncoder(cfg, in_dim)

    return SequenceModel.of(spec, cfg, "rnn", make_encoder, cfg.embedding_dim)
