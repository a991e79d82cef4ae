"""What a model needs to know about its inputs and outputs.

The preprocessor builds an `InputSpec` from the training split; model builders read it. The batch
a model's forward receives is a dict with only the keys the spec has:

    "numeric":  (B, num_numeric) float32   standardised numeric columns, in feature order
    "category": (B, K) int64               one index per category column; 0 is the unknown bucket
    "image":    (B, C, H, W) float32       the (single) image column, normalised
    "text:<col>":  (B, L) int64            token ids of text column <col>; 0 is padding
    "seq:<col>":   (B, L, C) float32       numeric sequence column <col>, normalised per channel
    "mask:<col>":  (B, L) bool             True at real steps of text/sequence column <col>; rows
                                           are left-aligned (padding only at the end) and every
                                           row has at least one real step. L <= max_length and
                                           may differ from batch to batch (padded to the longest).

`FeatureSpec` and `TargetSpec` are the fitted per-column state behind it, saved as JSON in the run
directory's preprocess/features.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["binary", "multiclass", "multilabel", "regression"]


@dataclass(frozen=True)
class SequenceInput:
    """One text or numeric-sequence column as the model sees it."""

    name: str  # the column; batch keys are "text:<name>" or "seq:<name>", and "mask:<name>"
    kind: Literal["text", "sequence"]
    max_length: int  # the longest L any batch can have
    vocab_size: int = 0  # text: ids are in [0, vocab_size); 0 = padding. sequence: 0
    channels: int = 0  # sequence: C, values per step. text: 0
    # text: the token string of each id (index = id, vocab[0] is the padding token), for
    # initialising embeddings from a vectors file. Empty for sequences.
    vocab: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return ("text:" if self.kind == "text" else "seq:") + self.name

    @property
    def mask_key(self) -> str:
        return "mask:" + self.name


@dataclass(frozen=True)
class TokenSpec:
    """What a language model reads and predicts: token ids in [0, vocab_size).

    Its batch is {"tokens": (B, T) int64}; its output (B, T, V) logits with V >= vocab_size.
    """

    vocab_size: int


@dataclass(frozen=True)
class InputSpec:
    num_numeric: int  # width of inputs["numeric"]; 0 when there is no numeric column
    category_sizes: tuple[
        int, ...
    ]  # vocab size (incl. unknown bucket) per column of inputs["category"]
    image_shape: tuple[int, int, int] | None  # (C, H, W) of inputs["image"], None without images
    out_dim: int  # model output width: classes (multiclass), labels (multilabel), else 1
    task: Task
    sequences: tuple[SequenceInput, ...] = ()  # text and numeric-sequence columns, in column order


@dataclass
class FeatureSpec:
    """One input column as fitted on the train split (JSON-serialisable)."""

    name: str
    type: Literal["numeric", "category", "image", "text", "sequence"]
    inferred: bool  # False: declared in data.columns
    fill: str = "error"  # error | mean | median | constant
    fill_value: float | str | None = None  # the resolved value put in for a missing one
    mean: float | list[float] | None = None  # numeric: scalar; image: one per channel
    std: float | list[float] | None = None
    vocab: list[str] | None = None  # category: known values; vocab[i] has index i + 1, 0 = unknown
    channels: int | None = None  # image only
    height: int | None = None
    width: int | None = None
    max_length: int | None = None  # text/sequence: the longest L a batch can have
    text: dict | None = None  # text: the fitted TextEncoder.state() (cleaning, vocab/tokenizer)
    # sequence: {"config": SequenceConfig fields, "channels": C, "scaler": state or None}
    sequence: dict | None = None


@dataclass
class TargetSpec:
    """The target column: classes for classification, scale for regression."""

    name: str
    task: Task  # binary (2 classes) | multiclass | multilabel | regression
    # label values as they came in (int/float/str), sorted; multilabel: the label names (a row's
    # target is a list of them); None: regression
    classes: list | None
    mean: float | None = None  # regression: targets are (y - mean) / std while training
    std: float | None = None
