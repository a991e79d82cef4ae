"""Decide what the target is (classes or numbers), and split one table into train/val/test.

The target kind is needed before splitting (a classification target is split stratified), so it
lives here, with the value parser that preprocessing shares: `parse_floats` follows the `Table`
conventions (None, NaN or an empty string is a missing value).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from forgeml.data.config import DataConfig
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError

# More distinct integer values than this makes an integer target a regression target.
MAX_INTEGER_CLASSES = 20


def is_missing(v: object) -> bool:
    """None, NaN or a blank string: a missing value (`Table` conventions)."""
    if v is None:
        return True
    if isinstance(v, float | np.floating):
        return bool(np.isnan(v))
    return isinstance(v, str) and not v.strip()


def parse_floats(values: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Parse a column as numbers.

    Returns (N,) float64 with NaN for missing values, and the index of the first value that is
    not a finite number (None when all parse). Numeric arrays are converted without a Python loop.
    """
    floats, bad = parse_float_column(values, max_bad=1)
    return floats, (int(bad[0]) if len(bad) else None)


def parse_float_column(
    values: np.ndarray, *, max_bad: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column as numbers and find every value that is not a finite number.

    Returns (N,) float64, NaN for missing and for bad values, and the ascending (B,) int64
    indices of the bad values. With `max_bad`, the search stops once that many are found (the
    floats after the last one found are then left NaN).
    """
    if values.dtype.kind in "biuf":
        floats, unparsable = values.astype(np.float64), np.empty(0, dtype=np.int64)
    else:
        try:  # one numpy call: it calls float() on each object ("3.5" -> 3.5, None -> NaN)
            floats, unparsable = values.astype(np.float64), np.empty(0, dtype=np.int64)
        except (TypeError, ValueError):  # a blank string, a word or an array somewhere
            floats, unparsable = _parse_in_chunks(_blanks_as_none(values), max_bad)
    bad = np.union1d(unparsable, np.flatnonzero(np.isinf(floats)))
    floats[bad] = np.nan
    return floats, bad[:max_bad]


def _blanks_as_none(values: np.ndarray) -> np.ndarray:
    """Blank cells ("" and " ", as in 'a, ,b') as None, which numpy parses as NaN."""
    try:
        blank = (values == "") | (values == " ")
    except ValueError:  # an array among the values: left to the value-by-value parse
        return values
    return np.where(blank, None, values) if blank.any() else values


# Chunks of at most this many values are parsed value by value when numpy cannot parse them.
_LEAF = 32


def _parse_in_chunks(values: np.ndarray, max_bad: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(N,) float64 (NaN: missing, bad or not reached) and the indices of unparsable values.

    A chunk numpy cannot parse is halved and each half tried again, so clean stretches stay one
    numpy call each and only the few values around a bad one are parsed in Python.
    """
    floats = np.full(len(values), np.nan)
    unparsable: list[int] = []
    stack = [(0, len(values))]
    while stack:
        start, stop = stack.pop()
        try:
            floats[start:stop] = values[start:stop].astype(np.float64)
            continue
        except (TypeError, ValueError):
            pass
        if stop - start > _LEAF:
            middle = (start + stop) // 2
            stack += [(middle, stop), (start, middle)]  # left half first: bad values in order
            continue
        for i in range(start, stop):
            try:
                floats[i] = float(values[i])
            except (TypeError, ValueError):
                if not is_missing(values[i]):  # other blank strings stay NaN
                    unparsable.append(i)
        if max_bad is not None and len(unparsable) >= max_bad:
            break
    return floats, np.array(unparsable, dtype=np.int64)


def is_numeric_column(values: np.ndarray, max_bad_fraction: float = 0.0) -> bool:
    """Every non-missing value is a number or a numeric string; booleans are categories.

    With `max_bad_fraction` > 0 (data.on_bad_rows=skip), up to that share of the values (at
    least one) may be something else, as long as numbers outnumber them: those rows are then bad
    rows. A typo in a small numeric column is thus a bad row, not a reason to make it a category.
    """
    if values.dtype.kind in "iuf":
        return True
    if values.dtype.kind != "O":
        return False
    if any(isinstance(v, bool | np.bool_) for v in values):
        return False
    allowed = math.ceil(max_bad_fraction * len(values) - 1e-9)  # - 1e-9: 0.01 * 300 is 3
    floats, bad = parse_float_column(values, max_bad=allowed + 1)
    if not len(bad):
        return True
    return len(bad) <= allowed and int(np.count_nonzero(~np.isnan(floats))) > len(bad)


def infer_target_kind(
    table: Table, cfg: DataConfig, *, max_bad_fraction: float = 0.0
) -> Literal["category", "numeric", "labels"]:
    """Whether `cfg.target` holds classes, numbers or lists of labels (multi-label).

    A declared `data.columns.<target>.type` wins. Otherwise the target is numeric when every value
    is a number (but `max_bad_fraction` of them, see `is_numeric_column`) and either some value
    has a fraction or there are more than 20 distinct values.
    """
    name = cfg.target
    if name not in table.columns:
        raise DataError(
            f"{table.source}: target column '{name}' not found; columns are: "
            f"{', '.join(table.column_names)}; set data.target to one of them"
        )
    declared = cfg.columns.get(name)
    if declared is not None and declared.type is not None:
        if declared.type in ("image", "text", "sequence"):
            raise ConfigError(
                f"data.columns.{name}.type={declared.type}: the target column '{name}' cannot "
                f"be of type {declared.type}; declare it numeric, category or labels"
            )
        return declared.type
    values = table.columns[name]
    present = [v for v in values[:1000] if not is_missing(v)]
    if present and all(_is_label_list(v) for v in present):
        return "labels"  # lists of labels: multi-label classification
    if not is_numeric_column(values, max_bad_fraction):
        return "category"
    floats, _ = parse_float_column(values)
    floats = floats[~np.isnan(floats)]
    fractional = bool(np.any(floats != np.round(floats)))
    return "numeric" if fractional or len(np.unique(floats)) > MAX_INTEGER_CLASSES else "category"


def split_table(
    table: Table,
    *,
    train: float,
    val: float,
    test: float,
    seed: int,
    stratify_by: np.ndarray | None,
    target: str = "label",
) -> tuple[Table, Table | None, Table | None]:
    """Split rows randomly (deterministic per seed) into train/val/test by ratio.

    Args:
        stratify_by: (N,) class label per row as strings; given, every split keeps the class
            proportions (per-class shuffles, largest-remainder allocation).
        target: the target column's name, for error messages.

    Returns:
        (train, val, test); val/test are None when their ratio is 0. Rows keep file order and
        their original row numbers.
    """
    n = table.num_rows
    if n == 0:
        raise DataError(f"{table.source} is empty; expected at least one data row")
    ratios = np.array([train, val, test], dtype=np.float64)
    totals = _largest_remainder(n, ratios)
    names = ("train", "val", "test")
    for split, ratio, size in zip(names, ratios, totals, strict=True):
        if ratio > 0 and size == 0:
            raise DataError(
                f"{table.source}: the data set is too small for the split ratios: {n} rows give "
                f"{split} 0 rows at train/val/test = {train:g}/{val:g}/{test:g}; add rows, "
                f"raise data.split.{split}, or set data.split.{split}=0 and adjust the others"
            )
    rng = np.random.default_rng(seed)
    if stratify_by is None:
        order = rng.permutation(n)
        bounds = np.cumsum(totals)[:-1]
        parts = np.split(order, bounds)
    else:
        parts = _stratified(table, np.asarray(stratify_by), ratios, totals, rng, target)
    tables = [table.take(np.sort(p)) if r > 0 else None for p, r in zip(parts, ratios, strict=True)]
    return tables[0], tables[1], tables[2]  # type: ignore[return-value]


def _largest_remainder(count: int, ratios: np.ndarray) -> np.ndarray:
    """Integer sizes summing to `count`, proportional to `ratios` (Hamilton's method)."""
    exact = count * ratios / ratios.sum()
    sizes = np.floor(exact).astype(np.int64)
    # Ties go to the earlier split (train first), so allocation is deterministic.
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: count - sizes.sum()]] += 1
    return sizes


def _stratified(
    table: Table,
    labels: np.ndarray,
    ratios: np.ndarray,
    totals: np.ndarray,
    rng: np.random.Generator,
    target: str,
) -> list[np.ndarray]:
    classes, inverse = np.unique(labels.astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    for c, count in zip(classes, counts, strict=True):
        if count == 1:
            raise DataError(
                f"{table.source}: class '{c}' of target column '{target}' has only 1 row; a "
                "stratified split needs at least 2 rows per class; add rows, drop that class, "
                "or set data.split.stratify=false"
            )
    # (num_classes, 3) sizes: floors of the exact shares, then the leftover rows go to the
    # largest remainders, as long as both the class and the split still need rows. This keeps
    # every class's proportions within a row and the overall sizes equal to `totals`.
    exact = counts[:, None] * ratios[None, :] / ratios.sum()
    sizes = np.floor(exact).astype(np.int64)
    class_need = counts - sizes.sum(axis=1)
    split_need = totals - sizes.sum(axis=0)
    remainders = exact - sizes
    for flat in np.argsort(-remainders, axis=None, kind="stable"):
        c, s = divmod(int(flat), 3)
        if class_need[c] > 0 and split_need[s] > 0 and ratios[s] > 0:
            sizes[c, s] += 1
            class_need[c] -= 1
            split_need[s] -= 1
    for c in np.flatnonzero(class_need):  # rare leftovers: any split that still needs rows
        for s in np.flatnonzero(split_need > 0):
            take = min(class_need[c], split_need[s])
            sizes[c, s] += take
            class_need[c] -= take
            split_need[s] -= take
    # With a small train ratio a 2-row class could land entirely in val/test; the model must see
    # every class once, so move one row back to train (overall sizes shift by a row at most).
    for c in np.flatnonzero(sizes[:, 0] == 0):
        sizes[c, int(np.argmax(sizes[c]))] -= 1
        sizes[c, 0] += 1
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in range(len(classes)):
        rows = rng.permutation(np.flatnonzero(inverse == c))
        for s, chunk in enumerate(np.split(rows, np.cumsum(sizes[c])[:-1])):
            parts[s].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def _is_label_list(value: object) -> bool:
    if isinstance(value, list | tuple):
        return True
    return isinstance(value, str) and value.lstrip().startswith("[") and value.rstrip()[-1:] == "]"
