"""NumPy `.npz` archives (from `np.savez`) as a `Table`: each array holds one entry per row along
its first axis. `np.load` runs with `allow_pickle=False`, so object arrays are refused.

What an array of N rows becomes, by shape and dtype (only the shape and dtype decide, never the
values, so the same array always reads the same way):

| array | columns |
|---|---|
| (N,) | one column KEY |
| (N, F) | F columns KEY_0 .. KEY_{F-1}; `data.columns.KEY.type: sequence` joins them back into one sequence column KEY (see `sequence_columns.resolve_runs`) |
| (N, L) or (N, L, C) numbers, next to a (N,) integer array KEY_lengths | a sequence column KEY: row i is its first KEY_lengths[i] steps (variable length) |
| (N, L, C) floats | a sequence column KEY: one (L, C) row per entry |
| (N, H, W) uint8 | an image column KEY (grayscale) |
| (N, H, W, C) uint8, or floats in [0, 1] | an image column KEY |

A float (N, H, W) array reads as a sequence (L=H steps of C=W channels); declare
`data.columns.KEY.type: image` to train on it as grayscale images with values in [0, 1].
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from forgeml.data.table import Table
from forgeml.errors import DataError

LENGTHS_SUFFIX = "_lengths"  # KEY_lengths: the real steps of each row of the sequence array KEY
SHAPES = (
    "expected (N,) for a column, (N, F) for F columns, (N, L, C) floats (or (N, L[, C]) numbers "
    "with a KEY_lengths array) for a sequence, or (N, H, W[, C]) for images"
)


def read_npz(path: Path, name: str) -> Table:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile) as e:
        raise _error(
            f"cannot read {name} as .npz ({e}); expected an archive from np.savez"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _error(f"{name} holds a single .npy array; expected an archive from np.savez")
    with npz:
        arrays = {key: _load_array(npz, key, name) for key in npz.files}
    if not arrays:
        raise _error(
            f"{name} has no data rows; expected at least one array; add rows or pass another file"
        )
    lengths = {key: a.shape[0] for key, a in arrays.items() if a.ndim > 0}
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{k!r} has {n}" for k, n in lengths.items())
        raise _error(
            f"{name}: arrays have different numbers of rows ({found}); expected the same first "
            f"dimension (one entry per row) in every array"
        )
    # KEY_lengths arrays that belong to a sequence array KEY: used for it, not a column.
    companions = {
        key: arrays[key + LENGTHS_SUFFIX]
        for key, a in arrays.items()
        if key + LENGTHS_SUFFIX in arrays and a.ndim in (2, 3) and a.dtype.kind in "fiu"
    }
    columns: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        if key.endswith(LENGTHS_SUFFIX) and key.removesuffix(LENGTHS_SUFFIX) in companions:
            continue
        if key in companions:
            found = [(key, _sequence_rows(array, companions[key], key, name))]
        else:
            found = _columns(key, array, name)
        for column, values in found:
            if column in columns:
                raise _error(
                    f"{name}: column {column!r} comes from two arrays; expected unique names; "
                    f"rename one of the arrays"
                )
            columns[column] = values
    if next(iter(lengths.values()), 0) == 0:
        raise _error(
            f"{name} has no data rows; expected at least one row; add rows or pass another file"
        )
    return Table(columns, source=name, row_label="row")


def _error(message: str) -> DataError:
    return DataError(" ".join(message.split()))


def _object_array(rows: Any) -> np.ndarray:
    # One entry per row: np.array(rows, dtype=object) would make equal-shaped rows one block.
    return np.fromiter(rows, dtype=object, count=len(rows))


def _load_array(npz: Any, key: str, name: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise _error(f"cannot read array {key!r} of {name} ({e})") from None
        raise _error(
            f"{name}: array {key!r} holds Python objects (dtype=object); pickled arrays are not "
            f"loaded for safety; save numeric or string arrays instead, e.g. arr.astype(str)"
        ) from None


def _columns(key: str, array: np.ndarray, name: str) -> list[tuple[str, np.ndarray]]:
    # Text arrays become object arrays of str, as text from every other source.
    def column(a: np.ndarray) -> np.ndarray:
        return a.astype(object) if a.dtype.kind in "US" else a

    if array.ndim == 1:
        return [(key, column(array))]
    if array.ndim == 2:  # (N, F): one column per feature
        return [(f"{key}_{j}", column(array[:, j])) for j in range(array.shape[1])]
    if array.ndim == 3 and array.dtype.kind == "f":  # (N, L, C): one (L, C) sequence per row
        return [(key, _object_array(array))]
    if array.ndim in (3, 4):  # (N, H, W) or (N, H, W, C): one image per row
        return [(key, _object_array(_to_uint8_images(array, key, name)))]
    raise _error(
        f"{name}: array {key!r} has shape {array.shape}; {SHAPES}; reshape it before saving"
    )


def _sequence_rows(array: np.ndarray, steps: np.ndarray, key: str, name: str) -> np.ndarray:
    """(N, L) or (N, L, C) and its (N,) KEY_lengths -> N rows, row i the (steps[i],) or
    (steps[i], C) view of its real steps. A row of 0 steps stays: preprocessing reports it as an
    empty sequence, naming the row (or skips it under data.on_bad_rows: skip)."""
    what = f"{name}: array {key + LENGTHS_SUFFIX!r} (the real steps of each row of {key!r})"
    width = array.shape[1]
    if steps.ndim != 1 or steps.dtype.kind not in "iu":
        raise _error(
            f"{what} has shape {steps.shape} and dtype {steps.dtype}; expected one integer per "
            f"row, shape ({len(array)},); save it as an integer array, e.g. lengths.astype(np.int64)"
        )
    outside = np.flatnonzero((steps < 0) | (steps > width))
    if len(outside):
        i = int(outside[0])
        raise _error(
            f"{what}: row {i + 1} has {int(steps[i])}, but {key!r} has {width} steps per row; "
            f"expected 0..{width}; fix the lengths or pad {key!r} to the longest row"
        )
    # Float rows: an (L, C) row of integers would read as an image (Table's contract).
    array = array if array.dtype.kind == "f" else array.astype(np.float32)
    return _object_array([row[:n] for row, n in zip(array, steps.tolist(), strict=True)])


def _to_uint8_images(array: np.ndarray, key: str, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" and array.size:
        low, high = float(array.min()), float(array.max())
        if 0.0 <= low and high <= 1.0:  # also False for NaN
            return np.round(array * 255).astype(np.uint8)
        found = f"dtype {array.dtype} with values in [{low:g}, {high:g}]"
    else:
        found = f"dtype {array.dtype}"
    sequence = (
        f"; a sequence (N, L, C) must be floats (arr.astype(np.float32)) or come with a "
        f"{key + LENGTHS_SUFFIX!r} array"
        if array.ndim == 3 and array.dtype.kind in "iu"
        else ""
    )
    raise _error(
        f"{name}: image array {key!r} has {found}; expected uint8 pixels 0..255 or floats in "
        f"[0, 1]; convert it before saving, e.g. arr.clip(0, 255).astype(np.uint8){sequence}"
    )
