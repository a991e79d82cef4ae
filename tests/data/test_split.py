"""Tests for forgeml.data.split: the target kind, random and stratified splits, their errors."""

from __future__ import annotations

import numpy as np
import pytest

from forgeml.config import DataConfig
from forgeml.data.split import infer_target_kind, parse_floats, split_table
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError


def obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def table(n: int, labels=None, source: str = "data.csv") -> Table:
    columns = {"x": np.arange(n, dtype=np.float64)}
    if labels is not None:
        columns["label"] = np.asarray(labels)
    return Table(columns, source=source, row_label="line", row_numbers=np.arange(2, n + 2))


def kind(values, **data) -> str:
    t = Table({"x": np.zeros(len(values)), "label": values}, source="data.csv")
    return infer_target_kind(t, DataConfig(source="data.csv", **data))


# --- target kind -------------------------------------------------------------------------------


def test_target_kind_inferred():
    assert kind(np.arange(30) % 3) == "category"  # few integers: classes
    assert kind(obj(["1", "2", "2", "3"])) == "category"  # integer strings from CSV
    assert kind(np.arange(30) * 1.0) == "numeric"  # more than 20 distinct integers
    assert kind(obj(["1.5", "2", None, "3"])) == "numeric"  # a fraction
    assert kind(np.array([0.5, 1.0, np.nan])) == "numeric"
    assert kind(obj(["cat", "dog", "cat"])) == "category"
    assert kind(obj([True, False, True])) == "category"


def test_target_kind_declared_wins():
    columns = {"label": {"type": "category"}}
    assert kind(np.linspace(0, 1, 50), columns=columns) == "category"
    assert kind(np.arange(4) % 2, columns={"label": {"type": "numeric"}}) == "numeric"
    with pytest.raises(ConfigError, match=r"data\.columns\.label\.type=image"):
        kind(np.arange(4), columns={"label": {"type": "image"}})


def test_target_column_absent():
    t = Table({"a": np.zeros(2), "b": np.zeros(2), "c": np.zeros(2)}, source="data.csv")
    with pytest.raises(DataError) as excinfo:
        infer_target_kind(t, DataConfig(source="data.csv", target="y"))
    assert str(excinfo.value) == (
        "data.csv: target column 'y' not found; columns are: a, b, c; set data.target to one of them"
    )


def test_parse_floats_finds_first_bad_value():
    floats, bad = parse_floats(obj(["1", "", None, "2.5"]))
    assert bad is None
    np.testing.assert_array_equal(np.isnan(floats), [False, True, True, False])
    assert parse_floats(obj(["1", "", "x", "2"]))[1] == 2
    assert parse_floats(obj(["1", "inf"]))[1] == 1


# --- random split ------------------------------------------------------------------------------


def test_random_split_ratios_and_disjoint():
    t = table(1000)
    train, val, test = split_table(t, train=0.8, val=0.1, test=0.1, seed=0, stratify_by=None)
    assert (train.num_rows, val.num_rows, test.num_rows) == (800, 100, 100)
    rows = np.concatenate([s.columns["x"] for s in (train, val, test)])
    assert sorted(rows.tolist()) == list(range(1000))
    # Row numbers travel with the rows, so errors still name the file line.
    np.testing.assert_array_equal(val.row_numbers, val.columns["x"].astype(int) + 2)


def test_zero_ratio_gives_none():
    train, val, test = split_table(
        table(10), train=0.7, val=0.3, test=0.0, seed=0, stratify_by=None
    )
    assert (train.num_rows, val.num_rows, test) == (7, 3, None)
    train, val, test = split_table(
        table(10), train=1.0, val=0.0, test=0.0, seed=0, stratify_by=None
    )
    assert train.num_rows == 10 and val is None and test is None


def test_split_is_deterministic_per_seed():
    def rows(seed):
        parts = split_table(table(200), train=0.6, val=0.2, test=0.2, seed=seed, stratify_by=None)
        return [p.columns["x"].tolist() for p in parts]

    assert rows(3) == rows(3)
    assert rows(3) != rows(4)


# --- stratified split --------------------------------------------------------------------------


def test_stratified_keeps_class_proportions():
    labels = np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 100, dtype=object)
    t = table(1000, labels)
    parts = split_table(t, train=0.8, val=0.1, test=0.1, seed=0, stratify_by=labels, target="label")
    assert [p.num_rows for p in parts] == [800, 100, 100]
    for part in parts:
        counts = {c: int(np.sum(part.columns["label"] == c)) for c in "abc"}
        share = part.num_rows / 1000
        for c, total in {"a": 600, "b": 300, "c": 100}.items():
            assert abs(counts[c] - total * share) <= 1, (counts, share)


def test_stratified_many_small_classes_keeps_overall_sizes():
    labels = np.repeat(np.arange(10).astype(str), 5).astype(object)  # 10 classes x 5 rows
    parts = split_table(table(50, labels), train=0.8, val=0.1, test=0.1, seed=1, stratify_by=labels)
    sizes = [p.num_rows for p in parts]
    assert sum(sizes) == 50
    assert all(abs(s - e) <= 2 for s, e in zip(sizes, [40, 5, 5], strict=True)), sizes
    assert set(parts[0].columns["label"]) == set(labels)  # every class is trained on


def test_stratified_is_deterministic():
    labels = np.array(["a", "b"] * 50, dtype=object)

    def rows(seed):
        parts = split_table(
            table(100, labels), train=0.5, val=0.5, test=0.0, seed=seed, stratify_by=labels
        )
        return parts[1].columns["x"].tolist()

    assert rows(0) == rows(0)
    assert rows(0) != rows(1)


def test_stratify_one_row_class_error():
    labels = np.array(["a"] * 9 + ["rare"], dtype=object)
    with pytest.raises(DataError) as excinfo:
        split_table(
            table(10, labels),
            train=0.8,
            val=0.2,
            test=0.0,
            seed=0,
            stratify_by=labels,
            target="label",
        )
    assert str(excinfo.value) == (
        "data.csv: class 'rare' of target column 'label' has only 1 row; a stratified split "
        "needs at least 2 rows per class; add rows, drop that class, or set "
        "data.split.stratify=false"
    )


def test_too_small_for_ratios():
    with pytest.raises(
        DataError, match=r"data\.csv: the data set is too small.*3 rows give val 0 rows"
    ):
        split_table(table(3), train=0.8, val=0.1, test=0.1, seed=0, stratify_by=None)


def test_empty_table():
    empty = Table({"x": np.zeros(0)}, source="empty.csv")
    with pytest.raises(DataError, match=r"^empty\.csv is empty; expected at least one data row$"):
        split_table(empty, train=0.8, val=0.2, test=0.0, seed=0, stratify_by=None)
