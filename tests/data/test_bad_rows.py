"""Bad rows: fail fast naming file/line/column by default; `data.on_bad_rows: skip` skips and
counts them, fails past `data.max_bad_fraction`, and writes the counts to metrics.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import forgeml
from forgeml.config import DataConfig, load_config
from forgeml.data.bad_rows import MAX_EXAMPLES, BadRows, RowChecks, check_splits
from forgeml.data.preprocess import Preprocessor
from forgeml.data.sources import read_table
from forgeml.data.split import is_numeric_column, parse_float_column
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.tasks.table.prepare import prepare


def obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def csv_table(columns: dict, source: str = "data.csv") -> Table:
    """A table as read from a CSV file: row i is on line i + 2 (line 1 is the header)."""
    columns = {k: v if isinstance(v, np.ndarray) else obj(v) for k, v in columns.items()}
    n = len(next(iter(columns.values())))
    return Table(columns, source=source, row_label="line", row_numbers=np.arange(2, n + 2))


def skip_config(**data) -> DataConfig:
    return DataConfig(source="data.csv", on_bad_rows="skip", **data)


def quiet(_msg: str) -> None:
    pass


# --- the collector -----------------------------------------------------------------------------


def test_bad_rows_counts_each_row_once_and_keeps_a_few_examples():
    bad = BadRows()
    for line in range(2, 10):
        bad.record(f"data.csv, line {line}", "age", "not a number", f"'x{line}' is not a number")
    bad.record("data.csv, line 2", "income", "missing value", "missing value")  # same row again
    bad.record("data.csv, line 12", None, "wrong field count", "expected 3 fields, found 4")
    assert bad.count == 9
    assert bad.by_reason == {"not a number": 8, "wrong field count": 1}
    assert len(bad.examples) == MAX_EXAMPLES == 5
    assert str(bad.examples[0]) == "data.csv, line 2, column 'age': 'x2' is not a number"
    assert bad.describe("data.csv") == (
        "skipped 9 bad rows of data.csv (8 not a number, 1 wrong field count); "
        "first: data.csv, line 2, column 'age': 'x2' is not a number"
    )
    summary = bad.summary("data.csv", 100)
    assert summary["rows"] == 100 and summary["skipped"] == 9
    assert summary["examples"][0] == {
        "row": "data.csv, line 2",
        "column": "age",
        "reason": "not a number",
        "detail": "'x2' is not a number",
    }
    json.dumps(summary)  # goes into metrics.json as it is


def test_check_fails_only_past_the_fraction_with_counts_first_example_and_fix():
    bad = BadRows()
    bad.record("data.csv, line 7", "age", "not a number", "'abc' is not a number")
    bad.check(100, 0.01, "data.csv")  # 1 of 100 is not more than 1%
    BadRows().check(100, 0.0, "data.csv")  # nothing bad: never an error
    bad.record("data.csv, line 9", None, "wrong field count", "expected 4 fields, found 5")
    with pytest.raises(DataError) as excinfo:
        bad.check(100, 0.01, "data.csv")
    assert str(excinfo.value) == (
        "data.csv: 2 of 100 rows are bad (2.0%: 1 not a number, 1 wrong field count), more than "
        "data.max_bad_fraction=0.01 allows; first: data.csv, line 7, column 'age': 'abc' is not "
        "a number; fix the data or raise data.max_bad_fraction"
    )
    with pytest.raises(DataError, match=r"^data\.csv: all 2 rows are bad .*; fix the data$"):
        bad.check(2, 1.0, "data.csv")  # nothing left, whatever the fraction


def test_splits_of_one_source_are_checked_together():
    train, val = BadRows(), BadRows()
    train.record("d.csv, line 2", "a", "not a number", "'x' is not a number")
    val.record("d.csv, line 3", "a", "not a number", "'y' is not a number")
    rows, sources = {"train": 150, "val": 50}, {"train": "d.csv", "val": "d.csv"}
    check_splits({"train": train, "val": val}, rows, sources, 0.01)  # 2 of 200: 1%
    val.record("d.csv, line 4", "a", "not a number", "'z' is not a number")
    with pytest.raises(DataError, match=r"^d\.csv: 3 of 200 rows are bad"):
        check_splits({"train": train, "val": val}, rows, sources, 0.01)
    # A separate val file is a source of its own: 2 of 50 is past 1% there.
    with pytest.raises(DataError, match=r"^v\.csv: 2 of 50 rows are bad"):
        check_splits({"train": train, "val": val}, rows, {**sources, "val": "v.csv"}, 0.01)


def test_row_checks_record_in_row_order():
    table = csv_table({"a": ["1", "x", "3", "4"], "b": ["u", "v", None, "w"]})
    checks = RowChecks(table)
    checks.column("b", numeric=False, required=True)
    checks.column("a", numeric=True, required=True)
    bad = BadRows()
    np.testing.assert_array_equal(checks.record(bad), [0, 3])
    assert [str(e) for e in bad.examples] == [
        "data.csv, line 3, column 'a': 'x' is not a number",
        "data.csv, line 4, column 'b': missing value",
    ]


# --- numeric parsing ---------------------------------------------------------------------------


def test_parse_float_column_finds_every_bad_value():
    values = obj([str(i) for i in range(1000)])
    values[[5, 640, 999]] = ["abc", "1,5", "n/a"]
    values[300] = "inf"  # not a finite number: bad too
    values[[7, 8, 9]] = ["", " ", None]  # missing, not bad
    floats, bad = parse_float_column(values)
    np.testing.assert_array_equal(bad, [5, 300, 640, 999])
    assert np.isnan(floats[[5, 7, 8, 9, 300, 640, 999]]).all()
    assert floats[10] == 10.0 and np.isfinite(np.delete(floats, [5, 7, 8, 9, 300, 640, 999])).all()
    np.testing.assert_array_equal(parse_float_column(values, max_bad=2)[1], [5, 300])
    numbers = np.array([1.0, np.inf, 3.0])
    np.testing.assert_array_equal(parse_float_column(numbers)[1], [1])


def test_skip_mode_types_a_column_with_a_few_words_numeric():
    values = obj([str(i) for i in range(99)] + ["abc"])
    assert not is_numeric_column(values)  # error mode: a word makes it a category column
    assert is_numeric_column(values, 0.01)  # skip mode: 1 of 100 may be a bad row
    assert not is_numeric_column(obj(["1", "2", "a", "b", "c"] * 20), 0.01)  # too many words
    assert not is_numeric_column(obj(["red", "blue"]), 1.0)  # words must not outnumber numbers


# --- readers -----------------------------------------------------------------------------------


def test_csv_reader_skips_records_with_the_wrong_field_count(tmp_path: Path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n9,10,11,12\n13,14,15\n")
    with pytest.raises(DataError, match=r"^d\.csv, line 3: expected 3 fields .* found 2"):
        read_table("d.csv", base_dir=tmp_path)
    bad = BadRows()
    table = read_table("d.csv", base_dir=tmp_path, bad_rows=bad)
    assert table.columns["a"].tolist() == ["1", "6", "13"]
    assert table.row_ref(2) == "d.csv, line 6"  # kept rows keep their line numbers
    assert bad.by_reason == {"wrong field count": 2}
    assert [e.row for e in bad.examples] == ["d.csv, line 3", "d.csv, line 5"]
    assert bad.examples[1].detail == "expected 3 fields as in the header, found 4"


def test_csv_reader_skips_lines_that_are_not_utf8_but_not_the_header(tmp_path: Path):
    (tmp_path / "d.csv").write_bytes(b"name,n\nA,1\nK\xf6ln,2\r\nC,3\n")
    with pytest.raises(DataError, match=r"^d\.csv, line 3: byte 0xf6 is not valid UTF-8"):
        read_table("d.csv", base_dir=tmp_path)
    bad = BadRows()
    table = read_table("d.csv", base_dir=tmp_path, bad_rows=bad)
    assert table.columns["name"].tolist() == ["A", "C"] and table.row_ref(1) == "d.csv, line 4"
    assert str(bad.examples[0]) == "d.csv, line 3: byte 0xf6 is not valid UTF-8"
    # A quoted field that spans the bad line loses its whole record, not just that line.
    (tmp_path / "q.csv").write_bytes(b'a,b\n1,"x\ny\xff\nz"\n2,ok\n')
    bad = BadRows()
    table = read_table("q.csv", base_dir=tmp_path, bad_rows=bad)
    assert table.columns["a"].tolist() == ["2"] and bad.count == 1
    (tmp_path / "h.csv").write_bytes(b"n\xe4me,n\nA,1\n")
    with pytest.raises(DataError, match=r"^h\.csv, line 1: byte 0xe4 is not valid UTF-8"):
        read_table("h.csv", base_dir=tmp_path, bad_rows=BadRows())


def test_jsonl_reader_skips_invalid_and_non_object_lines(tmp_path: Path):
    lines = ['{"x": 1, "y": "a"}', "{oops", "[1, 2]", '{"x": 2, "y": "b"}', '"text"']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"^d\.jsonl, line 2: invalid JSON"):
        read_table("d.jsonl", base_dir=tmp_path)
    bad = BadRows()
    table = read_table("d.jsonl", base_dir=tmp_path, bad_rows=bad)
    assert table.columns["x"].tolist() == [1.0, 2.0] and table.row_ref(1) == "d.jsonl, line 4"
    assert bad.by_reason == {"invalid JSON": 1, "not a JSON object": 2}
    assert str(bad.examples[1]) == "d.jsonl, line 3: found a JSON array, expected a JSON object"


def test_a_file_of_bad_rows_only_says_so(tmp_path: Path):
    (tmp_path / "d.csv").write_text("a,b\n1\n2,3,4\n")
    with pytest.raises(DataError, match=r"^d\.csv: all 2 rows are bad \(2 wrong field count\)"):
        read_table("d.csv", base_dir=tmp_path, bad_rows=BadRows())


# --- preprocessing -----------------------------------------------------------------------------


def messy_train() -> Table:
    return csv_table(
        {
            "age": ["20", "abc", "40", "50", "60", "70", "80", "90"],
            "income": ["1", "2", None, "4", "5", "6", "7", "8"],
            "color": ["red", "blue", "red", None, "blue", "red", "blue", "red"],
            "label": ["no", "no", "yes", "no", None, "yes", "no", "yes"],
        }
    )


def test_fit_skips_bad_rows_and_fits_on_the_good_ones_only():
    table = messy_train()
    with pytest.raises(DataError, match=r"line 6, column 'label': missing target value"):
        Preprocessor.fit(table, DataConfig(source="data.csv"), log=quiet)  # error mode
    bad = BadRows()
    cfg = skip_config(max_bad_fraction=0.5, columns={"color": {"fill": "constant"}})
    pre = Preprocessor.fit(table, cfg, log=quiet, bad_rows=bad)
    assert bad.by_reason == {"not a number": 1, "missing value": 1, "missing target": 1}
    assert [e.row for e in bad.examples] == [f"data.csv, line {n}" for n in (3, 4, 6)]
    age = next(f for f in pre.features if f.name == "age")
    assert age.type == "numeric"  # 'abc' is a bad row, not a reason to make age a category
    assert age.mean == pytest.approx(np.mean([20, 50, 70, 80, 90]))  # good rows only
    color = next(f for f in pre.features if f.name == "color")
    assert color.vocab == ["<missing>", "blue", "red"]  # a filled missing value is no bad row
    inputs, target, rows = pre.transform_rows(table, bad_rows=bad)
    np.testing.assert_array_equal(rows, [0, 3, 5, 6, 7])
    assert inputs["numeric"].shape == (5, 2) and target.tolist() == [0, 0, 1, 0, 1]
    assert bad.count == 3  # fit and transform of the same rows count them once


def test_transform_skips_unknown_classes_but_not_unknown_categories():
    train = csv_table({"x": ["1", "2", "3", "4"], "c": ["a", "b", "a", "b"], "y": [0, 1, 0, 1]})
    pre = Preprocessor.fit(train, skip_config(target="y"), log=quiet, bad_rows=BadRows())
    val = csv_table(
        {"x": ["1", "2", "3", "x"], "c": ["a", "zzz", "b", "a"], "y": [0, 7, 1, 1]}, "val.csv"
    )
    with pytest.raises(DataError, match=r"^val\.csv, line 3, column 'y': '7' is not a known"):
        pre.transform(val.take(np.arange(3)))
    bad = BadRows()
    inputs, target, rows = pre.transform_rows(val, bad_rows=bad)
    np.testing.assert_array_equal(rows, [0, 2])
    assert bad.by_reason == {"unknown class": 1, "not a number": 1}
    assert str(bad.examples[0]) == "val.csv, line 3, column 'y': '7' is not a known class"
    assert inputs["category"][:, 0].tolist() == [1, 2] and target.tolist() == [0, 1]
    # An unknown category alone is no bad row: it maps to the unknown bucket (index 0).
    _, _, rows = pre.transform_rows(val.take(np.array([1])), with_target=False, bad_rows=BadRows())
    assert rows.tolist() == [0]


def test_regression_target_that_is_not_a_number_is_a_bad_row():
    train = csv_table(
        {"x": [str(i) for i in range(40)], "y": [f"{i}.5" for i in range(39)] + ["?"]}
    )
    bad = BadRows()
    pre = Preprocessor.fit(train, skip_config(target="y"), log=quiet, bad_rows=bad)
    assert pre.target.task == "regression" and pre.target.mean == pytest.approx(19.5)
    assert str(bad.examples[0]) == "data.csv, line 41, column 'y': '?' is not a number"


def test_unreadable_images_are_skipped_in_fit_and_transform(tmp_path: Path):
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    images = [paths[0], str(tmp_path / "broken.png"), paths[1], paths[2], "gone.png", paths[3]]
    table = csv_table({"image": images, "label": ["a", "b", "a", "b", "a", "b"]})
    with pytest.raises(DataError, match=r"^data\.csv, line 3: cannot read image"):
        Preprocessor.fit(table, DataConfig(source="data.csv"), log=quiet)
    bad = BadRows()
    pre = Preprocessor.fit(table, skip_config(max_bad_fraction=0.5), log=quiet, bad_rows=bad)
    assert bad.by_reason == {"unreadable image": 2}
    assert str(bad.examples[0]).startswith("data.csv, line 3, column 'image': cannot read image")
    image = pre.features[0]
    assert image.mean == pytest.approx([np.mean([0, 40, 80, 120]) / 255])  # good images only
    inputs, target, rows = pre.transform_rows(table, bad_rows=bad)
    np.testing.assert_array_equal(rows, [0, 2, 3, 5])
    assert inputs["image"].shape == (4, 1, 4, 4) and target.tolist() == [0, 0, 1, 1]
    assert bad.count == 2
    fresh = BadRows()  # the cached train images: rows fit skipped are recorded here too
    pre._fit_images = None
    _, _, rows = pre.transform_rows(table, bad_rows=fresh)
    assert fresh.count == 2 and rows.tolist() == [0, 2, 3, 5]


# --- end to end --------------------------------------------------------------------------------


def row(i: int) -> str:
    """A deterministic good row: the label is 'yes' for age > 45."""
    age = 18 + (i * 7) % 60
    return f"{age},{1000 + (i * 37) % 80 * 100},{('red', 'green', 'blue')[i % 3]},{age > 45}"


def write_messy_data(root: Path) -> dict[str, int]:
    """train.csv (200 rows, 6 bad), val.jsonl (40 rows, 3 bad), test.csv (40 rows, 2 bad)."""
    rows = [row(i).replace("True", "yes").replace("False", "no") for i in range(200)]
    bad_train = {
        4: b"K\xf6ln,2000,red,no",  # not UTF-8
        9: b"30,2000,red",  # wrong field count
        15: b"abc,2000,red,no",  # not a number
        30: b"31,,red,no",  # missing value, no fill rule
        41: b"32,2000,red,",  # missing target
        77: b"33,2000,red,no,extra",  # wrong field count
    }
    lines = [b"age,income,color,label", *(r.encode() for r in rows)]
    for line, text in bad_train.items():
        lines[line - 1] = text
    (root / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    val = []
    for i in range(200, 240):
        age, income, color, label = row(i).split(",")
        val.append(
            json.dumps(
                {
                    "age": int(age),
                    "income": int(income),
                    "color": color,
                    "label": "yes" if label == "True" else "no",
                }
            )
        )
    val[5], val[6], val[7] = (
        "{oops",
        "[1, 2]",
        val[7].replace('"no"', '"maybe"').replace('"yes"', '"maybe"'),
    )  # invalid JSON, not an object, unknown class
    (root / "val.jsonl").write_text("\n".join(val) + "\n")
    test = [row(i).replace("True", "yes").replace("False", "no") for i in range(240, 280)]
    test[3] = "old,3000,blue,yes"  # not a number
    test[8] = "40,3000,purple,no"  # an unknown category: fine
    test[9] = ",3000,blue,no"  # missing value
    (root / "test.csv").write_text("\n".join(["age,income,color,label", *test]) + "\n")
    return {"train": 6, "val": 3, "test": 2}


def messy_config(root: Path, name: str, **data) -> dict:
    return {
        "seed": 3,
        "data": {
            "source": str(root / "train.csv"),
            "val_source": str(root / "val.jsonl"),
            "test_source": str(root / "test.csv"),
            "split": {"train": 1.0, "val": 0.0, "test": 0.0},
            **data,
        },
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {
            "max_epochs": 15,
            "batch_size": 32,
            "optimizer": {"lr": 0.02},
            "precision": "fp32",
            "deterministic": True,
        },
        "output": {"dir": str(root / "runs"), "name": name},
    }


def test_train_skips_bad_rows_counts_them_and_fits_on_good_rows(tmp_path: Path):
    expected = write_messy_data(tmp_path)
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None)
    cfg = messy_config(tmp_path, "skip", on_bad_rows="skip", max_bad_fraction=0.1)
    run = forgeml.train(cfg, console=console)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    bad = metrics["bad_rows"]
    assert {split: bad[split]["skipped"] for split in bad} == expected
    assert bad["train"]["rows"] == 200 and bad["val"]["rows"] == 40 and bad["test"]["rows"] == 40
    assert bad["train"]["by_reason"] == {
        "invalid UTF-8": 1,
        "wrong field count": 2,
        "missing target": 1,
        "not a number": 1,
        "missing value": 1,
    }
    assert bad["val"]["by_reason"] == {
        "invalid JSON": 1,
        "not a JSON object": 1,
        "unknown class": 1,
    }
    assert bad["test"]["by_reason"] == {"not a number": 1, "missing value": 1}
    assert bad["test"]["examples"][0] == {
        "row": f"{tmp_path / 'test.csv'}, line 5",
        "column": "age",
        "reason": "not a number",
        "detail": "'old' is not a number",
    }
    log = out.getvalue()
    assert f"train: skipped 6 bad rows of {tmp_path / 'train.csv'} (2 wrong field count" in log
    assert f"test: skipped 2 bad rows of {tmp_path / 'test.csv'} (1 not a number" in log
    # Training used only the good rows: their count, and statistics of the good train rows.
    manifest = json.loads((run.dir / "forgeml.json").read_text())
    assert manifest["data_summary"] == {"train": 194, "val": 37, "test": 38}
    features = json.loads((run.dir / "preprocess" / "features.json").read_text())["features"]
    good = [i for i in range(200) if i + 2 not in (4, 9, 15, 30, 41, 77)]
    ages = [18 + (i * 7) % 60 for i in good]
    assert features[0]["name"] == "age" and features[0]["type"] == "numeric"
    assert features[0]["mean"] == pytest.approx(np.mean(ages))
    assert metrics["test"]["accuracy"] > 0.8
    # The run's own evaluation skips the same rows and reproduces its test metrics.
    again = run.load().evaluate(tmp_path / "test.csv")
    assert again["bad_rows"]["skipped"] == 2
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
    # Predict still wants a prediction per row: a bad row fails.
    with pytest.raises(DataError, match=r"test\.csv, line 5, column 'age': 'old' is not a number"):
        run.load().predict(tmp_path / "test.csv")
    # Deterministic: the same config trains the same weights.
    rerun = forgeml.train({**cfg, "output": {**cfg["output"], "name": "skip2"}}, quiet=True)
    assert (
        json.loads((rerun.dir / "forgeml.json").read_text())["weights_sha256"]
        == (manifest["weights_sha256"])
    )


def test_error_mode_fails_on_the_first_bad_row(tmp_path: Path):
    write_messy_data(tmp_path)
    with pytest.raises(DataError) as excinfo:
        forgeml.train(messy_config(tmp_path, "error"), quiet=True)
    assert str(excinfo.value).startswith(
        f"{tmp_path / 'train.csv'}, line 4: byte 0xf6 is not valid UTF-8"
    )
    assert not (tmp_path / "runs" / "error").exists()
    # Past the reader, a bad value is named with its column.
    (tmp_path / "train.csv").write_text(
        "age,income,color,label\n"
        + "\n".join(["30,1,red,no", "abc,2,red,yes", "50,3,blue,yes"])
        + "\n"
    )
    cfg = messy_config(tmp_path, "error", columns={"age": {"type": "numeric"}})
    del cfg["data"]["val_source"], cfg["data"]["test_source"]
    with pytest.raises(DataError, match=r"train\.csv, line 3, column 'age': 'abc' is not a number"):
        prepare(load_config(cfg), log=quiet)


def test_more_bad_rows_than_allowed_is_an_error_with_the_counts(tmp_path: Path):
    write_messy_data(tmp_path)
    cfg = messy_config(tmp_path, "strict", on_bad_rows="skip")  # default max_bad_fraction: 1%
    with pytest.raises(DataError) as excinfo:
        forgeml.train(cfg, quiet=True)
    message = str(excinfo.value)
    # Checked as soon as reading (3 bad lines) and the pre-split target check (1) are done.
    assert message.startswith(
        f"{tmp_path / 'train.csv'}: 4 of 200 rows are bad (2.0%: 2 wrong field count, "
        "1 invalid UTF-8, 1 missing target), more than data.max_bad_fraction=0.01 allows; "
    )
    assert f"first: {tmp_path / 'train.csv'}, line 4: byte 0xf6 is not valid UTF-8" in message
    assert message.endswith("fix the data or raise data.max_bad_fraction")
    assert "\n" not in message
    assert not (tmp_path / "runs" / "strict").exists()
