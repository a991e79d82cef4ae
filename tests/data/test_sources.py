"""Tests for forgeml.data.sources: every format, its line numbers and its error messages."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from forgeml.data.sources import IMAGE_EXTENSIONS, list_builtins, read_table
from forgeml.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --- CSV / TSV ---------------------------------------------------------------------------------


def test_csv_round_trip_with_line_numbers(tmp_path):
    write(
        tmp_path / "data.csv",
        'a,b,text\n1,x,plain\n\n2,,"two\nlines"\n3,z,"with, comma"\n',
    )
    table = read_table("data.csv", base_dir=tmp_path)
    assert table.column_names == ["a", "b", "text"]
    assert table.columns["a"].dtype == object
    assert list(table.columns["a"]) == ["1", "2", "3"]
    assert list(table.columns["b"]) == ["x", None, "z"]
    assert list(table.columns["text"]) == ["plain", "two\nlines", "with, comma"]
    # Line 3 is blank, the record on line 4 spans lines 4-5, so the last one starts on line 6.
    assert list(table.row_numbers) == [2, 4, 6]
    assert table.row_label == "line"
    assert table.source == "data.csv"
    assert table.row_ref(2) == "data.csv, line 6"


def test_csv_bom_and_stripped_header(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffa, b\n1,2\n".encode())
    table = read_table(str(tmp_path / "bom.csv"))
    assert table.column_names == ["a", "b"]


@pytest.mark.parametrize("suffix", [".tsv", ".tab", ".TSV"])
def test_tsv_and_tab(tmp_path, suffix):
    write(tmp_path / f"data{suffix}", "a\tb\n1,5\t2\n")
    table = read_table(str(tmp_path / f"data{suffix}"))
    assert list(table.columns["a"]) == ["1,5"]
    assert list(table.columns["b"]) == ["2"]


def test_delimiter_override(tmp_path):
    write(tmp_path / "semi.csv", "a;b\n1;2\n")
    table = read_table(str(tmp_path / "semi.csv"), delimiter=";")
    assert table.column_names == ["a", "b"]
    with pytest.raises(DataError) as excinfo:
        read_table(str(tmp_path / "semi.csv"), delimiter=";;")
    assert_one_line_error(excinfo, "';;'", "one character")


def test_csv_wrong_field_count(tmp_path):
    write(tmp_path / "data.csv", "a,b,c,d,e\n" + "1,2,3,4,5\n" * 5 + "1,2,3,4,5,6\n")
    with pytest.raises(DataError) as excinfo:
        read_table("data.csv", base_dir=tmp_path)
    assert_one_line_error(
        excinfo,
        "data.csv, line 7: expected 5 fields as in the header, found 6",
        "unquoted delimiter",
    )
    write(tmp_path / "short.csv", "a,b\n1,2\n\n3\n")
    with pytest.raises(DataError) as excinfo:
        read_table("short.csv", base_dir=tmp_path)
    assert_one_line_error(excinfo, "short.csv, line 4: expected 2 fields", "found 1")


def test_csv_bad_header(tmp_path):
    write(tmp_path / "dup.csv", "a,b,a\n1,2,3\n")
    with pytest.raises(DataError) as excinfo:
        read_table("dup.csv", base_dir=tmp_path)
    assert_one_line_error(excinfo, "dup.csv, line 1", "'a'", "unique")
    write(tmp_path / "empty.csv", "a,,c\n1,2,3\n")
    with pytest.raises(DataError) as excinfo:
        read_table("empty.csv", base_dir=tmp_path)
    assert_one_line_error(excinfo, "empty.csv, line 1", "empty column name", "2")


def test_csv_invalid_utf8(tmp_path):
    (tmp_path / "latin.csv").write_bytes(b"name,city\nA,Berlin\nB,K\xf6ln\n")
    with pytest.raises(DataError) as excinfo:
        read_table("latin.csv", base_dir=tmp_path)
    assert_one_line_error(excinfo, "latin.csv, line 3", "UTF-8")


@pytest.mark.parametrize("content", ["", "a,b\n", "\n\n"])
def test_csv_without_rows(tmp_path, content):
    write(tmp_path / "x.csv", content)
    with pytest.raises(DataError) as excinfo:
        read_table("x.csv", base_dir=tmp_path)
    assert_one_line_error(
        excinfo, "x.csv has no data rows; expected a header line and at least one row"
    )


# --- JSON lines --------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    lines = [
        {"x": 1, "name": "a", "flag": True, "seq": [1, 2]},
        {"x": 2.5, "name": None, "flag": False, "seq": [3, 4]},
        {"extra": "late"},
    ]
    text = "\n".join(json.dumps(r) for r in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n"
    write(tmp_path / "data.jsonl", text)
    table = read_table("data.jsonl", base_dir=tmp_path)
    assert table.column_names == ["x", "name", "flag", "seq", "extra"]
    x = table.columns["x"]
    assert x.dtype == np.float64 and x[:2].tolist() == [1.0, 2.5] and np.isnan(x[2])
    assert table.columns["name"].tolist() == ["a", None, None]
    # Booleans are not numbers: they stay objects for preprocessing to treat as categories.
    assert table.columns["flag"].dtype == object
    assert table.columns["flag"].tolist() == [True, False, None]
    assert table.columns["seq"].shape == (3,) and table.columns["seq"][0] == [1, 2]
    assert table.columns["extra"].tolist() == [None, None, "late"]
    assert table.row_numbers.tolist() == [1, 2, 4]
    assert table.row_label == "line"


def test_ndjson_errors(tmp_path):
    write(tmp_path / "bad.ndjson", '{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(DataError) as excinfo:
        read_table("bad.ndjson", base_dir=tmp_path)
    assert_one_line_error(excinfo, "bad.ndjson, line 3", "invalid JSON")
    write(tmp_path / "list.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError) as excinfo:
        read_table("list.jsonl", base_dir=tmp_path)
    assert_one_line_error(excinfo, "list.jsonl, line 2", "array", "JSON object")
    write(tmp_path / "blank.jsonl", "\n \n")
    with pytest.raises(DataError) as excinfo:
        read_table("blank.jsonl", base_dir=tmp_path)
    assert_one_line_error(excinfo, "blank.jsonl has no data rows")


# --- Parquet -----------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    arrow = pa.table(
        {
            "i": pa.array([1, 2, 3], pa.int64()),
            "i_null": pa.array([1, None, 3], pa.int32()),
            "f": pa.array([0.5, None, 1.5]),
            "s": pa.array(["a", None, "c"]),
        }
    )
    pq.write_table(arrow, tmp_path / "data.parquet")
    table = read_table("data.parquet", base_dir=tmp_path)
    assert table.column_names == ["i", "i_null", "f", "s"]
    assert table.columns["i"].dtype == np.int64 and table.columns["i"].tolist() == [1, 2, 3]
    i_null = table.columns["i_null"]
    assert i_null.dtype == np.float64 and np.isnan(i_null[1]) and i_null[2] == 3.0
    assert np.isnan(table.columns["f"][1])
    assert table.columns["s"].dtype == object and table.columns["s"].tolist() == ["a", None, "c"]


def test_parquet_invalid_file(tmp_path):
    write(tmp_path / "fake.parquet", "not parquet at all")
    with pytest.raises(DataError) as excinfo:
        read_table("fake.parquet", base_dir=tmp_path)
    assert_one_line_error(excinfo, "fake.parquet", "Parquet")


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    import sys

    write(tmp_path / "data.parquet", "whatever")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(DataError) as excinfo:
        read_table("data.parquet", base_dir=tmp_path)
    assert_one_line_error(excinfo, "pip install 'forgeml[parquet]'")


# --- NumPy .npz --------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        y=np.array([0, 1, 1, 0]),
        x=rng.normal(size=(4, 3)),
        gray=rng.integers(0, 256, size=(4, 5, 6), dtype=np.uint8),
        rgb=rng.random((4, 5, 6, 3)),
        name=np.array(["a", "b", "c", "d"]),
    )
    table = read_table("data.npz", base_dir=tmp_path)
    assert table.column_names == ["y", "x_0", "x_1", "x_2", "gray", "rgb", "name"]
    assert table.columns["y"].tolist() == [0, 1, 1, 0]
    assert table.columns["x_1"].dtype == np.float64
    gray, rgb = table.columns["gray"], table.columns["rgb"]
    assert gray.shape == (4,) and gray[0].shape == (5, 6) and gray[0].dtype == np.uint8
    assert rgb[3].shape == (5, 6, 3) and rgb[3].dtype == np.uint8
    with np.load(tmp_path / "data.npz") as raw:
        assert np.array_equal(rgb[3], np.round(raw["rgb"][3] * 255).astype(np.uint8))
    assert table.columns["name"].dtype == object and table.columns["name"][2] == "c"
    assert table.num_rows == 4


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "rows.npz", x=np.zeros(3), y=np.zeros(4))
    with pytest.raises(DataError) as excinfo:
        read_table("rows.npz", base_dir=tmp_path)
    assert_one_line_error(excinfo, "rows.npz", "'x' has 3", "'y' has 4")

    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError) as excinfo:
        read_table("obj.npz", base_dir=tmp_path)
    assert_one_line_error(excinfo, "obj.npz", "'x'", "not loaded for safety")

    np.savez(tmp_path / "img.npz", x=np.full((2, 4, 4, 1), 7.0))
    with pytest.raises(DataError) as excinfo:
        read_table("img.npz", base_dir=tmp_path)
    assert_one_line_error(excinfo, "img.npz", "'x'", "uint8", "[0, 1]")

    np.savez(tmp_path / "int.npz", x=np.zeros((2, 4, 4), dtype=np.int64))
    with pytest.raises(DataError) as excinfo:
        read_table("int.npz", base_dir=tmp_path)
    assert_one_line_error(excinfo, "int.npz", "int64", "uint8")


# --- image folders -----------------------------------------------------------------------------


def test_image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "pets"
    for cls, names in {"dog": ["b.PNG", "a.jpg"], "cat": ["z.jpeg"]}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            fmt = "PNG" if name.lower().endswith(".png") else "JPEG"
            Image.new("RGB", (4, 4), (255, 0, 0)).save(root / cls / name, format=fmt)
        write(root / cls / "notes.txt", "ignored")
        write(root / cls / ".hidden.png", "ignored")
    (root / ".cache").mkdir()
    write(root / "readme.md", "ignored")

    table = read_table("pets", base_dir=tmp_path)
    assert table.column_names == ["image", "label"]
    assert table.columns["label"].tolist() == ["cat", "dog", "dog"]
    paths = table.columns["image"].tolist()
    assert [Path(p).name for p in paths] == ["z.jpeg", "a.jpg", "b.PNG"]
    assert all(os.path.isabs(p) and Path(p).is_file() for p in paths)
    assert table.row_label == "file"
    assert ".png" in IMAGE_EXTENSIONS


def test_image_folder_errors(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    write(flat / "a.png", "x")
    with pytest.raises(DataError) as excinfo:
        read_table(str(flat))
    assert_one_line_error(excinfo, "no class sub-folders", "<class_name>/<image>.png")

    (flat / "cat").mkdir()
    write(flat / "cat" / "a.txt", "x")
    with pytest.raises(DataError) as excinfo:
        read_table(str(flat))
    assert_one_line_error(excinfo, "no .png/.jpg/.jpeg images", "<class_name>/<image>.png")

    (flat / "dog").mkdir()
    write(flat / "dog" / "a.png", "x")
    with pytest.raises(DataError) as excinfo:
        read_table(str(flat))
    assert_one_line_error(excinfo, "'cat'", "hold no")


# --- paths and dispatch ------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_table("x.csv", base_dir=tmp_path)
    assert_one_line_error(
        excinfo, f"data file 'x.csv' not found (looked at {tmp_path / 'x.csv'}); check the path"
    )


def test_relative_to_cwd(tmp_path, monkeypatch):
    write(tmp_path / "d.csv", "a\n1\n")
    monkeypatch.chdir(tmp_path)
    assert read_table("d.csv").columns["a"].tolist() == ["1"]


def test_unsupported_extension(tmp_path):
    write(tmp_path / "data.xlsx", "x")
    with pytest.raises(DataError) as excinfo:
        read_table("data.xlsx", base_dir=tmp_path)
    assert_one_line_error(excinfo, "'.xlsx'", ".csv", ".jsonl", ".parquet", ".npz", "builtin:")


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path / "secret.csv", "a\n1\n")

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    # chmod cannot stop root (which CI containers often are), so fake the failing read.
    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError) as excinfo:
        read_table(str(path))
    assert_one_line_error(excinfo, "secret.csv", str(path), "permission denied")


# --- built-ins ---------------------------------------------------------------------------------


def test_list_builtins():
    assert list_builtins() == ["blobs", "digits", "regression", "tabular", "waves"]


def test_digits():
    table = read_table("builtin:digits")
    assert table.num_rows == 1797
    assert table.source == "builtin:digits" and table.row_label == "row"
    images, labels = table.columns["image"], table.columns["label"]
    assert all(img.shape == (8, 8) and img.dtype == np.uint8 for img in images)
    assert max(int(img.max()) for img in images) == 255
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))
    # First sample of the file: row 0 is 0,0,5,13,9,1,0,0 -> round(v * 255 / 16).
    assert images[0][0].tolist() == [0, 0, 80, 207, 143, 16, 0, 0]
    assert labels[0] == 0


def test_blobs():
    table = read_table("builtin:blobs")
    assert table.column_names == ["x0", "x1", "label"]
    assert table.num_rows == 600
    assert np.bincount(table.columns["label"]).tolist() == [200, 200, 200]
    assert table.columns["label"].dtype == np.int64 and table.columns["x0"].dtype == np.float64
    table = read_table("builtin:blobs?n=500&classes=4&features=3&std=0.5&seed=1")
    assert table.column_names == ["x0", "x1", "x2", "label"]
    assert np.bincount(table.columns["label"]).tolist() == [125] * 4


def test_regression():
    table = read_table("builtin:regression?n=50&features=3&noise=0")
    assert table.column_names == ["x0", "x1", "x2", "y"]
    assert table.num_rows == 50 and table.columns["y"].dtype == np.float64
    assert read_table("builtin:regression").num_rows == 1000


def test_tabular():
    table = read_table("builtin:tabular?n=2000")
    assert table.column_names == ["age", "income", "color", "label"]
    assert table.columns["age"].dtype == np.float64
    assert table.columns["income"].dtype == np.float64
    color, label = table.columns["color"], table.columns["label"]
    assert color.dtype == object and set(color) == {"red", "green", "blue"}
    assert label.dtype == object and set(label) == {"yes", "no"}
    # The label depends on every input: "yes" rates differ by colour and by age.
    yes = label == "yes"
    assert yes[color == "red"].mean() - yes[color == "blue"].mean() > 0.3
    old = table.columns["age"] > 49
    assert yes[old].mean() - yes[~old].mean() > 0.15
    rich = table.columns["income"] > np.median(table.columns["income"])
    assert yes[rich].mean() - yes[~rich].mean() > 0.15


@pytest.mark.parametrize("name", ["blobs", "regression", "tabular"])
def test_generated_builtins_are_deterministic(name):
    a, b = read_table(f"builtin:{name}?seed=3"), read_table(f"builtin:{name}?seed=3")
    c = read_table(f"builtin:{name}?seed=4")
    for column in a.column_names:
        assert np.array_equal(a.columns[column], b.columns[column])
    assert not all(np.array_equal(a.columns[k], c.columns[k]) for k in a.column_names)


def test_builtin_errors():
    with pytest.raises(DataError) as excinfo:
        read_table("builtin:mnist")
    assert_one_line_error(excinfo, "'mnist'", "blobs, digits, regression, tabular")
    with pytest.raises(DataError) as excinfo:
        read_table("builtin:blobs?size=3")
    assert_one_line_error(excinfo, "'size'", "n, features, classes, std, seed")
    with pytest.raises(DataError) as excinfo:
        read_table("builtin:blobs?n=many")
    assert_one_line_error(excinfo, "'n'", "integer", "'many'")
    with pytest.raises(DataError) as excinfo:
        read_table("builtin:regression?noise=-1")
    assert_one_line_error(excinfo, "'noise'", "at least 0")
    with pytest.raises(DataError) as excinfo:
        read_table("builtin:digits?n=5")
    assert_one_line_error(excinfo, "'n'", "none")


def test_errors_are_data_errors_with_one_line(tmp_path):
    # A header name with a line break must not break the one-line message.
    write(tmp_path / "q.csv", '"a\nb",a\n1,2,3\n')
    with pytest.raises(DataError) as excinfo:
        read_table("q.csv", base_dir=tmp_path)
    message = assert_one_line_error(excinfo, "q.csv, line 3")
    assert re.search(r"expected 2 fields", message)


def test_waves_are_variable_length_signals_of_three_balanced_shapes():
    table = read_table("builtin:waves?n=90&length=40&seed=3")
    signals, labels = table.columns["signal"], table.columns["label"]
    assert len(signals) == len(labels) == 90
    lengths = {len(s) for s in signals}
    assert min(lengths) >= 20 and max(lengths) <= 40 and len(lengths) > 5
    assert all(s.dtype == np.float32 and s.ndim == 1 for s in signals)
    assert sorted(set(labels)) == ["sawtooth", "sine", "square"]
    assert {
        str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)
    } == {
        "sawtooth": 30,
        "sine": 30,
        "square": 30,
    }
    # The same seed gives the same data; another seed other data.
    again = read_table("builtin:waves?n=90&length=40&seed=3").columns["signal"]
    other = read_table("builtin:waves?n=90&length=40&seed=4").columns["signal"]
    assert all(np.array_equal(a, b) for a, b in zip(signals, again, strict=True))
    assert not all(
        len(a) == len(b) and np.array_equal(a, b) for a, b in zip(signals, other, strict=True)
    )
