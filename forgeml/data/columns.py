"""Input columns: their type (declared or inferred), and fitting and reading numeric and category
columns. Each fit fills in a `FeatureSpec` from the TRAIN split; each reader turns a column of any
table into values, with a one-line DataError naming row and column for a bad or missing value."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import numpy as np

from forgeml.data.config import DataConfig
from forgeml.data.split import is_numeric_column, parse_floats
from forgeml.data.table import Table
from forgeml.data.text import count_words
from forgeml.errors import ConfigError, DataError
from forgeml.schema import FeatureSpec, TargetSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CATEGORY_FILL = "<missing>"
TEXT_MIN_WORDS = 3  # a string column averaging this many words is text, not a category
# A column with at least this share of arrays (or JSON-array strings) is a sequence column; the
# other values are bad values there (an error naming the row, or skipped bad rows).
SEQUENCE_MIN_SHARE = 0.9


def value_key(v: object) -> str | None:
    """A value's identity as a category or class: 3, 3.0 and "3" are the same; None: missing."""
    if v is None:
        return None
    if isinstance(v, str):
        return v if v.strip() else None
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return None
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


def value_keys(values: np.ndarray) -> np.ndarray:
    """(N,) object array of category keys (None for missing); numeric arrays via np.unique."""
    if values.dtype.kind in "biuf":
        out = np.full(len(values), None, dtype=object)
        present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(len(values), bool)
        uniques, inverse = np.unique(values[present], return_inverse=True)
        out[present] = np.array([value_key(u) for u in uniques], dtype=object)[inverse]
        return out
    return np.array([value_key(v) for v in values], dtype=object)


def python_value(v: object) -> object:
    """A label as a JSON-friendly Python value: 7.0 -> 7, np.int64(3) -> 3, strings unchanged."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return int(v) if float(v).is_integer() else float(v)
    return v if isinstance(v, str) else str(v)


def sort_key(key: str) -> tuple[int, float, str]:
    """Numeric-looking keys sort numerically ("2" < "10"), before all other strings."""
    try:
        number = float(key)
    except ValueError:
        return (1, 0.0, key)
    return (0, number, key) if math.isfinite(number) else (1, 0.0, key)  # "nan" is a word here


def shorten(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


class RowRefs:
    """Row references of `rows` (default: all) of a table, computed on demand (only a message
    needs one)."""

    def __init__(self, table: Table, rows: np.ndarray) -> None:
        self.table = table
        self.rows = rows

    def __getitem__(self, i: int) -> str:
        return self.table.row_ref(int(self.rows[i]))

    def __len__(self) -> int:
        return len(self.rows)


def feature_names(table: Table, cfg: DataConfig) -> list[str]:
    columns = ", ".join(table.column_names)
    for key, names in (("data.exclude", cfg.exclude), ("data.columns", list(cfg.columns))):
        for name in names:
            if name not in table.columns:
                raise DataError(
                    f"{table.source}: column '{name}' named in {key} is not in the data; "
                    f"columns are: {columns}; fix the name or remove it from {key}"
                )
    names = [n for n in table.column_names if n != cfg.target and n not in cfg.exclude]
    if not names:
        raise DataError(
            f"{table.source}: no feature columns left (columns: {columns}; target "
            f"'{cfg.target}', excluded: {', '.join(cfg.exclude) or 'none'}); expected at least one "
            "input column; remove some from data.exclude"
        )
    return names


def feature_spec(cfg: DataConfig, name: str, kind: Any) -> FeatureSpec:
    column_cfg = cfg.columns.get(name)
    inferred = column_cfg is None or column_cfg.type is None
    fill = column_cfg.fill if column_cfg is not None else "error"
    fill_value = column_cfg.fill_value if column_cfg is not None else None
    return FeatureSpec(name, kind, inferred, fill=fill, fill_value=fill_value)


def column_type(table: Table, cfg: DataConfig, name: str, max_bad_fraction: float) -> str:
    declared = cfg.columns.get(name)
    if declared is not None and declared.type is not None:
        if declared.type == "labels":
            raise ConfigError(
                f"data.columns.{name}.type=labels: only the target can hold lists of labels; "
                f"declare '{name}' as category or text, or set data.target={name}"
            )
        return declared.type
    return infer_column_type(table.columns[name], max_bad_fraction)


def infer_column_type(
    values: np.ndarray, max_bad_fraction: float = 0.0
) -> Literal["numeric", "category", "image", "text", "sequence"]:
    """image (other arrays, or .png/.jpg/.jpeg paths), sequence (arrays (L,) or float (L, C),
    lists or JSON arrays of numbers: SEQUENCE_MIN_SHARE of the values or more; see table.py),
    numeric (numbers or numeric strings),
    text (strings of TEXT_MIN_WORDS words or more on average, counted as the word tokenizer
    splits them, so each CJK character is a word), else category.

    `max_bad_fraction`: skip mode tolerates that share of values that are not numbers in a
    numeric column (see `is_numeric_column`); they are bad rows then.
    """
    if values.dtype.kind == "b":
        return "category"
    if values.dtype.kind in "iuf":
        return "numeric"
    if values.dtype.kind in "US":
        values = values.astype(object)
    # Arrays first: value_key would format a whole image as text.
    present = [v for v in values if isinstance(v, np.ndarray) or value_key(v) is not None]
    if present and all(isinstance(v, np.ndarray) for v in present):
        return "sequence" if all(map(_is_array, present)) else "image"
    strings = [v for v in present if isinstance(v, str)]
    if present and len(strings) == len(present):
        if all(v.lower().endswith(IMAGE_SUFFIXES) for v in strings):
            return "image"
    if present and sum(map(_is_array, present)) >= SEQUENCE_MIN_SHARE * len(present):
        return "sequence"
    if is_numeric_column(values, max_bad_fraction):
        return "numeric"
    sample = strings[:2000]
    if sample and sum(map(count_words, sample)) / len(sample) >= TEXT_MIN_WORDS:
        return "text"
    return "category"


def _is_array(v: object) -> bool:
    """A sequence row: a 1-D array, a 2-D float array (L, C) (images are uint8), a list or
    tuple, or a string that looks like a JSON array."""
    if isinstance(v, np.ndarray):
        return v.ndim == 1 or (v.ndim == 2 and v.dtype.kind == "f")
    if isinstance(v, str):
        return v.lstrip().startswith("[") and v.rstrip().endswith("]")
    return isinstance(v, list | tuple)


def parse_numeric(table: Table, f: FeatureSpec) -> np.ndarray:
    """(N,) float64 of a numeric column, NaN where missing; a value that is no number raises."""
    values = table.columns[f.name]
    floats, bad = parse_floats(values)
    if bad is not None:
        how = "by inference" if f.inferred else "in data.columns"
        raise DataError(
            f"{table.row_ref(bad)}, column '{f.name}': '{values[bad]}' is not a number; expected "
            f"a numeric value (column typed numeric {how}); fix the value or declare "
            f"data.columns.{f.name}.type=category"
        )
    return floats


def numeric_values(table: Table, f: FeatureSpec) -> np.ndarray:
    """(N,) float64 of a numeric column, missing values filled by the fitted rule."""
    floats = parse_numeric(table, f)
    missing = np.isnan(floats)
    if missing.any():
        if f.fill == "error":
            missing_error(table, f, int(np.argmax(missing)))
        floats[missing] = f.fill_value
    return floats


def category_values(table: Table, f: FeatureSpec) -> np.ndarray:
    """(N,) object array of category keys, missing values filled by the fitted rule."""
    keys = value_keys(table.columns[f.name])
    missing = np.equal(keys, None)
    if missing.any():
        if f.fill == "error":
            missing_error(table, f, int(np.argmax(missing)))
        keys[missing] = f.fill_value
    return keys


def missing_error(table: Table, f: FeatureSpec, i: int) -> None:
    rules = "mean|median|constant" if f.type == "numeric" else "constant"
    raise DataError(
        f"{table.row_ref(i)}, column '{f.name}': missing value; fill it in the data or set "
        f"data.columns.{f.name}.fill={rules}"
    )


def fit_numeric(table: Table, spec: FeatureSpec) -> None:
    if spec.fill == "constant":
        try:
            spec.fill_value = float(spec.fill_value if spec.fill_value is not None else 0.0)
        except ValueError:
            raise ConfigError(
                f"data.columns.{spec.name}.fill_value={spec.fill_value!r}: column '{spec.name}' "
                "is numeric; expected a number"
            ) from None
    floats = parse_numeric(table, spec)
    missing = np.isnan(floats)
    if missing.any() and spec.fill == "error":
        missing_error(table, spec, int(np.argmax(missing)))
    present = floats[~missing]
    if not len(present):
        raise DataError(
            f"{table.source}: column '{spec.name}' has no values in the training split; "
            f"expected numbers; add it to data.exclude or fill the column"
        )
    # Statistics of the values present; a filled-in value is then standardised like them.
    spec.mean, spec.std = float(present.mean()), float(present.std()) or 1.0
    if spec.fill == "mean":
        spec.fill_value = spec.mean
    elif spec.fill == "median":
        spec.fill_value = float(np.median(present))


def fit_category(table: Table, spec: FeatureSpec) -> None:
    if spec.fill in ("mean", "median"):
        raise ConfigError(
            f"data.columns.{spec.name}.fill={spec.fill}: column '{spec.name}' is a category "
            "column and has no mean or median; use fill=constant (optionally with fill_value) "
            "or declare its type numeric"
        )
    if spec.fill == "constant":
        spec.fill_value = value_key(spec.fill_value) or DEFAULT_CATEGORY_FILL
    keys = category_values(table, spec)
    spec.vocab = sorted(set(keys.tolist()), key=sort_key)


def summary(features: list[FeatureSpec], target: TargetSpec) -> str:
    """One line: each column's type, runs like x0..x63 compressed, then the target."""
    parts: list[str] = []
    i = 0
    while i < len(features):
        f = features[i]
        note = "" if f.inferred else ", declared"
        if f.type == "numeric":
            j = _numeric_run_end(features, i)
            if j - i >= 3:
                parts.append(f"{f.name}..{features[j - 1].name} numeric ({j - i}{note})")
                i = j
                continue
            parts.append(f"{f.name} numeric" + (" (declared)" if note else ""))
        elif f.type == "category":
            parts.append(f"{f.name} category ({len(f.vocab or [])} values{note})")
        elif f.type == "image":
            parts.append(f"{f.name} image ({f.channels}x{f.height}x{f.width}{note})")
        elif f.type == "text":
            options = (f.text or {}).get("config", {})
            kind = "tokenizer file" if options.get("tokenizer_file") else options.get("tokenizer")
            parts.append(f"{f.name} text ({kind}, max {f.max_length} tokens{note})")
        elif f.type == "sequence":
            channels = (f.sequence or {}).get("channels")
            parts.append(f"{f.name} sequence ({channels} channel(s), max {f.max_length}{note})")
        i += 1
    if target.task == "regression":
        goal = f"target {target.name}: regression"
    else:
        goal = f"target {target.name}: {target.task}, {len(target.classes or [])} classes"
    any_inferred = any(f.inferred for f in features)
    line = ("inferred column types: " if any_inferred else "column types: ") + ", ".join(parts)
    line += f"; {goal}"
    if any_inferred:
        line += "; declare data.columns.NAME.type to override"
    return line


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _numeric_run_end(features: list[FeatureSpec], start: int) -> int:
    """End (exclusive) of the run of numeric columns named prefix<k>, prefix<k+1>, ..."""
    first = _NUMBERED.match(features[start].name)
    if first is None:
        return start + 1
    prefix, number = first.group(1), int(first.group(2))
    end = start + 1
    while end < len(features):
        f = features[end]
        m = _NUMBERED.match(f.name)
        same = f.type == "numeric" and f.inferred == features[start].inferred
        if not (same and m and m.group(1) == prefix and int(m.group(2)) == number + end - start):
            break
        end += 1
    return end
