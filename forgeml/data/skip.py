"""Skip mode (`data.on_bad_rows: skip`): which rows of a table hold a bad value.

The preprocessor runs this pass first and fits or encodes the rows left; its strict code then
runs on good rows only, so a row this pass misses still raises (see bad_rows.py).
"""

from __future__ import annotations

import numpy as np

from forgeml.data.bad_rows import (
    BAD_LABELS,
    MISSING_VALUE,
    UNKNOWN_CLASS,
    BadRows,
    RowChecks,
    quote,
)
from forgeml.data.columns import value_keys
from forgeml.data.config import DataConfig
from forgeml.data.sequence_columns import BAD_SEQUENCE, bad_sequences, sequence_config
from forgeml.data.table import Table
from forgeml.data.targets import bad_label_rows
from forgeml.schema import FeatureSpec


def good_rows(
    table: Table,
    features: list[FeatureSpec],
    bad_rows: BadRows,
    *,
    target: str | None,
    numeric_target: bool,
    multilabel: bool = False,
    classes: dict[str | None, int] | None = None,
    sequences: DataConfig | None = None,
) -> np.ndarray:
    """Skip mode: record the rows with a bad value (images: once decoded) and return the (K,)
    indices of the others.

    Args:
        multilabel: the target holds lists of labels: each list is checked, and each label.
        classes: a class (or label) outside them is bad (val/test targets).
        sequences: the TRAIN split's config: sequence columns are parsed here, so a bad one is
            left out of the fit (later tables: their encoding records bad sequences).
    """
    checks = RowChecks(table)
    if target is not None:
        checks.target(target, numeric=numeric_target)
        if multilabel:
            found = bad_label_rows(table, target, classes)
            for reason in (BAD_LABELS, UNKNOWN_CLASS):
                rows = np.array([i for i, (r, _) in found.items() if r == reason], dtype=np.int64)
                checks.add(rows, target, reason, lambda i: found[i][1])
        elif classes is not None:
            values = table.columns[target]
            unknown = [k is not None and k not in classes for k in value_keys(values)]
            checks.add(
                np.flatnonzero(unknown),
                target,
                UNKNOWN_CLASS,
                lambda i: f"{quote(values[i])} is not a known class",
            )
    for f in features:
        image = f.type == "image"  # cannot be filled in
        checks.column(
            f.name,
            numeric=f.type == "numeric",
            required=image or f.type == "sequence" or f.fill == "error",
            missing=(MISSING_VALUE, "missing image" if image else "missing value"),
        )
        if sequences is not None and f.type == "sequence":
            bad = bad_sequences(table, f, sequence_config(sequences, f.name))
            checks.add(np.fromiter(bad, np.int64), f.name, BAD_SEQUENCE, bad.__getitem__)
    return checks.record(bad_rows)
