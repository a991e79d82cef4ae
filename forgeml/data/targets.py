"""The target column: classes (binary, multiclass) or scale (regression), fitted on TRAIN."""

from __future__ import annotations

import json

import numpy as np

from forgeml.data.bad_rows import BAD_LABELS, UNKNOWN_CLASS
from forgeml.data.columns import python_value, sort_key, value_key, value_keys
from forgeml.data.config import DataConfig
from forgeml.data.split import is_missing, parse_floats
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError
from forgeml.schema import TargetSpec


def parse_target_floats(table: Table, name: str) -> np.ndarray:
    values = table.columns[name]
    floats, bad = parse_floats(values)
    if bad is not None:
        raise DataError(
            f"{table.row_ref(bad)}, column '{name}': '{values[bad]}' is not a number; expected a "
            f"numeric target for regression; fix the value or declare "
            f"data.columns.{name}.type=category"
        )
    missing = np.isnan(floats)
    if missing.any():
        raise DataError(
            f"{table.row_ref(int(np.argmax(missing)))}, column '{name}': missing target value; "
            "fill it in or drop the row"
        )
    return floats


def fit_target(table: Table, cfg: DataConfig, kind: str) -> TargetSpec:
    """`kind`: from `infer_target_kind` (which also checks the column is there, not an image)."""
    name = cfg.target
    declared = cfg.columns.get(name)
    if declared is not None and declared.fill != "error":
        raise ConfigError(
            f"data.columns.{name}.fill={declared.fill}: '{name}' is the target, and a row "
            "without a target cannot be trained on; remove the fill rule"
        )
    if kind == "numeric":
        floats = parse_target_floats(table, name)
        return TargetSpec(
            name, "regression", None, mean=float(floats.mean()), std=float(floats.std()) or 1.0
        )
    if kind == "labels":
        # A label keeps the type of its first occurrence (3 stays 3), as classes do below.
        found: dict[str | None, object] = {}
        for i, value in enumerate(table.columns[name]):
            for v in _row_labels(table, name, i, value):
                found.setdefault(value_key(v), python_value(v))
        labels = [found[k] for k in sorted(found, key=sort_key)]
        if not labels:
            raise DataError(
                f"{table.source}: target column '{name}' has no label in any row of the training "
                'split; expected lists of labels like ["sports", "news"]; check the data'
            )
        return TargetSpec(name, "multilabel", labels)
    values = table.columns[name]
    keys = value_keys(values)
    missing = np.equal(keys, None)
    if missing.any():
        raise DataError(
            f"{table.row_ref(int(np.argmax(missing)))}, column '{name}': missing target value; "
            "fill it in or drop the row"
        )
    unique, first = np.unique(keys.astype(str), return_index=True)
    if len(unique) < 2:
        raise DataError(
            f"{table.source}: the training split has only one class ('{unique[0]}') in target "
            f"column '{name}'; a classifier needs at least two; check data.target or the data"
        )
    order = sorted(range(len(unique)), key=lambda i: sort_key(str(unique[i])))
    classes = [python_value(values[first[i]]) for i in order]
    return TargetSpec(name, "binary" if len(classes) == 2 else "multiclass", classes)


def is_label_list(value: object) -> bool:
    """A list of labels: a list/tuple/array, or a string holding a JSON array."""
    if isinstance(value, list | tuple | np.ndarray):
        return True
    return isinstance(value, str) and value.lstrip().startswith("[")


def label_lists(table: Table, name: str) -> list[list[str]]:
    """Each row's labels (as category keys, see `value_key`) of a multi-label target: a JSON
    array ("[\"a\", \"b\"]", "[]" for none) or a list; a plain string is one label."""
    return [
        [value_key(v) for v in _row_labels(table, name, i, value)]
        for i, value in enumerate(table.columns[name])
    ]


def _row_labels(table: Table, name: str, i: int, value: object) -> list:
    """`row_labels`, a bad value raising a one-line DataError naming row i."""
    try:
        return row_labels(value)
    except ValueError as exc:
        raise DataError(
            f"{table.row_ref(i)}, column '{name}': {exc}; expected a flat list of labels like "
            '["a", "b"]; fix the value or drop the row'
        ) from None


def row_labels(value: object) -> list:
    """One row's labels as they are (3 stays an int); ValueError saying what is wrong."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{value[:40]!r} is not a JSON array ({exc.msg})") from None
    labels = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    if any(value_key(v) is None or isinstance(v, list | dict) for v in labels):
        raise ValueError(f"{str(value)[:40]} holds a missing or nested label")
    return labels


def bad_label_rows(table: Table, name: str, index: dict | None) -> dict[int, tuple[str, str]]:
    """Skip mode: the rows of a multi-label target that are no list of labels, or (given the
    fitted label `index`) hold a label the model does not know; row -> (reason, detail)."""
    out = {}
    for i, value in enumerate(table.columns[name]):
        if is_missing(value):
            continue  # a missing target: RowChecks.target records it
        try:
            keys = [value_key(v) for v in row_labels(value)]
        except ValueError as exc:
            out[i] = (BAD_LABELS, str(exc))
            continue
        unknown = [k for k in keys if index is not None and k not in index]
        if unknown:
            out[i] = (UNKNOWN_CLASS, f"label {unknown[0]!r} is not one the model knows")
    return out


def multi_hot(table: Table, target: TargetSpec, index: dict) -> np.ndarray:
    """(N, K) float32: 1 where the row has label k. A label the model does not know is an error."""
    lists = label_lists(table, target.name)
    out = np.zeros((len(lists), len(target.classes or [])), dtype=np.float32)
    for i, labels in enumerate(lists):
        for label in labels:
            k = index.get(label)
            if k is None:
                raise DataError(
                    f"{table.row_ref(i)}, column '{target.name}': label {label!r} is not one "
                    f"the model knows ({', '.join(map(str, (target.classes or [])[:20]))}); fix "
                    "the label or drop the row"
                )
            out[i, k] = 1.0
    return out
