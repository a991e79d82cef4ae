"""Text, sequence and multi-label columns in the preprocessor, without training: type inference,
bad rows under `data.on_bad_rows: skip`, label types, and the CLI's CSV form of a multi-label
prediction."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest
import torch

from forgeml.cli.predict import _to_csv
from forgeml.config import DataConfig
from forgeml.data.bad_rows import BadRows
from forgeml.data.columns import infer_column_type
from forgeml.data.preprocess import Preprocessor
from forgeml.data.table import Table
from forgeml.data.text import count_words
from forgeml.errors import DataError

TEXTS = ["a good film to see", "a bad film to miss", "the plot was fine", "the cast was poor"]


def column(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values  # lists stay cells
    return out


def table(source: str = "data.jsonl", **columns: list[Any]) -> Table:
    n = len(next(iter(columns.values())))
    return Table(
        {k: column(v) for k, v in columns.items()},
        source,
        row_label="line",
        row_numbers=np.arange(1, n + 1),
    )


def fit(t: Table, bad_rows: BadRows | None = None, **data: Any) -> Preprocessor:
    cfg = DataConfig(source=t.source, **data)
    return Preprocessor.fit(t, cfg, log=lambda _: None, bad_rows=bad_rows)


def test_count_words_counts_cjk_characters_and_leaves_out_punctuation() -> None:
    assert count_words("i love 東京!") == 4
    assert count_words("St. Louis, MO") == 3
    assert count_words("今日はいい天気ですね") == 10


def test_a_bad_value_among_json_arrays_keeps_the_column_a_sequence() -> None:
    arrays = [json.dumps([0.1 * i, 0.2, 0.3]) for i in range(30)]
    assert infer_column_type(column([*arrays[:9], "oops", *arrays[10:]])) == "sequence"
    lists = [[0.1 * i, 0.2] for i in range(30)]
    assert infer_column_type(column([*lists[:5], "oops", *lists[6:]])) == "sequence"
    # Short names and a few bracketed ones are still a category.
    names = ["[a] x", "b", "c", "d"] * 5
    assert infer_column_type(column(names)) == "category"


def test_the_bad_value_is_then_a_bad_row_named_by_line() -> None:
    signals = [[0.1 * i, 0.2, 0.3] for i in range(40)]
    signals[6] = "oops"
    labels = ["up", "down"] * 20
    with pytest.raises(DataError, match=r"data.jsonl, line 7, column 'signal': .*oops"):
        fit(table(signal=signals, label=labels))
    bad = BadRows()
    pre = fit(table(signal=signals, label=labels), bad, on_bad_rows="skip", max_bad_fraction=0.1)
    assert pre.features[0].type == "sequence"
    assert bad.count == 1 and bad.examples[0].row == "data.jsonl, line 7"


def test_skip_leaves_bad_train_sequences_out_of_the_fit() -> None:
    """The channel statistics come from the good rows: a string or a ragged row does not stop
    the fit, and a row of another channel count does not set the channels."""
    signals: list[Any] = [[1.0, 2.0, 3.0, 4.0]] * 20
    signals = [*signals[:3], [[9.0, 9.0]] * 4, [1.0, "x", 3.0, 4.0], *signals[5:]]
    labels = ["up", "down"] * 10
    bad = BadRows()
    pre = fit(
        table(signal=signals, label=labels),
        bad,
        on_bad_rows="skip",
        max_bad_fraction=0.2,
        columns={"signal": {"type": "sequence"}},
    )
    sequence = pre.features[0].sequence or {}
    assert sequence["channels"] == 1 and sequence["scaler"]["mean"] == [2.5]
    assert sorted(e.row for e in bad.examples) == ["data.jsonl, line 4", "data.jsonl, line 5"]


TAGS = [["sports"], ["food", "tech"], [], ["tech"]] * 5


def test_skip_checks_each_label_of_a_multilabel_target() -> None:
    pre = fit(table(text=TEXTS * 5, tags=TAGS), BadRows(), target="tags", on_bad_rows="skip")
    new = table(
        "new.jsonl",
        text=TEXTS * 2,
        tags=[["food"], ["sports", "weather"], '["tech"', ["tech"], *TAGS[:4]],
    )
    bad = BadRows()
    _, target, rows = pre.transform_rows(new, bad_rows=bad)
    assert rows.tolist() == [0, 3, 4, 5, 6, 7]
    assert target is not None and target.shape == (6, 3)
    assert bad.by_reason == {"unknown class": 1, "bad label list": 1}
    (weather, broken) = bad.examples
    assert weather.row == "new.jsonl, line 2" and "'weather'" in weather.detail
    assert broken.row == "new.jsonl, line 3" and "not a JSON array" in broken.detail


def test_integer_labels_stay_integers() -> None:
    tags = [[1], [2, 10], [], [10]] * 5
    pre = fit(table(text=TEXTS * 5, tags=tags), target="tags")
    assert pre.target.classes == [1, 2, 10]
    (row,) = pre.decode(torch.tensor([[3.0, -3.0, 3.0]]))
    assert row["prediction"] == [1, 10]
    _, target = pre.transform(table(text=TEXTS[:2], tags=[["1"], [2, 10]]))
    assert target is not None and target.tolist() == [[1, 0, 0], [0, 1, 1]]


def test_csv_predictions_write_label_lists_as_json_arrays() -> None:
    rows = [
        {"prediction": ["food", "tech"], "probabilities": {"food": 0.9, "tech": 0.8}},
        {"prediction": [], "probabilities": {"food": 0.1, "tech": 0.2}},
    ]
    read = list(csv.DictReader(io.StringIO(_to_csv(rows))))
    assert [json.loads(r["prediction"]) for r in read] == [["food", "tech"], []]
    assert read[0]["probability_food"] == "0.900000"
