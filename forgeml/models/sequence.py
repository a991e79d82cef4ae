"""The parts every text/sequence family composes: input stage, tabular side, pooling, head.

A family (rnn.py, transformer.py, cnn1d.py) only supplies an encoder factory
`(SequenceInput, in_dim) -> encoder`, where `encoder(x: (B, L, in_dim), mask: (B, L) bool)`
returns (B, encoder.out_dim). `SequenceModel` does the rest:

    text ids (B, L) --TokenEmbedding--> (B, L, E) --+
    sequence values (B, L, C) ----------------------+--> encoder --> (B, H) per column --+
    numeric (B, F) + one embedding per category column --------------------------------+
                                                           concat --> Head --> (B, out_dim)

Padding (mask False) never changes a row's output: ids at padded steps are replaced by the
padding id and sequence values by 0 before the encoder sees them, and the encoders and pooling
helpers below ignore padded steps, so a row's output does not depend on how far the batch was
padded or on what sits in the padding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.models.mlp import ACTIVATIONS, embedding_dim_for
from forgeml.packages import PREFIX, package_folder
from forgeml.schema import InputSpec, SequenceInput

# (column, in_dim) -> encoder; encoder(x (B, L, in_dim), mask (B, L)) -> (B, encoder.out_dim)
EncoderFactory = Callable[[SequenceInput, int], nn.Module]


# --------------------------------------------------------------------------- checks


def check_sequence_spec(spec: InputSpec, family: str) -> None:
    """Raise a one-line ConfigError when a sequence family does not fit the data."""
    if not spec.sequences:
        raise ConfigError(
            f"model.name={family} needs a text or sequence column, but the data has none; "
            "use model.name=mlp for tabular data or declare a text/sequence column in data.columns"
        )
    if spec.image_shape is not None:
        raise ConfigError(
            f"model.name={family} does not take an image column together with text/sequence "
            "columns; use model.name=cnn for images or drop the image column with data.exclude"
        )


# --------------------------------------------------------------------------- text input


def read_vectors(path: str, vocab: tuple[str, ...], dim: int, dim_key: str) -> dict[int, Tensor]:
    """Vectors for the tokens of `vocab` found in a word2vec/GloVe text file, or in the input
    embeddings of a Hugging Face checkpoint (a directory, or pkg:NAME[/SUB]; see
    `checkpoint_vectors`).

    Format: an optional first line "<count> <dim>", then one "token v1 ... v_dim" per line.
    Only the lines of tokens in `vocab` are converted to numbers (a GloVe file has ~400k lines,
    a vocab a few thousand), but every line is checked for the right number of fields.

    Returns:
        {token id: (dim,) float32 tensor}; id 0 (padding) is never included.

    Raises:
        ConfigError: missing/unreadable file, a malformed line (named by number), or vectors whose
            width differs from `dim` (naming both and the config key `dim_key` to change).
    """
    if path.startswith(PREFIX) or Path(path).is_dir():
        return checkpoint_vectors(path, vocab, dim, dim_key)
    ids = {token: i for i, token in enumerate(vocab) if i > 0}
    found: dict[int, Tensor] = {}
    try:
        handle = Path(path).open("rb")
    except OSError as exc:
        raise ConfigError(
            f"model.vectors: cannot read vectors file {path}: {exc.strerror or exc}; "
            "give the path of a word2vec/GloVe text file"
        ) from None
    width: int | None = None  # the file's vector width: from the header or the first line
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                parts = raw.decode("utf-8").split()
            except UnicodeDecodeError:
                raise ConfigError(
                    f"model.vectors: {path} line {number} is not UTF-8 text; expected a "
                    "word2vec/GloVe text file (convert a binary word2vec file to text format)"
                ) from None
            if not parts:
                continue
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                width = int(parts[1])  # word2vec header "<count> <dim>"
                if width != dim:
                    raise _dim_mismatch(path, number, width, dim, dim_key)
                continue
            if width is None:
                width = len(parts) - 1
                if width != dim:
                    raise _dim_mismatch(path, number, width, dim, dim_key)
            if len(parts) - 1 != width:
                raise ConfigError(
                    f"model.vectors: {path} line {number} has {len(parts) - 1} values after the "
                    f"token, expected {width}; every line must be 'token v1 ... v{width}'"
                )
            token_id = ids.get(parts[0])
            if token_id is None or token_id in found:  # not in the vocab, or a repeated token
                continue
            try:
                values = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise ConfigError(
                    f"model.vectors: {path} line {number} has a value that is not a number; "
                    "every line must be 'token v1 ... vN' with N numbers"
                ) from None
            found[token_id] = torch.from_numpy(values)
    if width is None:
        raise ConfigError(
            f"model.vectors: {path} holds no vectors (it is empty); "
            "give a word2vec/GloVe text file with one 'token v1 ... vN' per line"
        )
    return found


# Input-embedding weights by architecture: BERT family, GPT-2, Llama/Mistral/Qwen, T5/BART.
EMBEDDING_KEYS = ("word_embeddings.weight", "wte.weight", "embed_tokens.weight", "shared.weight")


def checkpoint_vectors(
    path: str, vocab: tuple[str, ...], dim: int, dim_key: str
) -> dict[int, Tensor]:
    """Rows of a Hugging Face checkpoint's input-embedding matrix for the tokens of `vocab`,
    looked up by token string in the checkpoint's tokenizer.json (static vectors: the
    checkpoint's network is not used). With the checkpoint's own tokenizer as the text
    column's (`tokenizer_file: pkg:...` or DIR/tokenizer.json) every token is found.

    Raises:
        ConfigError: no tokenizer.json or model.safetensors, no input-embedding matrix, or
            vectors of another width than `dim`.
    """
    from safetensors import safe_open
    from tokenizers import Tokenizer

    folder = package_folder(path, "model.vectors") if path.startswith(PREFIX) else Path(path)
    tokenizer, weights = folder / "tokenizer.json", folder / "model.safetensors"
    for needed in (tokenizer, weights):
        if not needed.is_file():
            raise ConfigError(
                f"model.vectors: {folder} has no {needed.name}; expected a word2vec/GloVe text "
                "file, or a Hugging Face checkpoint directory with tokenizer.json and "
                "model.safetensors"
            )
    token_ids = Tokenizer.from_file(str(tokenizer)).get_vocab()  # token -> checkpoint row
    with safe_open(str(weights), framework="pt") as f:
        names = [k for k in f.keys() if k.endswith(EMBEDDING_KEYS)]
        if not names:
            raise ConfigError(
                f"model.vectors: {weights} has no input-embedding matrix (no tensor named "
                f"*{', *'.join(EMBEDDING_KEYS)}); give a word2vec/GloVe text file instead"
            )
        matrix = f.get_tensor(names[0]).float()  # (checkpoint vocab, width)
    if matrix.shape[1] != dim:
        raise ConfigError(
            f"model.vectors: {path} has {matrix.shape[1]}-dimensional input embeddings, but "
            f"the embedding dim is {dim}; set {dim_key}={matrix.shape[1]}"
        )
    return {
        i: matrix[token_ids[token]].clone()
        for i, token in enumerate(vocab)
        if i > 0 and token in token_ids and token_ids[token] < len(matrix)
    }


def _dim_mismatch(path: str, line: int, width: int, dim: int, dim_key: str) -> ConfigError:
    return ConfigError(
        f"model.vectors: {path} has {width}-dimensional vectors (line {line}), but the "
        f"embedding dim is {dim}; set {dim_key}={width} or use a {dim}-dimensional vectors file"
    )


class TokenEmbedding(nn.Module):
    """Token ids (B, L) -> (B, L, dim), optionally initialised from a vectors file.

    Tokens found in the file get its vector; the others keep nn.Embedding's random init; the
    padding row (id 0) stays zero and gets no gradient. `vectors_found` is how many vocab tokens
    were in the file (None without a file), for the caller to report.
    """

    def __init__(
        self,
        column: SequenceInput,
        dim: int,
        vectors: str | None = None,
        freeze: bool = False,
        dim_key: str = "model.embedding_dim",
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(column.vocab_size, dim, padding_idx=0)
        self.vectors_found: int | None = None
        if vectors is not None:
            if not column.vocab:
                raise ConfigError(
                    f"model.vectors is set, but text column {column.name!r} has no token strings "
                    "to look up in the vectors file; remove model.vectors"
                )
            found = read_vectors(vectors, column.vocab[: column.vocab_size], dim, dim_key)
            if found:
                with torch.no_grad():
                    rows = torch.tensor(sorted(found))
                    self.embedding.weight[rows] = torch.stack([found[i] for i in sorted(found)])
            self.vectors_found = len(found)
        if freeze:
            # Not trainable: the optimizer skips it (grad stays None) and DDP ignores it.
            self.embedding.weight.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)  # (B, L) int64 -> (B, L, dim)


# --------------------------------------------------------------------------- tabular side


class TabularFeatures(nn.Module):
    """numeric (B, F) and one embedding per category column -> (B, out_dim), concatenated."""

    def __init__(self, spec: InputSpec, category_embedding_dim: int | None = None) -> None:
        super().__init__()
        self.has_numeric = spec.num_numeric > 0
        # Same size rule as the MLP, so a column is embedded alike whichever family reads it.
        self.embeddings = nn.ModuleList(
            nn.Embedding(size, embedding_dim_for(size, category_embedding_dim))
            for size in spec.category_sizes
        )
        self.out_dim = spec.num_numeric + sum(e.embedding_dim for e in self.embeddings)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        parts: list[Tensor] = []
        if self.has_numeric:
            parts.append(inputs["numeric"])  # (B, F)
        if len(self.embeddings) > 0:
            category = inputs["category"]  # (B, K) int64
            parts.extend(emb(category[:, k]) for k, emb in enumerate(self.embeddings))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, out_dim)


# --------------------------------------------------------------------------- pooling


def pool_last(x: Tensor, mask: Tensor) -> Tensor:
    """(B, L, H) -> (B, H): the last real step of each row (rows are left-aligned)."""
    last = mask.sum(dim=1) - 1  # (B,) index of the last True
    return x[torch.arange(x.shape[0], device=x.device), last]


def pool_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, L, H) -> (B, H): mean over real steps only."""
    # masked_fill, not a multiply: 0 * inf/nan garbage at padded steps would still be nan.
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)  # (B, H)
    return total / mask.sum(dim=1, keepdim=True).to(x.dtype)


def pool_max(x: Tensor, mask: Tensor) -> Tensor:
    """(B, L, H) -> (B, H): max over real steps only (every row has one)."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


class AttentionPooling(nn.Module):
    """Additive attention pooling: weights softmax_L(v . tanh(W x_t)), padded steps get weight 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)  # a bias would shift every score alike

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # keep nan/inf garbage out of 0-weight terms
        scores = self.score(torch.tanh(self.project(x))).squeeze(-1)  # (B, L)
        # -inf before the softmax: padded steps get exactly 0 weight, whatever the batch's L.
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, L)
        return torch.einsum("bl,blh->bh", weights, x)  # (B, H)


POOLING_FUNCTIONS = {"last": pool_last, "mean": pool_mean, "max": pool_max}


class Pooling(nn.Module):
    """(B, L, H), mask (B, L) -> (B, H) by name: last | mean | max | attention."""

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        self.kind = kind
        # Only attention has parameters; the others get none, so no parameter sits unused (DDP).
        self.attention = AttentionPooling(dim) if kind == "attention" else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.attention is not None:
            return self.attention(x, mask)
        return POOLING_FUNCTIONS[self.kind](x, mask)


# --------------------------------------------------------------------------- head


class Head(nn.Module):
    """(B, in_dim) -> hidden layers (activation, dropout) -> Linear -> (B, out_dim)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: list[int],
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(in_dim, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = size
        layers.append(nn.Linear(in_dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


# --------------------------------------------------------------------------- the model


class SequenceModel(nn.Module):
    """One encoder per text/sequence column + the tabular side, joined at a head.

    Args:
        spec: the inputs; must have at least one text/sequence column and no image.
        family: the model name, for error messages.
        make_encoder: builds the encoder of one column from it and its per-step width (the
            embedding dim for text, C for sequences).
        embedding_dim: token embedding width of text columns.
        vectors, freeze_vectors: initialise text embeddings from this file / keep them fixed.
        dim_key: the config key that sets `embedding_dim`, named when a vectors file disagrees.
    """

    def __init__(
        self,
        spec: InputSpec,
        *,
        family: str,
        make_encoder: EncoderFactory,
        embedding_dim: int,
        vectors: str | None = None,
        freeze_vectors: bool = False,
        dim_key: str = "model.embedding_dim",
        head_hidden: list[int] | None = None,
        head_dropout: float = 0.0,
        head_activation: str = "relu",
        category_embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_sequence_spec(spec, family)
        if vectors is not None and not any(s.kind == "text" for s in spec.sequences):
            raise ConfigError(
                "model.vectors is set, but the data has no text column to embed; "
                "remove model.vectors"
            )
        # Lists, not dicts keyed by column: a column name may hold '.', which ModuleDict rejects.
        self.keys = [(s.key, s.mask_key, s.kind == "text") for s in spec.sequences]
        embedders: list[nn.Module] = []
        encoders: list[nn.Module] = []
        for column in spec.sequences:
            if column.kind == "text":
                embed = TokenEmbedding(column, embedding_dim, vectors, freeze_vectors, dim_key)
                embedders.append(embed)
                encoders.append(make_encoder(column, embed.dim))
            else:
                embedders.append(nn.Identity())  # the family decides whether to project C
                encoders.append(make_encoder(column, column.channels))
        self.embedders = nn.ModuleList(embedders)
        self.encoders = nn.ModuleList(encoders)
        tabular = TabularFeatures(spec, category_embedding_dim)
        self.tabular = tabular if tabular.out_dim > 0 else None
        in_dim = sum(e.out_dim for e in self.encoders) + tabular.out_dim
        self.head = Head(in_dim, spec.out_dim, head_hidden or [], head_dropout, head_activation)

    @classmethod
    def of(
        cls,
        spec: InputSpec,
        cfg: Any,
        family: str,
        make_encoder: EncoderFactory,
        embedding_dim: int,
        *,
        dim_key: str = "model.embedding_dim",
        head_activation: str = "relu",
    ) -> SequenceModel:
        """The model of a sequence family's config `cfg`: the fields every such family has
        (vectors, freeze_vectors, head_hidden, head_dropout, category_embedding_dim) read here."""
        return cls(
            spec,
            family=family,
            make_encoder=make_encoder,
            embedding_dim=embedding_dim,
            vectors=cfg.vectors,
            freeze_vectors=cfg.freeze_vectors,
            dim_key=dim_key,
            head_hidden=cfg.head_hidden,
            head_dropout=cfg.head_dropout,
            head_activation=head_activation,
            category_embedding_dim=getattr(cfg, "category_embedding_dim", None),
        )

    @property
    def vectors_found(self) -> dict[str, int]:
        """Per text column, how many vocab tokens the vectors file had (empty without one)."""
        return {
            key.removeprefix("text:"): embed.vectors_found
            for (key, _, _), embed in zip(self.keys, self.embedders, strict=True)
            if isinstance(embed, TokenEmbedding) and embed.vectors_found is not None
        }

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        parts: list[Tensor] = []
        for (key, mask_key, is_text), embed, encoder in zip(
            self.keys, self.embedders, self.encoders, strict=True
        ):
            mask = inputs[mask_key]  # (B, L) bool, True at real steps
            x = inputs[key]
            if is_text:
                # Whatever ids sit at padded steps (even out of range), embed the padding id.
                x = embed(x.masked_fill(~mask, 0))  # (B, L) -> (B, L, E)
            else:
                x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, L, C), padding zeroed
            parts.append(encoder(x, mask))  # (B, H_column)
        if self.tabular is not None:
            parts.append(self.tabular(inputs))  # (B, F + sum of category dims)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, in_dim)
        return self.head(x)  # (B, out_dim)
