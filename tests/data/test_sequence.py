"""Tests for forgeml.data.sequence: parsing sequence columns, errors by row, scaling."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from forgeml.data.sequence import (
    ParsedSequences,
    SequenceConfig,
    SequenceScaler,
    parse_sequences,
    sequences_from_columns,
)
from forgeml.errors import DataError


def where(i: int) -> str:
    return f"data.csv, line {i + 2}"


def parse(values, **kwargs) -> ParsedSequences:
    cfg = SequenceConfig(**{k: kwargs.pop(k) for k in ("length", "max_length") if k in kwargs})
    return parse_sequences(values, column="signal", where=where, cfg=cfg, **kwargs)


def obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


# --- input forms --------------------------------------------------------------------------------


def test_one_channel_in_every_form():
    values = obj(["[0.5, 1, 2.5]", [4, 5], (6.0,), np.array([7, 8, 9, 10], dtype=np.int32)])
    p = parse(values)
    assert p.values.dtype == np.float32 and p.values.shape == (4, 4, 1) and p.channels == 1
    assert p.lengths.dtype == np.int64 and p.lengths.tolist() == [3, 2, 1, 4]
    assert p.values[:, :, 0].tolist() == [
        [0.5, 1, 2.5, 0],
        [4, 5, 0, 0],
        [6, 0, 0, 0],
        [7, 8, 9, 10],
    ]
    assert p.truncated == 0


def test_several_channels_in_every_form():
    values = obj(
        [
            "[[0.1, 1.0], [0.2, 1.1], [0.3, 1.2]]",
            [[5, 6]],
            np.array([[7.0, 8.0], [9.0, 10.0]]),
        ]
    )
    p = parse(values)
    assert p.values.shape == (3, 3, 2) and p.channels == 2 and p.lengths.tolist() == [3, 1, 2]
    np.testing.assert_allclose(p.values[0], [[0.1, 1.0], [0.2, 1.1], [0.3, 1.2]], rtol=1e-6)
    assert p.values[1].tolist() == [[5, 6], [0, 0], [0, 0]]
    assert p.values[2].tolist() == [[7, 8], [9, 10], [0, 0]]


def test_a_whole_numeric_block():
    two = parse(np.arange(6).reshape(2, 3))  # (N, L): one channel
    assert two.values.shape == (2, 3, 1) and two.lengths.tolist() == [3, 3]
    three = parse(np.arange(12.0).reshape(2, 3, 2), max_length=2)  # (N, L, C), truncated
    assert three.values.shape == (2, 2, 2) and three.truncated == 2 and three.channels == 2
    assert three.values[1].tolist() == [[6, 7], [8, 9]]
    with pytest.raises(DataError, match=r"^data\.csv, line 2, column 'signal': ragged: 3 steps"):
        parse(np.zeros((2, 3)), length=4)


def test_runs_of_numeric_columns():
    p = sequences_from_columns([np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5, 6])])
    assert p.values.shape == (2, 3, 1) and p.values.dtype == np.float32
    assert p.values[:, :, 0].tolist() == [[1, 3, 5], [2, 4, 6]]
    assert p.lengths.tolist() == [3, 3] and p.channels == 1 and p.truncated == 0


def test_declared_length_is_kept_exactly():
    p = parse(["[1, 2, 3]", "[4, 5, 6]"], length=3, max_length=2)  # max_length: variable only
    assert p.values.shape == (2, 3, 1) and p.truncated == 0
    with pytest.raises(DataError) as e:
        parse(["[1, 2, 3]", "[1, 2, 3]", "[1, 2]"], length=3)
    message = str(e.value)
    assert message.startswith("data.csv, line 4, column 'signal': ragged: 2 steps")
    assert "declared length is 3" in message and "data.columns.signal.sequence.length" in message


def test_variable_length_rows_are_truncated_and_counted():
    p = parse(["[1, 2, 3, 4, 5]", "[1, 2]", "[1, 2, 3, 4]", "[9]"], max_length=3)
    assert p.values.shape == (4, 3, 1) and p.truncated == 2
    assert p.lengths.tolist() == [3, 2, 3, 1]
    assert p.values[0, :, 0].tolist() == [1, 2, 3]  # the beginning is kept


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("[1, 2, abc]", r'"\[1, 2, abc\]" is not valid JSON'),
        ('[1, 2, 3, "abc"]', r'a string "abc" at index 3 is not a number'),
        ("[1, null]", r"null at index 1 is not a number"),
        ("[1, true]", r"true at index 1 is not a number"),
        ("[[1, 2], [3]]", r"step 1 has 1 value, step 0 has 2 values"),
        ('[[1, 2], [3, "x"]]', r'a string "x" at step 1, channel 1 is not a number'),
        ("[[1, 2], 3]", r"a mix of numbers and lists"),
        ("3.5", r"the number 3\.5, not a list of numbers"),
        ('{"a": 1}', r"an object, not a list of numbers"),
        ("[]", r"an empty sequence"),
        ("[[[1]]]", r"nested 3 levels deep \(shape \(1, 1, 1\)\), at most 2"),
    ],
)
def test_bad_values_name_the_row_column_and_what_was_found(value, found):
    with pytest.raises(DataError, match=rf"^data\.csv, line 3, column 'signal': {found}") as e:
        parse(["[0, 1]", value])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["[1, NaN]", "[1, Infinity]", "[1, 1e39]", [1.0, float("inf")]])
def test_non_finite_values(value):
    with pytest.raises(DataError, match=r"line 2, column 'signal': non-finite value .* at step 1"):
        parse([value])


@pytest.mark.parametrize("value", [None, "", "  ", float("nan")])
def test_missing_values(value):
    with pytest.raises(DataError, match=r"line 3, column 'signal': missing value; fill is not"):
        parse(obj(["[1]", value]))


def test_channel_count_must_match_the_first_row_or_the_fitted_one():
    with pytest.raises(DataError) as e:
        parse(["[1, 2]", "[[1, 2], [3, 4]]"])
    assert str(e.value).startswith(
        "data.csv, line 3, column 'signal': 2 channels per step, but data.csv, line 2 has 1"
    )
    with pytest.raises(DataError, match=r"line 2, .*1 channel per step, but the training data"):
        parse(["[1, 2]"], channels=3)
    with pytest.raises(DataError, match=r"line 2, .*2 channels per step, but the training data"):
        parse(np.zeros((2, 4, 2)), channels=3)
    assert parse(["[[1, 2, 3]]"], channels=3).channels == 3


def test_bad_rows_are_collected_instead_of_raised():
    found: list[tuple[int, str]] = []
    p = parse(
        obj(["[1, 2]", "[1, x]", None, "[3]", "[[1, 2]]", "[1, 2, 3]"]),
        length=None,
        bad=lambda i, detail: found.append((i, detail)),
    )
    assert [i for i, _ in found] == [1, 2, 4]
    assert found[0][1].startswith('"[1, x]" is not valid JSON')
    assert found[1][1].startswith("missing value")
    assert found[2][1] == "2 channels per step, but data.csv, line 2 has 1"
    assert p.lengths.tolist() == [2, 0, 0, 1, 0, 3]
    assert not p.values[[1, 2, 4]].any()  # bad rows are all padding
    assert p.values[5, :, 0].tolist() == [1, 2, 3]


def test_bad_rows_of_a_numeric_block_are_collected():
    block = np.arange(12.0).reshape(3, 4)
    block[1, 2] = np.nan
    found: list[tuple[int, str]] = []
    p = parse(block, bad=lambda i, detail: found.append((i, detail)))
    assert found == [(1, "non-finite value nan at step 2 (NaN, infinite or beyond float32)")]
    assert p.lengths.tolist() == [4, 0, 4] and not p.values[1].any()
    assert not np.isnan(p.values).any()
    with pytest.raises(DataError, match=r"^data\.csv, line 3, column 'signal': non-finite"):
        parse(block)


def test_config_is_strict():
    with pytest.raises(pydantic.ValidationError):
        SequenceConfig(length="10")
    with pytest.raises(pydantic.ValidationError):
        SequenceConfig(max_len=10)
    with pytest.raises(pydantic.ValidationError):
        SequenceConfig(length=0)


# --- scaler -------------------------------------------------------------------------------------


def test_scaler_uses_real_steps_only_and_keeps_padding_zero():
    rng = np.random.default_rng(0)
    rows = [rng.normal([10.0, -3.0], [2.0, 0.5], size=(n, 2)) for n in (5, 1, 8, 3)]
    p = parse(obj(rows))
    real = np.concatenate(rows)  # (17, 2): what numpy says without any padding
    scaler = SequenceScaler.fit(p)
    np.testing.assert_allclose(scaler.mean, real.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(scaler.std, real.std(axis=0), rtol=1e-5)
    out = scaler.transform(p.values, p.lengths)
    assert out.dtype == np.float32 and out.shape == p.values.shape
    mask = np.arange(8) < p.lengths[:, None]
    assert not out[~mask].any()  # padding stays 0
    np.testing.assert_allclose(out[mask].mean(axis=0), [0, 0], atol=1e-5)
    np.testing.assert_allclose(out[mask].std(axis=0), [1, 1], rtol=1e-4)


def test_scaler_constant_channel_and_state_round_trip():
    p = parse(["[[1, 5], [3, 5]]", "[[5, 5]]"])
    scaler = SequenceScaler.fit(p)
    assert scaler.mean.tolist() == [3, 5] and scaler.std[1] == 1.0  # std 0 -> 1
    again = SequenceScaler.from_state(json.loads(json.dumps(scaler.state())))
    np.testing.assert_array_equal(
        again.transform(p.values, p.lengths), scaler.transform(p.values, p.lengths)
    )
    assert again.transform(p.values, p.lengths)[:, :, 1].tolist() == [[0, 0], [0, 0]]


def test_scaler_needs_real_steps():
    empty = parse(["[1, x]"], bad=lambda i, detail: None)
    with pytest.raises(DataError, match=r"column 'signal': no sequence steps"):
        SequenceScaler.fit(empty, column="signal")
