"""Tests for forgeml.data.preprocess: typing, train-only statistics, fills, targets, decode, I/O."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from forgeml.config import DataConfig
from forgeml.data.preprocess import Preprocessor
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError


def obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def csv_table(columns: dict, source: str = "data.csv") -> Table:
    """A table as read from a CSV file: row i is on line i + 2 (line 1 is the header)."""
    columns = {k: v if isinstance(v, np.ndarray) else obj(v) for k, v in columns.items()}
    n = len(next(iter(columns.values())))
    return Table(columns, source=source, row_label="line", row_numbers=np.arange(2, n + 2))


def config(**data) -> DataConfig:
    return DataConfig(source="data.csv", **data)


def fit(table: Table, **data) -> tuple[Preprocessor, list[str]]:
    lines: list[str] = []
    return Preprocessor.fit(table, config(**data), log=lines.append), lines


# --- typing ------------------------------------------------------------------------------------


def test_inferred_types_and_the_log_line():
    n = 6
    table = csv_table(
        {
            **{f"x{j}": np.arange(n, dtype=np.float64) + j for j in range(4)},
            "num": ["1.5", "2", "", "4", "5", "6"],
            "color": ["red", "blue", "red", "green", "red", "blue"],
            "flag": [True, False, True, True, False, False],
            "label": ["a", "b", "a", "b", "a", "b"],
        }
    )
    pre, lines = fit(table, columns={"num": {"fill": "mean"}})
    assert [(f.name, f.type, f.inferred) for f in pre.features] == [
        ("x0", "numeric", True),
        ("x1", "numeric", True),
        ("x2", "numeric", True),
        ("x3", "numeric", True),
        ("num", "numeric", True),
        ("color", "category", True),
        ("flag", "category", True),
    ]
    assert lines == [
        "inferred column types: x0..x3 numeric (4), num numeric, color category (3 values), "
        "flag category (2 values); target label: binary, 2 classes; "
        "declare data.columns.NAME.type to override"
    ]
    assert pre.spec.num_numeric == 5 and pre.spec.category_sizes == (4, 3)
    inputs, _ = pre.transform(table)
    assert inputs["numeric"].shape == (6, 5) and inputs["numeric"].dtype == torch.float32
    assert inputs["category"].shape == (6, 2) and inputs["category"].dtype == torch.int64


def test_image_columns_inferred_from_paths_and_arrays(tmp_path):
    paths = []
    for i in range(4):
        Image.fromarray(np.full((3, 5, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.PNG")
        paths.append(str(tmp_path / f"{i}.PNG"))
    table = csv_table({"picture": paths, "label": ["a", "b", "a", "b"]})
    pre, lines = fit(table)
    assert pre.features[0].type == "image" and pre.spec.image_shape == (3, 3, 5)
    assert "picture image (3x3x5)" in lines[0]
    arrays = obj([np.full((8, 8), i, dtype=np.uint8) for i in range(4)])
    pre, _ = fit(csv_table({"image": arrays, "label": ["a", "b", "a", "b"]}))
    assert pre.features[0].type == "image" and pre.spec.image_shape == (1, 8, 8)


def test_declared_types_override():
    table = csv_table(
        {"zip": np.array([94107.0, 10001.0, 94107.0]), "score": ["1", "2", "3"], "label": [0, 1, 0]}
    )
    pre, lines = fit(table, columns={"zip": {"type": "category"}, "score": {"type": "category"}})
    assert [(f.type, f.inferred) for f in pre.features] == [("category", False)] * 2
    assert pre.features[0].vocab == ["10001", "94107"]  # 94107.0 and "94107" are one value
    assert lines[0].startswith("column types: zip category (2 values, declared)")
    with pytest.raises(DataError, match=r"data\.csv, line 3, column 'word': 'x' is not a number"):
        fit(csv_table({"word": ["1", "x"], "label": [0, 1]}), columns={"word": {"type": "numeric"}})


def test_column_problems():
    table = csv_table({"a": [1, 2], "b": ["x", "y"], "label": [0, 1]})
    with pytest.raises(DataError, match=r"'id' named in data\.exclude .*columns are: a, b, label"):
        fit(table, exclude=["id"])
    with pytest.raises(DataError, match=r"'c' named in data\.columns"):
        fit(table, columns={"c": {"type": "numeric"}})
    with pytest.raises(DataError, match=r"no feature columns left"):
        fit(table, exclude=["a", "b"])
    images = obj([np.zeros((2, 2), dtype=np.uint8)] * 2)
    with pytest.raises(ConfigError, match=r"2 image columns \(i1, i2\)"):
        fit(csv_table({"i1": images, "i2": images, "label": [0, 1]}))


# --- numeric and category columns --------------------------------------------------------------


def test_standardisation_uses_train_statistics_only():
    pre, _ = fit(csv_table({"x": np.array([0.0, 2.0, 4.0]), "label": ["a", "b", "a"]}))
    std = math.sqrt(8 / 3)
    assert pre.features[0].mean == 2.0 and pre.features[0].std == pytest.approx(std)
    other = csv_table({"x": ["2", "6"], "label": ["a", "a"]}, source="other.csv")
    inputs, _ = pre.transform(other)
    torch.testing.assert_close(inputs["numeric"][:, 0], torch.tensor([0.0, 4.0 / std]))


def test_constant_column_has_unit_std():
    pre, _ = fit(csv_table({"x": np.ones(3), "label": [0, 1, 0]}))
    assert pre.features[0].std == 1.0


def test_unknown_category_maps_to_zero():
    pre, _ = fit(csv_table({"c": ["b", "a", "b"], "label": [0, 1, 0]}))
    assert pre.features[0].vocab == ["a", "b"]
    inputs, _ = pre.transform(csv_table({"c": ["a", "b", "never seen"], "label": [0, 0, 1]}))
    assert inputs["category"][:, 0].tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("fill", "fill_value", "expected"),
    [("mean", None, 2.0), ("median", None, 1.0), ("constant", 7, 7.0)],
)
def test_numeric_fills(fill, fill_value, expected):
    table = csv_table({"x": ["1", "", "0", "5", None], "label": [0, 1, 0, 1, 0]})
    rule = {"fill": fill, "fill_value": fill_value}
    pre, _ = fit(table, columns={"x": rule})
    f = pre.features[0]
    assert f.fill_value == expected
    assert f.mean == 2.0  # statistics of the values present
    inputs, _ = pre.transform(table)
    assert inputs["numeric"][1, 0].item() == pytest.approx((expected - f.mean) / f.std)


def test_missing_value_is_an_error_by_default():
    table = csv_table({"x": ["1", "2", ""], "label": [0, 1, 0]})
    with pytest.raises(DataError) as excinfo:
        fit(table)
    assert str(excinfo.value) == (
        "data.csv, line 4, column 'x': missing value; fill it in the data or set "
        "data.columns.x.fill=mean|median|constant"
    )
    pre, _ = fit(csv_table({"x": ["1", "2", "3"], "label": [0, 1, 0]}))
    with pytest.raises(DataError, match=r"^new\.csv, line 3, column 'x': missing value"):
        pre.transform(csv_table({"x": ["1", None], "label": [0, 1]}, source="new.csv"))


def test_category_fills():
    table = csv_table({"c": ["a", None, "b"], "label": [0, 1, 0]})
    with pytest.raises(DataError, match=r"line 3, column 'c': missing value; .*fill=constant$"):
        fit(table)
    pre, _ = fit(table, columns={"c": {"fill": "constant"}})
    assert pre.features[0].vocab == ["<missing>", "a", "b"]
    inputs, _ = pre.transform(table)
    assert inputs["category"][:, 0].tolist() == [2, 1, 3]
    with pytest.raises(ConfigError, match=r"data\.columns\.c\.fill=median"):
        fit(table, columns={"c": {"fill": "median"}})


def test_non_numeric_value_at_transform_names_the_row():
    pre, _ = fit(csv_table({"x": ["1", "2", "3"], "label": [0, 1, 0]}))
    with pytest.raises(DataError) as excinfo:
        pre.transform(csv_table({"x": ["1", "2", "two"], "label": [0, 1, 0]}, source="new.csv"))
    assert str(excinfo.value) == (
        "new.csv, line 4, column 'x': 'two' is not a number; expected a numeric value (column "
        "typed numeric by inference); fix the value or declare data.columns.x.type=category"
    )


def test_missing_column_at_transform():
    pre, _ = fit(csv_table({"a": [1.0, 2.0], "b": ["x", "y"], "label": [0, 1]}))
    with pytest.raises(DataError) as excinfo:
        pre.transform(csv_table({"a": [1.0]}, source="new.csv"), with_target=False)
    assert str(excinfo.value) == (
        "new.csv: column 'b' is missing; the model needs columns: a, b; add it to the input"
    )


def test_transform_of_many_rows_equals_a_row_by_row_reference():
    """The vectorised transform (numpy parsing, np.unique keys for a numeric category column, a
    lookup per column) gives what a plain loop over the rows gives; unseen categories, missing
    values and fills included. Its speed: bench/data_transform.py."""
    rng = np.random.default_rng(0)

    def table(n: int, words: list[str], codes: int, source: str) -> Table:
        c = rng.choice(np.array([*words, None], dtype=object), n)
        s = rng.random(n).astype(str).astype(object)
        s[rng.random(n) < 0.05] = ""  # missing
        k = rng.integers(0, codes, n)  # an int64 column, declared a category
        columns = {"c": c, "s": s, "x": rng.normal(3.0, 2.0, n), "k": k, "label": k % 2}
        return csv_table(columns, source=source)

    train = table(3000, ["red", "green", "blue", "cyan"], 10, "data.csv")
    new = table(2000, ["red", "green", "blue", "cyan", "mauve"], 12, "new.csv")  # unseen values
    columns = {"c": {"fill": "constant"}, "s": {"fill": "mean"}, "k": {"type": "category"}}
    pre, _ = fit(train, columns=columns)
    f = {spec.name: spec for spec in pre.features}
    assert [n for n in f if f[n].type == "numeric"] == ["s", "x"]
    assert [n for n in f if f[n].type == "category"] == ["c", "k"]
    present = [float(v) for v in train.columns["s"] if v != ""]
    assert f["s"].mean == pytest.approx(statistics.fmean(present), rel=1e-12)
    assert f["s"].std == pytest.approx(statistics.pstdev(present), rel=1e-12)

    def code(name: str, key: str) -> int:
        vocab = f[name].vocab or []
        return vocab.index(key) + 1 if key in vocab else 0  # 0: unseen

    inputs, target = pre.transform(new)
    numeric, category = [], []
    for c, s, x, k in zip(*(new.columns[n] for n in "csxk"), strict=True):
        filled = float(s) if s != "" else f["s"].mean
        numeric.append([(filled - f["s"].mean) / f["s"].std, (x - f["x"].mean) / f["x"].std])
        category.append([code("c", c if c is not None else "<missing>"), code("k", str(k))])
    np.testing.assert_array_equal(inputs["numeric"].numpy(), np.array(numeric, np.float32))
    np.testing.assert_array_equal(inputs["category"].numpy(), np.array(category))
    assert target.tolist() == [int(k) % 2 for k in new.columns["k"]]
    # The new rows hold every case: unseen ("mauve" and k = 10, 11 -> 0) and missing values.
    assert f["c"].vocab == ["<missing>", "blue", "cyan", "green", "red"]
    assert {row[0] for row in category} == {0, 1, 2, 3, 4, 5}
    assert {row[1] for row in category} == set(range(11))
    assert sum(s == "" for s in new.columns["s"]) > 50


# --- images ------------------------------------------------------------------------------------


def test_image_size_channels_and_statistics(tmp_path):
    paths = []
    for i, size in enumerate([(4, 4), (8, 6)]):
        Image.fromarray(np.full((*size, 3), 100 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")  # relative: found next to the data file
    table = csv_table({"img": paths, "label": ["a", "b"]}, source=str(tmp_path / "data.csv"))
    pre, _ = fit(table)
    f = pre.features[0]
    assert (f.channels, f.height, f.width) == (3, 4, 4)  # the first image's
    assert f.mean == pytest.approx([50 / 255] * 3) and f.std == pytest.approx([50 / 255] * 3)
    inputs, _ = pre.transform(table)
    assert inputs["image"].shape == (2, 3, 4, 4)
    torch.testing.assert_close(inputs["image"][:, 0, 0, 0], torch.tensor([-1.0, 1.0]))
    pre, _ = fit(table, image={"size": (2, 3), "channels": 1})
    assert pre.spec.image_shape == (1, 2, 3)
    assert pre.transform(table)[0]["image"].shape == (2, 1, 2, 3)


def test_missing_image_file_names_row_and_path(tmp_path):
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "ok.png")
    table = csv_table({"img": [str(tmp_path / "ok.png"), "gone.png"], "label": ["a", "b"]})
    with pytest.raises(DataError, match=r"^data\.csv, line 3: cannot read image 'gone\.png'"):
        fit(table)


# --- targets -----------------------------------------------------------------------------------


def test_integer_labels_keep_their_type():
    table = csv_table({"x": np.arange(6.0), "label": np.array([10, 2, 1, 2, 10, 1])})
    pre, _ = fit(table)
    assert pre.target.classes == [1, 2, 10] and pre.target.task == "multiclass"
    assert pre.spec.out_dim == 3
    _, target = pre.transform(table)
    assert target.dtype == torch.int64 and target.tolist() == [2, 1, 0, 1, 2, 0]
    json_floats = csv_table({"x": np.arange(3.0), "label": np.array([10.0, 2.0, 1.0])})
    assert pre.transform(json_floats)[1].tolist() == [2, 1, 0]  # 10.0 from JSON is class 10


def test_string_labels_sort_numerically_when_numeric():
    pre, _ = fit(csv_table({"x": np.arange(4.0), "label": ["10", "9", "10", "9"]}))
    assert pre.target.classes == ["9", "10"] and pre.target.task == "binary"
    assert pre.spec.out_dim == 1
    pre, _ = fit(csv_table({"x": np.arange(3.0), "label": ["yes", "no", "maybe"]}))
    assert pre.target.classes == ["maybe", "no", "yes"]


def test_one_class_in_train_split():
    with pytest.raises(DataError) as excinfo:
        fit(csv_table({"x": np.arange(3.0), "label": ["cat", "cat", "cat"]}))
    assert str(excinfo.value) == (
        "data.csv: the training split has only one class ('cat') in target column 'label'; a "
        "classifier needs at least two; check data.target or the data"
    )


def test_unknown_and_missing_class_at_transform():
    pre, _ = fit(csv_table({"x": np.arange(2.0), "label": ["cat", "dog"]}))
    with pytest.raises(
        DataError,
        match=r"^val\.csv, line 3, column 'label': 'bird' is not a known "
        r"class; the model knows the classes: cat, dog",
    ):
        pre.transform(csv_table({"x": np.arange(2.0), "label": ["cat", "bird"]}, source="val.csv"))
    with pytest.raises(DataError, match=r"line 2, column 'label': missing target value"):
        pre.transform(csv_table({"x": np.arange(1.0), "label": [None]}))
    _, target = pre.transform(csv_table({"x": np.arange(1.0)}), with_target=False)
    assert target is None


def test_regression_target_standardised_and_decoded():
    y = np.linspace(0.5, 30.5, 40)
    table = csv_table({"x": np.arange(40.0), "y": obj([str(v) for v in y])})
    pre, _ = fit(table, target="y")
    assert pre.target.task == "regression" and pre.target.classes is None
    _, target = pre.transform(table)
    assert target.dtype == torch.float32
    assert abs(target.mean().item()) < 1e-5 and target.std(correction=0).item() == pytest.approx(
        1, rel=1e-5
    )
    decoded = pre.decode(target[:, None])
    assert [d["prediction"] for d in decoded] == pytest.approx(y.tolist(), rel=1e-5)
    bad = csv_table({"x": np.arange(2.0), "y": ["1.5", "n/a"]})
    with pytest.raises(DataError, match=r"line 3, column 'y': 'n/a' is not a number"):
        pre.transform(bad)


def test_decode_probabilities():
    pre, _ = fit(csv_table({"x": np.arange(3.0), "label": [7, 3, 5]}))
    rows = pre.decode(torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]]))
    assert [r["prediction"] for r in rows] == [5, 3]  # original int labels
    for row in rows:
        assert list(row["probabilities"]) == ["3", "5", "7"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    binary, _ = fit(csv_table({"x": np.arange(2.0), "label": ["no", "yes"]}))
    (row,) = binary.decode(torch.tensor([[2.0]]))
    assert row["prediction"] == "yes"
    assert row["probabilities"]["yes"] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert binary.decode(torch.zeros(0, 1)) == []


def test_class_weights_inverse_frequency():
    pre, _ = fit(csv_table({"x": np.arange(4.0), "label": ["a", "a", "a", "b"]}))
    _, target = pre.transform(csv_table({"x": np.arange(4.0), "label": ["a", "a", "a", "b"]}))
    torch.testing.assert_close(pre.class_weights(target), torch.tensor([4 / 6, 4 / 2]))


# --- save / load -------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    arrays = obj([np.full((4, 4), 30 * i, dtype=np.uint8) for i in range(4)])
    table = csv_table(
        {
            "img": arrays,
            "x": ["1", "", "3", "4"],
            "c": ["u", "v", None, "u"],
            "label": [1, 2, 3, 1],
        }
    )
    pre, _ = fit(table, columns={"x": {"fill": "median"}, "c": {"fill": "constant"}})
    pre.save(tmp_path / "preprocess")
    assert sorted(p.name for p in (tmp_path / "preprocess").iterdir()) == ["features.json"]
    json.loads((tmp_path / "preprocess" / "features.json").read_text())
    loaded = Preprocessor.load(tmp_path / "preprocess")
    assert loaded.features == pre.features and loaded.target == pre.target
    assert loaded.spec == pre.spec
    (a, ta), (b, tb) = pre.transform(table), loaded.transform(table)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(ta, tb)
    assert loaded.output_schema() == {"name": "label", "task": "multiclass", "classes": [1, 2, 3]}
    assert [s["type"] for s in loaded.input_schema()] == ["image", "numeric", "category"]


def test_load_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"features\.json"):
        Preprocessor.load(tmp_path / "nowhere")
