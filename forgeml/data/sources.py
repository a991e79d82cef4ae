"""Read every supported data source into a `Table`.

`read_table(spec)` takes a file path, an image folder or `builtin:NAME?param=value` and returns
its columns as numpy arrays, following the conventions in `table.py`. Readers only read: CSV cells
stay strings and images stay undecoded, so preprocessing can parse and check each value with the
file and line of its row at hand (`Table.row_ref`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from forgeml.data.bad_rows import (
    INVALID_JSON,
    INVALID_UTF8,
    NOT_AN_OBJECT,
    WRONG_FIELD_COUNT,
    BadRows,
)
from forgeml.data.builtins import list_builtins, read_builtin
from forgeml.data.npz import read_npz
from forgeml.data.table import Table
from forgeml.errors import DataError

__all__ = ["list_builtins", "read_table"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def read_table(
    spec: str,
    *,
    delimiter: str | None = None,
    base_dir: str | Path | None = None,
    bad_rows: BadRows | None = None,
) -> Table:
    """Read a data source into a `Table`.

    Args:
        spec: A path to a `.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`, `.parquet` or `.npz` file, a
            folder of images laid out as `DIR/<class_name>/<image>.png`, or a built-in data set
            such as `builtin:digits` or `builtin:blobs?n=500&classes=4&seed=1`.
        delimiter: Field separator for delimited text files; overrides the one implied by the
            extension ("," for .csv, tab for .tsv/.tab); given, a `.txt` file is delimited text
            too. Ignored by other formats. Tab-separated text has no quoting (see
            `_read_delimited`).
        base_dir: Directory that relative paths are resolved against (e.g. the config file's
            folder); the current directory when None.
        bad_rows: Skip mode (`data.on_bad_rows: skip`): a CSV/TSV record with the wrong number
            of fields, a JSONL line that is not a JSON object and a line that is not UTF-8 are
            recorded here and left out. None: they raise.

    Returns:
        The table; its `source` is `spec` as given, so error messages name what the user wrote.

    Raises:
        DataError: The source is missing, unreadable, of an unsupported kind or malformed (or,
            skipping bad rows, has none left). The message is one line naming the file and line,
            row or column at fault.
    """
    spec = str(spec)
    if spec.startswith("builtin:"):
        return read_builtin(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else os.getcwd()) / path
    path = Path(os.path.abspath(path))  # normalise "..", keep symlinks as the user named them
    try:
        if not path.exists():
            raise _error(f"data file {spec!r} not found (looked at {path}); check the path")
        if path.is_dir():
            return _read_image_folder(path, spec)
        suffix = path.suffix.lower()
        if suffix in _DELIMITERS or (suffix == ".txt" and delimiter):
            return _read_delimited(path, spec, delimiter or _DELIMITERS[suffix], bad_rows)
        if suffix in _JSONL:
            return _read_jsonl(path, spec, bad_rows)
        if suffix in _READERS:
            return _READERS[suffix](path, spec)
        supported = ", ".join([*_DELIMITERS, *_JSONL, *_READERS])
        txt = "; a .txt file of delimited text needs data.delimiter" if suffix == ".txt" else ""
        raise _error(
            f"{spec}: unsupported file type {path.suffix or '(no extension)'!r}; expected one of "
            f"{supported}, an image folder or builtin:NAME{txt}; convert the file or rename it"
        )
    except PermissionError:
        raise _error(
            f"cannot read {spec} ({path}): permission denied; check the file permissions"
        ) from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise _error(
            f"cannot read {spec} ({path}): {reason}; check that the file is readable"
        ) from None


def _error(message: str) -> DataError:
    # The CLI prints a DataError as one line; user text (column names, parser messages) could
    # carry line breaks, so fold them here once instead of at every call site.
    return DataError(" ".join(message.split()))


def _no_rows(name: str, expected: str) -> DataError:
    return _error(f"{name} has no data rows; expected {expected}; add rows or pass another file")


def _object_array(values: Any) -> np.ndarray:
    # np.array(values, dtype=object) would turn equal-length lists (JSON arrays, image rows) into a
    # 2-D array; fromiter keeps exactly one entry per row.
    return np.fromiter(values, dtype=object, count=len(values))


def _read_text(
    path: Path, name: str, bad_rows: BadRows | None = None, *, header: bool = False
) -> tuple[str, set[int]]:
    """The file as text, and the numbers of the lines blanked in it: skipping bad rows, a line
    that is not UTF-8 is recorded and blanked (readers skip blank lines, and the lines after it
    keep their numbers). A `header` line cannot be skipped."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), set()  # -sig drops the byte-order mark Excel writes
    except UnicodeDecodeError as e:
        if bad_rows is None:
            line = raw.count(b"\n", 0, e.start) + 1
            raise _utf8_error(name, line, raw[e.start]) from None
    lines: list[str] = []
    blanked: set[int] = set()
    for number, data in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(data.decode("utf-8-sig" if number == 1 else "utf-8"))
            continue
        except UnicodeDecodeError as e:
            if header and not any(line.strip() for line in lines):
                raise _utf8_error(name, number, data[e.start]) from None
            detail = f"byte 0x{data[e.start]:02x} is not valid UTF-8"
        bad_rows.record(f"{name}, line {number}", None, INVALID_UTF8, detail)
        lines.append("")
        blanked.add(number)
    return "\n".join(lines), blanked


def _utf8_error(name: str, line: int, byte: int) -> DataError:
    return _error(
        f"{name}, line {line}: byte 0x{byte:02x} is not valid UTF-8; expected UTF-8 "
        f"text; re-save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel)"
    )


def _all_rows_bad(name: str, bad_rows: BadRows | None) -> None:
    """Skipping bad rows, a file whose every row was bad says so (not just 'no data rows')."""
    if bad_rows is not None and bad_rows.count:
        bad_rows.check(bad_rows.count, 1.0, name)


# --- delimited text (CSV/TSV) ------------------------------------------------------------------


def _read_delimited(path: Path, name: str, delimiter: str, bad_rows: BadRows | None) -> Table:
    if len(delimiter) != 1:
        raise _error(
            f"delimiter {delimiter!r} for {name} is not one character; expected e.g. ',' or a "
            f"tab; fix the delimiter setting"
        )
    # newline="" leaves line breaks inside quoted fields to the csv module, as its docs require.
    text, blanked = _read_text(path, name, bad_rows, header=True)
    # Tab-separated text is one record per line, with no quoting (the IANA text/tab-separated-
    # values rule): a field cannot hold a tab or a line break, so a `"` is just text. Read with
    # CSV quoting, a sentence opening with an unbalanced `"` would swallow the lines after it.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    rows: list[list[str]] = []
    numbers: list[int] = []
    next_start = 1
    try:
        for record in reader:
            # reader.line_num is the last line of the record just read, so a quoted multi-line
            # field would shift the count; the record starts right after the previous one ended.
            line, next_start = next_start, reader.line_num + 1
            if not record:  # blank line
                continue
            if blanked and any(line <= b <= reader.line_num for b in blanked):
                continue  # a quoted field lost a line that was not UTF-8: drop the whole record
            if header is None:
                header = _check_header(record, name, line)
            elif len(record) != len(header):
                detail = f"expected {len(header)} fields as in the header, found {len(record)}"
                if bad_rows is None:
                    more = len(record) > len(header)
                    hint = "an unquoted delimiter" if more else "a missing field"
                    raise _error(f"{name}, line {line}: {detail}; check for {hint} in that row")
                bad_rows.record(f"{name}, line {line}", None, WRONG_FIELD_COUNT, detail)
            else:
                rows.append(record)
                numbers.append(line)
    except csv.Error as e:
        raise _error(
            f"{name}, line {reader.line_num}: cannot parse the row ({e}); check its quotes"
        ) from None
    if header is None or not rows:
        _all_rows_bad(name, bad_rows)
        raise _no_rows(name, "a header line and at least one row")
    # An empty cell is a missing value; everything else stays text for preprocessing to parse.
    columns = {h: _object_array([r[j] or None for r in rows]) for j, h in enumerate(header)}
    return Table(columns, source=name, row_label="line", row_numbers=np.array(numbers))


def _check_header(record: list[str], name: str, line: int) -> list[str]:
    # Spaces after the delimiter ("a, b") are common in hand-written files; names are stripped.
    header = [h.strip() for h in record]
    empty = [str(j + 1) for j, h in enumerate(header) if not h]
    if empty:
        raise _error(
            f"{name}, line {line}: the header has empty column names at position(s) "
            f"{', '.join(empty)}; expected a name for every column; add the missing names"
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise _error(
            f"{name}, line {line}: the header repeats column name(s) "
            f"{', '.join(map(repr, repeated))}; expected unique names; rename the duplicates"
        )
    return header


# --- JSON lines --------------------------------------------------------------------------------


def _read_jsonl(path: Path, name: str, bad_rows: BadRows | None) -> Table:
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    text, _ = _read_text(path, name, bad_rows)
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            detail = f"invalid JSON ({e.msg} at column {e.colno})"
            if bad_rows is None:
                raise _error(
                    f"{name}, line {line_no}: {detail}; expected one JSON object per line; fix "
                    f"or remove that line"
                ) from None
            bad_rows.record(f"{name}, line {line_no}", None, INVALID_JSON, detail)
            continue
        if not isinstance(record, dict):
            if bad_rows is None:
                raise _error(
                    f"{name}, line {line_no}: found a JSON {_json_kind(record)}, expected a JSON "
                    f'object such as {{"x": 1.5, "label": "cat"}}; write one object per line'
                )
            detail = f"found a JSON {_json_kind(record)}, expected a JSON object"
            bad_rows.record(f"{name}, line {line_no}", None, NOT_AN_OBJECT, detail)
            continue
        records.append(record)
        numbers.append(line_no)
    if not records:
        _all_rows_bad(name, bad_rows)
        raise _no_rows(name, "one JSON object per line")
    names = list(dict.fromkeys(k for r in records for k in r))  # union, first-seen order
    columns = {k: _jsonl_column([r.get(k) for r in records]) for k in names}
    return Table(columns, source=name, row_label="line", row_numbers=np.array(numbers))


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _jsonl_column(values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    # bool is a subclass of int, but true/false are categories, not numbers.
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return _object_array(values)


# --- Parquet -----------------------------------------------------------------------------------


def _read_parquet(path: Path, name: str) -> Table:
    try:  # optional dependency: imported only when a Parquet file is read
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise _error(
            f"reading {name} needs pyarrow, which is not installed; "
            f"install it with: pip install 'forgeml[parquet]'"
        ) from None
    try:
        arrow = pq.read_table(path)
    except pa.ArrowException as e:
        raise _error(
            f"cannot read {name} as Parquet ({e}); expected a valid Parquet file"
        ) from None
    if arrow.num_rows == 0:
        raise _no_rows(name, "at least one row")
    repeated = sorted({n for n in arrow.column_names if arrow.column_names.count(n) > 1})
    if repeated:
        raise _error(f"{name}: repeated column name(s) {repeated}; expected unique names")
    columns = {}
    for field, column in zip(arrow.schema, arrow.columns, strict=True):
        if pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
            if column.null_count:  # integers cannot hold NaN: widen to float first
                column = pc.fill_null(column.cast(pa.float64()), math.nan)
            columns[field.name] = column.to_numpy()
        else:
            columns[field.name] = _object_array(column.to_pylist())
    return Table(columns, source=name, row_label="row")


# --- image folders -----------------------------------------------------------------------------


def _read_image_folder(path: Path, name: str) -> Table:
    layout = f"expected the layout {name}/<class_name>/<image>.png, one sub-folder per class"
    classes = sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not classes:
        raise _error(
            f"image folder {name} has no class sub-folders; {layout}; move each class's images "
            f"into a sub-folder named after the class"
        )
    images: list[str] = []
    labels: list[str] = []
    empty: list[str] = []
    for folder in classes:
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        images += [str(folder / f) for f in files]
        labels += [folder.name] * len(files)
        if not files:
            empty.append(folder.name)
    kinds = "/".join(IMAGE_EXTENSIONS)
    if not images:
        raise _error(
            f"image folder {name} has no {kinds} images in its class sub-folders; {layout}"
        )
    if empty:
        # A silently dropped class would shrink the label set; it is usually a misplaced folder.
        raise _error(
            f"image folder {name}: class sub-folder(s) {', '.join(map(repr, empty))} hold no "
            f"{kinds} images; {layout}; add images or remove the empty folders"
        )
    columns = {"image": _object_array(images), "label": _object_array(labels)}
    return Table(columns, source=name, row_label="file")


_JSONL = (".jsonl", ".ndjson")

_READERS: dict[str, Callable[[Path, str], Table]] = {
    ".parquet": _read_parquet,
    ".npz": read_npz,  # npz.py: which arrays become columns, sequences or images
}
