"""The table task's data: read and split the sources, fit preprocessing on train, encode every split.

`prepare(config)` is what training and `forgeml validate` run; `encode(config, tables)` is its
second half, which the Keras-like `Model` uses on tables it made itself from Python objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from forgeml.config import Config
from forgeml.data.bad_rows import BadRows, check_splits
from forgeml.data.image import augment as augment_images
from forgeml.data.preprocess import Preprocessor
from forgeml.data.splits import read_splits
from forgeml.data.table import Table
from forgeml.data.tensors import TensorData
from forgeml.errors import DataError

Log = Callable[[str], None]


@dataclass
class TablePrepared:
    """Everything training needs, built from a config; `forgeml validate` stops here."""

    config: Config
    tables: dict[str, Table]  # "train", and "val"/"test" when present
    preprocessor: Preprocessor
    data: dict[str, TensorData]  # the same splits, as tensors
    # data.on_bad_rows=skip: per split, the rows skipped (`BadRows.summary`); metrics.json has it.
    bad_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    # text/sequence columns: per split, rows cut to the column's max_length (metrics.json too)
    truncated: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def train(self) -> TensorData:
        return self.data["train"]

    @property
    def val(self) -> TensorData | None:
        return self.data.get("val")

    @property
    def eval_splits(self) -> dict[str, TensorData]:
        return self.data

    @property
    def task(self) -> str:
        return self.preprocessor.target.task

    @property
    def class_names(self) -> list[str] | None:
        return class_names(self.preprocessor)


def prepare(config: Config, *, log: Log = print) -> TablePrepared:
    """Read, split and preprocess the data of `config`.

    With `data.on_bad_rows: skip`, bad rows are left out (the fit sees good train rows only),
    logged and counted per split in `TablePrepared.bad_rows`; more than `data.max_bad_fraction`
    of the rows of a source bad is a DataError.
    """
    bad: dict[str, BadRows] = {}  # skip mode: one collector per split
    tables = read_splits(config.data, config.seed, bad_rows=bad)
    if config.model.name == "pretrained":
        # A pretrained text classifier reads its text column with the checkpoint's own
        # tokenizer.json unless the column names one.
        from forgeml.tasks.table.pretrained_text import use_checkpoint_tokenizer

        config = use_checkpoint_tokenizer(config, tables["train"])
    return encode(config, tables, log=log, bad=bad)


def encode(
    config: Config, tables: dict[str, Table], *, log: Log, bad: dict[str, BadRows] | None = None
) -> TablePrepared:
    """Fit preprocessing on `tables["train"]` and turn every split into tensors.

    `bad`: per split, the rows `read_splits` skipped (skip mode); the budget of bad rows per
    source is checked after every step, so a run fails as soon as too many rows are bad.
    """
    cfg, bad = config.data, bad or {}
    rows = {split: tables[split].num_rows + found.count for split, found in bad.items()}
    sources = {split: table.source for split, table in tables.items()}

    def check() -> None:
        if bad:
            check_splits(bad, rows, sources, cfg.max_bad_fraction)

    check()
    preprocessor = Preprocessor.fit(tables["train"], cfg, log=log, bad_rows=bad.get("train"))
    check()
    data, truncated = {}, {}
    for split, table in list(tables.items()):
        inputs, target, kept = preprocessor.transform_rows(table, bad_rows=bad.get(split))
        check()
        cut = {column: n for column, n in preprocessor.truncated.items() if n}
        if cut:
            truncated[split] = cut
            for column, n in cut.items():
                limit = next(f.max_length for f in preprocessor.features if f.name == column)
                log(f"{split}: {n:,} rows of '{column}' longer than {limit} were truncated")
        if not len(kept):  # possible with a high max_bad_fraction
            bad[split].check(rows[split], 1.0, f"{table.source} ({split} split)")
        if len(kept) < table.num_rows:
            tables[split] = table.take(kept)
        data[split] = TensorData(inputs, target)
    for split, found in bad.items():
        if found.count:
            log(f"{split}: {found.describe(sources[split])}")
    summary = {split: found.summary(sources[split], rows[split]) for split, found in bad.items()}
    return TablePrepared(config, tables, preprocessor, data, bad_rows=summary, truncated=truncated)


def class_names(pre: Preprocessor) -> list[str] | None:
    classes = pre.target.classes
    return [str(c) for c in classes] if classes is not None else None


def target_scale(pre: Preprocessor) -> tuple[float, float] | None:
    """A regression target's (mean, std): metrics are reported in the target's own units."""
    t = pre.target
    return (t.mean, t.std) if t.task == "regression" else None


def class_weights(prepared: TablePrepared) -> torch.Tensor | None:
    """The loss's (C,) class weights, or (K,) per-label positive weights for multi-label, that
    `train.loss.class_weights` resolves to on the train split; None: an unweighted loss."""
    spec, pre = prepared.config.train.loss.class_weights, prepared.preprocessor
    if spec is None or pre.target.task == "regression":
        return None
    if spec == "auto":
        return pre.class_weights(prepared.train.target)
    names = class_names(pre) or []
    unknown = sorted(set(spec) - set(names))
    if unknown:
        raise DataError(
            f"train.loss.class_weights names classes {unknown} that are not in the target; "
            f"expected some of: {', '.join(names)}"
        )
    return torch.tensor([float(spec.get(n, 1.0)) for n in names], dtype=torch.float32)


def image_augment(config: Config) -> Callable | None:
    """Random crop and flip of training images, as `data.image` asks; None: no augmentation."""
    crop, flip = config.data.image.crop_padding, config.data.image.flip
    if not crop and not flip:
        return None

    def augment(inputs: dict[str, torch.Tensor], generator: torch.Generator):
        images = augment_images(inputs["image"], crop_padding=crop, flip=flip, generator=generator)
        return {**inputs, "image": images}

    return augment
