"""The target column: classes (binary, multiclass) or scale (regression), fitted on TRAIN."""

from __future__ import annotations

import numpy as np

from forgeml.config import DataConfig
from forgeml.data.columns import python_value, sort_key, value_keys
from forgeml.data.schema import TargetSpec
from forgeml.data.split import parse_floats
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError


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
