"""Bad rows: rows whose data cannot be used as it is, and what `data.on_bad_rows` does with them.

A bad row is a CSV/TSV record with the wrong number of fields, a JSONL line that is not a JSON
object, a line that is not valid UTF-8, a value that is not a number in a numeric column (the
target of a regression included), a missing value in a column without a fill rule, a missing
target, a multi-label target that is no flat list of labels, an image that cannot be read, a
text or sequence the preprocessor cannot use, or a class or label the model does not know
(val/test data).
Unknown category values in features are not bad: they go to the unknown bucket.

By default (`on_bad_rows: error`) the first one raises a one-line `DataError` naming the file,
line and column. With `on_bad_rows: skip` the readers and the preprocessor take a `BadRows`
collector instead: they record the row there and leave it out, and `check` fails once more than
`data.max_bad_fraction` of a source's rows were bad.

The preprocessor skips in a pass of its own (`RowChecks`) that drops the bad rows before the
default code runs on the rest: the default path keeps its speed, and a bad row the pass missed
still stops with the default error instead of slipping through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from forgeml.data.split import is_missing, parse_float_column
from forgeml.data.table import Table
from forgeml.errors import DataError

# The reasons a row is bad: the keys of `BadRows.by_reason`.
WRONG_FIELD_COUNT = "wrong field count"
INVALID_JSON = "invalid JSON"
NOT_AN_OBJECT = "not a JSON object"
INVALID_UTF8 = "invalid UTF-8"
NOT_A_NUMBER = "not a number"
MISSING_VALUE = "missing value"
MISSING_TARGET = "missing target"
UNREADABLE_IMAGE = "unreadable image"
UNKNOWN_CLASS = "unknown class"
BAD_LABELS = "bad label list"

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class BadRow:
    """One bad row, as kept for messages and metrics.json."""

    row: str  # "data.csv, line 17" (`Table.row_ref`)
    column: str | None  # None: the record as a whole (e.g. a wrong field count)
    reason: str  # one of the reasons above
    detail: str  # "'abc' is not a number"

    def __str__(self) -> str:
        where = self.row if self.column is None else f"{self.row}, column '{self.column}'"
        return f"{where}: {self.detail}"


@dataclass
class BadRows:
    """The bad rows of one split or source, skipped: counted per reason, with a few examples.

    A row counts once however many of its values are bad, and however often it is recorded (the
    train split is checked by both `Preprocessor.fit` and `transform`).
    """

    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[BadRow] = field(default_factory=list)  # the first MAX_EXAMPLES recorded
    _rows: set[str] = field(default_factory=set, init=False, repr=False)  # refs recorded

    @property
    def count(self) -> int:
        return len(self._rows)

    def record(self, ref: str, column: str | None, reason: str, detail: str) -> None:
        """Count the row `ref` ("data.csv, line 17") as bad for `reason`, unless it already is."""
        if ref in self._rows:
            return
        self._rows.add(ref)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(BadRow(ref, column, reason, " ".join(detail.split())))

    def reasons(self) -> str:
        """'2 not a number, 1 wrong field count': most frequent first."""
        counts = sorted(self.by_reason.items(), key=lambda item: -item[1])
        return ", ".join(f"{n} {reason}" for reason, n in counts)

    def check(self, total: int, max_fraction: float, source: str) -> None:
        """Raise a one-line DataError when more than `max_fraction` of `total` rows are bad, or
        when all of them are (nothing would be left)."""
        if not self.count or (self.count / max(total, 1) <= max_fraction and self.count < total):
            return
        first = f"first: {self.examples[0]}"
        if self.count >= total:
            raise DataError(
                f"{source}: all {total} rows are bad ({self.reasons()}); {first}; fix the data"
            )
        raise DataError(
            f"{source}: {self.count} of {total} rows are bad ({self.count / total:.1%}: "
            f"{self.reasons()}), more than data.max_bad_fraction={max_fraction:g} allows; "
            f"{first}; fix the data or raise data.max_bad_fraction"
        )

    def describe(self, source: str) -> str:
        """The log line: 'skipped 3 bad rows of data.csv (2 not a number, ...); first: ...'."""
        rows = "row" if self.count == 1 else "rows"
        first = f"; first: {self.examples[0]}" if self.examples else ""
        return f"skipped {self.count} bad {rows} of {source} ({self.reasons()}){first}"

    def summary(self, source: str, rows: int) -> dict[str, Any]:
        """For metrics.json: `rows` is how many rows there were before skipping."""
        return {
            "source": source,
            "rows": rows,
            "skipped": self.count,
            "by_reason": dict(self.by_reason),
            "examples": [asdict(e) for e in self.examples],
        }

    @classmethod
    def combine(cls, parts: Iterable[BadRows]) -> BadRows:
        """All of `parts` in one collector (e.g. the splits of one source)."""
        out = cls()
        for part in parts:
            out._rows |= part._rows
            for reason, n in part.by_reason.items():
                out.by_reason[reason] = out.by_reason.get(reason, 0) + n
            out.examples += part.examples[: MAX_EXAMPLES - len(out.examples)]
        return out


def check_splits(
    bad: dict[str, BadRows], rows: dict[str, int], sources: dict[str, str], max_fraction: float
) -> None:
    """`BadRows.check` per source; the splits cut from one source are counted together.

    Args:
        bad: the collector of each split.
        rows: each split's rows before skipping.
        sources: each split's source (a file, or builtin:NAME).
    """
    for source in dict.fromkeys(sources.values()):
        splits = [s for s in bad if sources[s] == source]
        total = sum(rows[s] for s in splits)
        BadRows.combine(bad[s] for s in splits).check(total, max_fraction, source)


def quote(value: object, limit: int = 40) -> str:
    """A value for a bad-row detail: quoted, on one line, shortened."""
    text = " ".join(str(value).split())
    return f"'{text[:limit]}...'" if len(text) > limit else f"'{text}'"


class RowChecks:
    """Bad values of a table found column by column, recorded row by row.

    Recording in row order makes the first example the first bad row of the table; a row with
    several bad values is recorded for the first check that found it.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.bad = np.zeros(table.num_rows, dtype=bool)  # (N,)
        self._found: list[tuple[np.ndarray, str, str, Callable[[int], str]]] = []

    def add(self, rows: np.ndarray, column: str, reason: str, detail: Callable[[int], str]) -> None:
        """Rows (indices) of `column` that are bad for `reason`; `detail(i)` describes row i."""
        if len(rows):
            self.bad[rows] = True
            self._found.append((np.asarray(rows, dtype=np.int64), column, reason, detail))

    def column(
        self,
        name: str,
        *,
        numeric: bool,
        required: bool,
        missing: tuple[str, str] = (MISSING_VALUE, "missing value"),
    ) -> None:
        """Values that are not finite numbers (a numeric column) and, in a `required` column (no
        fill rule, or the target), missing values; `missing` is their (reason, detail)."""
        values = self.table.columns[name]
        if numeric:
            floats, not_numbers = parse_float_column(values)  # only bad positions loop in Python
            self.add(
                not_numbers, name, NOT_A_NUMBER, lambda i: f"{quote(values[i])} is not a number"
            )
            absent = np.isnan(floats)
            absent[not_numbers] = False
        elif values.dtype.kind in "biu":
            absent = np.zeros(len(values), dtype=bool)
        elif values.dtype.kind == "f":
            absent = np.isnan(values)
        else:  # objects or strings: None, NaN or blank
            absent = np.fromiter((is_missing(v) for v in values), dtype=bool, count=len(values))
        if required:
            self.add(np.flatnonzero(absent), name, missing[0], lambda _i: missing[1])

    def target(self, name: str, *, numeric: bool) -> None:
        """The target: missing, or (a regression target) not a number."""
        self.column(
            name, numeric=numeric, required=True, missing=(MISSING_TARGET, "missing target value")
        )

    def record(self, bad_rows: BadRows) -> np.ndarray:
        """Record the bad rows in row order; returns the (K,) ascending indices of the good ones."""
        found = [
            (int(i), order, column, reason, detail)
            for order, (rows, column, reason, detail) in enumerate(self._found)
            for i in rows
        ]
        for i, _, column, reason, detail in sorted(found, key=lambda f: (f[0], f[1])):
            bad_rows.record(self.table.row_ref(i), column, reason, detail(i))
        return np.flatnonzero(~self.bad)
