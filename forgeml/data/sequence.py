"""Numeric sequence columns: one row holds L steps of C values each (batch key "seq:<col>").

A row's value is a JSON array string ("[0.1, 0.2]" is L=2 steps of C=1; "[[0.1, 1.0], [0.2,
1.1]]" is L=2, C=2), an already-parsed (nested) list, or a numpy array (L,) or (L, C) — or the
whole column is one numeric array (N, L) or (N, L, C). `parse_sequences` checks every row and pads
them into one (N, L, C) float32 block; `sequences_from_columns` makes one sequence out of a run
of numeric columns (x0..x99). `SequenceScaler` standardises each channel with statistics of the
real (not padding) train steps.

Rows are left-aligned: padding is zeros at the end, and `lengths` says how many steps are real.
A variable-length row longer than `max_length` keeps its first `max_length` steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from forgeml.errors import DataError

CHANNEL_FIX = "expected the same number of values in every step of every row; fix or drop the row"
MISSING = "missing value; fill is not supported for sequence columns"
EXPECTED = (
    "expected a JSON array of numbers like [0.1, 0.2] or of steps like [[0.1, 1.0], [0.2, 1.1]]"
)


class SequenceConfig(BaseModel):
    """`data.columns.<col>.sequence`: the shape of a numeric sequence column."""

    # As config.py's `Strict` (unknown keys rejected, assignments validated), and strict types.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    length: int | None = Field(None, ge=1)  # every row has exactly this many steps; None: varies
    max_length: int = Field(1024, ge=1)  # variable-length rows: longer ones keep their beginning
    normalize: bool = True  # per-channel standardisation with train statistics (SequenceScaler)


@dataclass
class ParsedSequences:
    values: np.ndarray  # (N, L, C) float32, zero-padded at the end of each row
    lengths: np.ndarray  # (N,) int64 real steps per row; 0 only for a bad row (`bad=` mode)
    truncated: int  # rows longer than max_length, cut to it
    channels: int  # C; 0 when no row could be parsed


class _BadRow(Exception):
    """A row's problem, raised inside parsing and turned into a DataError or a `bad` report."""

    def __init__(self, detail: str, fix: str = f"{EXPECTED}; fix the value or drop the row"):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def parse_sequences(
    values: Sequence[object],
    *,
    column: str,
    where: Callable[[int], str],
    cfg: SequenceConfig,
    bad: Callable[[int, str], None] | None = None,
    channels: int | None = None,
) -> ParsedSequences:
    """Parse one sequence column.

    Args:
        where: row index -> its place for messages, e.g. "data.csv, line 12".
        bad: skip mode: a bad row is reported as bad(i, detail) — the detail alone, e.g.
            "'abc' at index 3 is not a number" — and gets length 0 instead of raising.
        channels: the C fitted on the train split (val/test/predict); None: the first good row's.

    Raises:
        DataError: one line naming the row and column: missing value, not a JSON array of
            numbers, empty, non-finite, another channel count, or (with `cfg.length`) another
            length.
    """
    if isinstance(values, np.ndarray) and values.ndim in (2, 3) and values.dtype.kind in "fiu":
        return _parse_block(values, column=column, where=where, cfg=cfg, bad=bad, channels=channels)
    rows: list[np.ndarray | None] = []
    first = None  # index of the row that set `channels`
    for i, value in enumerate(values):
        try:
            arr = _row_array(value)
            if channels is not None and arr.shape[1] != channels:
                found = f"{arr.shape[1]} channel{'s' if arr.shape[1] != 1 else ''}"
                origin = where(first) if first is not None else "the training data"
                raise _BadRow(f"{found} per step, but {origin} has {channels}", CHANNEL_FIX)
            if cfg.length is not None and len(arr) != cfg.length:
                raise _ragged(len(arr), cfg.length)
        except _BadRow as exc:
            _report(exc, i, column=column, where=where, cfg=cfg, bad=bad)
            rows.append(None)
            continue
        if channels is None:
            channels, first = arr.shape[1], i
        rows.append(arr)
    return _stack(rows, cfg, channels)


def sequences_from_columns(columns: list[np.ndarray]) -> ParsedSequences:
    """A run of already-parsed numeric columns, (N,) each, as one sequence: (N, L=len(columns),
    C=1), every row full length."""
    values = np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1)[:, :, None]
    n, length = values.shape[:2]
    return ParsedSequences(
        values=values, lengths=np.full(n, length, dtype=np.int64), truncated=0, channels=1
    )


class SequenceScaler:
    """Per-channel standardisation, fitted on the real steps of the train rows only."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)  # (C,)
        self.std = np.asarray(std, dtype=np.float32)  # (C,), no zeros

    @classmethod
    def fit(cls, parsed: ParsedSequences, *, column: str = "?") -> SequenceScaler:
        real = parsed.values[_mask(parsed.lengths, parsed.values.shape[1])]  # (steps, C)
        if not len(real):
            raise DataError(
                f"column '{column}': no sequence steps in the training split to fit the "
                "normalisation on; expected at least one non-empty row; fix the data"
            )
        mean = real.mean(axis=0, dtype=np.float64)
        std = real.std(axis=0, dtype=np.float64)
        std[~(std > 0)] = 1.0  # a constant channel is only centred
        return cls(mean, std)

    def transform(self, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(N, L, C) -> standardised (N, L, C) float32; padding stays 0."""
        out = (values.astype(np.float32, copy=False) - self.mean) / self.std
        out *= _mask(lengths, values.shape[1])[:, :, None]
        return out.astype(np.float32, copy=False)

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SequenceScaler:
        return cls(np.asarray(state["mean"]), np.asarray(state["std"]))


# --------------------------------------------------------------------------- helpers


def _mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """(N, L) bool, True at the real steps of left-aligned rows."""
    return np.arange(width) < np.asarray(lengths)[:, None]


def _report(
    exc: _BadRow,
    i: int,
    *,
    column: str,
    where: Callable[[int], str],
    cfg: SequenceConfig,
    bad: Callable[[int, str], None] | None,
) -> None:
    if bad is not None:
        bad(i, exc.detail)
        return
    fix = exc.fix.replace("<col>", column)
    raise DataError(f"{where(i)}, column '{column}': {exc.detail}; {fix}")


def _row_array(value: object) -> np.ndarray:
    """One row's value -> (L, C) float32 with L, C >= 1 and finite values; else _BadRow."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _BadRow(MISSING, "fill it in or drop the row")
    has_bool = False  # numpy reads true/false next to numbers as 1/0: look for them if they can be
    if isinstance(value, str):
        if not value.strip():
            raise _BadRow(MISSING, "fill it in or drop the row")
        has_bool = "true" in value or "false" in value
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            detail = f"{_quote(value)} is not valid JSON ({exc.msg} at char {exc.pos})"
            raise _BadRow(detail) from None
    elif isinstance(value, list | tuple):
        has_bool = _has_bool(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        arr = value
    elif isinstance(value, list | tuple | np.ndarray):
        try:
            arr = np.array(value)
        except ValueError:  # ragged nesting
            arr = np.array([], dtype=object)
        if arr.dtype.kind not in "fiu" or has_bool:
            raise _BadRow(_describe(value)) from None
    else:
        raise _BadRow(f"{_found(value)}, not a list of numbers")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise _BadRow(f"nested {arr.ndim} levels deep (shape {arr.shape}), at most 2")
    if arr.shape[0] == 0:
        raise _BadRow("an empty sequence; every row needs at least one step")
    if arr.shape[1] == 0:
        raise _BadRow("steps without values")
    with np.errstate(over="ignore"):  # beyond float32's range -> inf, reported below
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        step, ch = np.argwhere(~np.isfinite(out))[0]
        at = f"step {step}" + (f", channel {ch}" if out.shape[1] > 1 else "")
        found = float(arr[step, ch])
        raise _BadRow(f"non-finite value {found!r} at {at} (NaN, infinite or beyond float32)")
    return out


def _describe(value: Any) -> str:
    """What is wrong in a list that numpy could not make a number array of."""
    items = list(value)
    nested = [isinstance(v, list | tuple | np.ndarray) for v in items]
    if any(nested) and not all(nested):
        i = nested.index(not nested[0])
        return f"a mix of numbers and lists (index 0 is {_found(items[0])}, index {i} is {_found(items[i])})"
    if not any(nested):
        i = next((i for i, v in enumerate(items) if not _is_number(v)), None)
        if i is not None:
            return f"{_found(items[i])} at index {i} is not a number"
    if all(nested):
        width = len(items[0])
        for i, step in enumerate(items):
            if len(step) != width:
                return f"step {i} has {_values(len(step))}, step 0 has {_values(width)}"
            for j, v in enumerate(step):
                if not _is_number(v):
                    return f"{_found(v)} at step {i}, channel {j} is not a number"
    return "values that are not plain numbers (nested too deep, or a number too large)"


def _values(n: int) -> str:
    return f"{n} value{'s' if n != 1 else ''}"


def _has_bool(value: list | tuple) -> bool:
    """True/False anywhere in a list or a list of steps."""
    for v in value:
        if v is True or v is False:
            return True
        if isinstance(v, list | tuple) and any(x is True or x is False for x in v):
            return True
    return False


def _ragged(found: int, declared: int) -> _BadRow:
    return _BadRow(
        f"ragged: {found} steps, the declared length is {declared}",
        f"make every row {declared} steps long, or remove data.columns.<col>.sequence.length to "
        "allow variable lengths",
    )


def _is_number(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _found(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"a string {_quote(v)}"
    if isinstance(v, list | tuple | np.ndarray):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    if _is_number(v):
        return f"the number {v!r}"
    return f"a {type(v).__name__}"


def _quote(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return f'"{text[:limit]}..."' if len(text) > limit else f'"{text}"'


def _stack(
    rows: list[np.ndarray | None], cfg: SequenceConfig, channels: int | None
) -> ParsedSequences:
    """Good rows (L_i, C) and bad ones (None) -> one zero-padded (N, L, C) block."""
    lengths = np.array([0 if r is None else len(r) for r in rows], dtype=np.int64)  # (N,)
    limit = cfg.length if cfg.length is not None else cfg.max_length
    truncated = int((lengths > limit).sum())
    lengths = np.minimum(lengths, limit)
    width = cfg.length or max(1, int(lengths.max(initial=0)))
    values = np.zeros((len(rows), width, channels or 0), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            values[i, : lengths[i]] = r[: lengths[i]]
    return ParsedSequences(values, lengths, truncated, channels or 0)


def _parse_block(
    block: np.ndarray,
    *,
    column: str,
    where: Callable[[int], str],
    cfg: SequenceConfig,
    bad: Callable[[int, str], None] | None,
    channels: int | None,
) -> ParsedSequences:
    """A whole column as one numeric array (N, L) or (N, L, C): checked without a row loop."""
    values = block.astype(np.float32)
    if values.ndim == 2:
        values = values[:, :, None]
    n, length, c = values.shape
    problem = None
    if length == 0 or c == 0:
        problem = _BadRow("an empty sequence; every row needs at least one step")
    elif channels is not None and c != channels:
        found = f"{c} channel{'s' if c != 1 else ''} per step"
        problem = _BadRow(f"{found}, but the training data has {channels}", CHANNEL_FIX)
    elif cfg.length is not None and length != cfg.length:
        problem = _ragged(length, cfg.length)
    if problem is not None:  # every row has it: report them all, or raise for the first
        for i in range(n):
            _report(problem, i, column=column, where=where, cfg=cfg, bad=bad)
        return _stack([None] * n, cfg, channels)
    keep = np.isfinite(values).all(axis=(1, 2))  # (N,)
    for i in np.flatnonzero(~keep):  # only the bad rows go through the row-by-row path
        try:
            _row_array(block[i])
        except _BadRow as exc:
            _report(exc, int(i), column=column, where=where, cfg=cfg, bad=bad)
    limit = cfg.length if cfg.length is not None else cfg.max_length
    values = np.ascontiguousarray(values[:, :limit])
    values[~keep] = 0.0  # a bad row (bad= mode) is all padding, length 0
    lengths = np.where(keep, min(length, limit), 0).astype(np.int64)
    truncated = int(keep.sum()) if length > limit else 0
    return ParsedSequences(values, lengths, truncated, c)
