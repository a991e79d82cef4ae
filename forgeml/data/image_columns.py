"""Image columns: size, channels and per-channel statistics fitted on TRAIN, and decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from forgeml.data.bad_rows import BadRows
from forgeml.data.columns import RowRefs, value_key
from forgeml.data.config import DataConfig
from forgeml.data.image import decode_images, is_grayscale, load_image
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError
from forgeml.schema import FeatureSpec


@dataclass
class DecodedImages:
    """Images `fit` decoded from a train column; the first `transform` of it reuses them."""

    values: np.ndarray  # the column they come from, recognised by identity
    rows: np.ndarray  # (K,) ascending indices into it of the images decoded
    images: torch.Tensor  # (K, C, H, W) float32 in [0, 1]

    def take(
        self, table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
    ) -> tuple[torch.Tensor, np.ndarray] | None:
        """The images of `rows` of this column and their positions in `rows`; None when the
        column is another one."""
        if table.columns[f.name] is not self.values or not len(self.rows):
            return None
        at = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        hit = self.rows[at] == rows
        # Rows fit could not decode: decode them again, to record them (or raise) here too.
        if len(decode_column(table, f, rows[~hit], bad_rows)[1]):
            return None  # one can be read now: these are not the rows fit saw
        if len(rows) == len(self.rows) and hit.all():
            return self.images, np.arange(len(rows))
        return self.images[torch.from_numpy(at[hit])], np.flatnonzero(hit)


def decode_column(
    table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
) -> tuple[torch.Tensor, np.ndarray]:
    """(K, C, H, W) images of `rows` in [0, 1] and their (K,) positions in `rows`."""
    if bad_rows is None:
        check_images_present(table, f, rows)
    return _decode(table, f, rows, bad_rows)


def _decode(
    table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
) -> tuple[torch.Tensor, np.ndarray]:
    """(K, C, H, W) images of `rows` at the size and channels of `f`, and their positions."""
    return decode_images(
        table.columns[f.name][rows],
        size=(f.height, f.width),
        channels=f.channels,
        refs=RowRefs(table, rows),
        base_dir=image_base_dir(table),
        bad_rows=bad_rows,
        column=f.name,
    )


def check_images_present(table: Table, f: FeatureSpec, rows: np.ndarray) -> None:
    values = table.columns[f.name]
    for i in rows:
        v = values[i]
        if not isinstance(v, np.ndarray) and value_key(v) is None:
            raise DataError(
                f"{table.row_ref(i)}, column '{f.name}': missing image; every row needs an image "
                "path or array; fill it in or drop the row"
            )


def fit_image(
    table: Table, spec: FeatureSpec, cfg: DataConfig, rows: np.ndarray, bad_rows: BadRows | None
) -> DecodedImages:
    """Size, channels and per-channel statistics from the images of `rows`, decoded once."""
    if spec.fill != "error":
        raise ConfigError(
            f"data.columns.{spec.name}.fill={spec.fill}: column '{spec.name}' holds images, "
            "which cannot be filled in; remove the fill rule and give every row an image"
        )
    values = table.columns[spec.name]
    if bad_rows is None:
        check_images_present(table, spec, rows)
    first = None  # the first image that can be read sets what the config leaves open
    for i in rows:
        try:
            first = load_image(values[i], ref=table.row_ref(int(i)), base_dir=image_base_dir(table))
            break
        except DataError:
            if bad_rows is None:
                raise  # skip mode: decode_images below records it
    spec.height, spec.width = cfg.image.size or (first.shape[:2] if first is not None else (1, 1))
    spec.channels = cfg.image.channels or (1 if first is None or is_grayscale(first) else 3)
    images, decoded = _decode(table, spec, rows, bad_rows)  # (K, C, H, W) in [0, 1]
    means, stds = [], []
    for c in range(spec.channels):
        channel = images[:, c].double()
        means.append(float(channel.mean()))
        stds.append(float(channel.std(correction=0)) or 1.0)
    spec.mean, spec.std = means, stds
    return DecodedImages(values, rows[decoded], images)


def image_base_dir(table: Table) -> Path | None:
    """Relative image paths in a data file are also looked up next to that file."""
    return None if table.source.startswith("builtin:") else Path(table.source).parent
