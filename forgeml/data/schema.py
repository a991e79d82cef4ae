"""What a model needs to know about its inputs and outputs.

The preprocessor builds an `InputSpec` from the training split; model builders read it. The batch
a model's forward receives is a dict with only the keys the spec has:

    "numeric":  (B, num_numeric) float32   standardised numeric columns, in feature order
    "category": (B, K) int64               one index per category column; 0 is the unknown bucket
    "image":    (B, C, H, W) float32       the (single) image column, normalised

`FeatureSpec` and `TargetSpec` are the fitted per-column state behind it, saved as JSON in the run
directory's preprocess/features.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["binary", "multiclass", "regression"]


@dataclass(frozen=True)
class InputSpec:
    num_numeric: int  # width of inputs["numeric"]; 0 when there is no numeric column
    category_sizes: tuple[
        int, ...
    ]  # vocab size (incl. unknown bucket) per column of inputs["category"]
    image_shape: tuple[int, int, int] | None  # (C, H, W) of inputs["image"], None without images
    out_dim: int  # width of the model output: classes for multiclass, 1 for binary and regression
    task: Task


@dataclass
class FeatureSpec:
    """One input column as fitted on the train split (JSON-serialisable)."""

    name: str
    type: Literal["numeric", "category", "image"]
    inferred: bool  # False: declared in data.columns
    fill: str = "error"  # error | mean | median | constant
    fill_value: float | str | None = None  # the resolved value put in for a missing one
    mean: float | list[float] | None = None  # numeric: scalar; image: one per channel
    std: float | list[float] | None = None
    vocab: list[str] | None = None  # category: known values; vocab[i] has index i + 1, 0 = unknown
    channels: int | None = None  # image only
    height: int | None = None
    width: int | None = None


@dataclass
class TargetSpec:
    """The target column: classes for classification, scale for regression."""

    name: str
    task: Task  # binary (2 classes) | multiclass | regression
    classes: list | None  # label values as they came in (int/float/str), sorted; None: regression
    mean: float | None = None  # regression: targets are (y - mean) / std while training
    std: float | None = None
