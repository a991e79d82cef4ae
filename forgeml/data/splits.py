"""The one split helper: read a config's sources into train/val/test tables, and name the
held-out split.

Every verb that needs "the run's data" comes here: training, `forgeml evaluate` on the run's own
split, the export check, the demo, the Keras-like `Model` (`split_one`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from forgeml.data.bad_rows import BadRows, RowChecks
from forgeml.data.config import DataConfig
from forgeml.data.sources import read_table
from forgeml.data.split import infer_target_kind, split_table
from forgeml.data.table import Table


def held_out(splits: Iterable[str]) -> str:
    """The split final numbers are read from: test, else val, else train."""
    names = set(splits)
    return "test" if "test" in names else ("val" if "val" in names else "train")


def split_one(
    table: Table, cfg: DataConfig, seed: int, *, val: float, test: float, kind: str | None = None
) -> tuple[Table, Table | None, Table | None]:
    """`table` cut into train/val/test by ratio, seeded, stratified by class for a category
    target (when `cfg.split.stratify`). `kind`: the target's kind, if already inferred."""
    kind = kind or infer_target_kind(table, cfg)
    stratify = None
    if kind == "category" and cfg.split.stratify and (val or test):
        stratify = np.array([str(v) for v in table.columns[cfg.target]], dtype=object)
    return split_table(
        table,
        train=1.0 - val - test,
        val=val,
        test=test,
        seed=seed,
        stratify_by=stratify,
        target=cfg.target,
    )


def read_splits(
    cfg: DataConfig, seed: int, *, bad_rows: dict[str, BadRows] | None = None
) -> dict[str, Table]:
    """Read the sources and split them: ratios of one source, or separate files per split.

    With `data.on_bad_rows: skip`, rows a reader cannot parse and rows without a usable target
    are left out (before the split, which they would distort) and recorded in
    `bad_rows[split]`; those of `data.source` count for "train".
    """
    skip = cfg.on_bad_rows == "skip"
    found: dict[str, BadRows] = {}

    def read(split: str, spec: str) -> Table:
        found[split] = BadRows()
        return read_table(spec, delimiter=cfg.delimiter, bad_rows=found[split] if skip else None)

    table = read("train", cfg.source)
    kind = infer_target_kind(table, cfg, max_bad_fraction=cfg.max_bad_fraction if skip else 0.0)
    if skip:
        checks = RowChecks(table)
        checks.target(cfg.target, numeric=kind == "numeric")
        good = checks.record(found["train"])
        if not len(good):
            found["train"].check(found["train"].count, 1.0, cfg.source)
        table = table.take(good) if len(good) < table.num_rows else table
    train, val, test = split_one(
        table,
        cfg,
        cfg.split.seed if cfg.split.seed is not None else seed,
        val=0.0 if cfg.val_source else cfg.split.val,
        test=0.0 if cfg.test_source else cfg.split.test,
        kind=kind,
    )
    tables = {"train": train}
    if cfg.val_source:
        val = read("val", cfg.val_source)
    if cfg.test_source:
        test = read("test", cfg.test_source)
    if val is not None:
        tables["val"] = val
    if test is not None:
        tables["test"] = test
    if skip and bad_rows is not None:
        bad_rows.update({split: found.get(split) or BadRows() for split in tables})
    return tables
