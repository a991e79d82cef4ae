"""Text and numeric-sequence columns in the preprocessor: fitted on TRAIN, encoded for any table.

A text column becomes token ids "text:<col>" (N, L) int64 and "mask:<col>" (N, L) bool; a
sequence column "seq:<col>" (N, L, C) float32 and its mask (see schema.py). L is the longest row
of the table (at most the column's max_length); the loader trims each batch further to its own
longest row. The tokenizer/vocabulary (text.py) and the channel statistics (sequence.py) are
fitted on the training split and saved in the FeatureSpec as JSON.

A row that ends up with no step (an empty or whitespace-only text, a text of stop words only, a
bad sequence) is a bad row: a one-line error naming it, or under `data.on_bad_rows: skip` a
counted skip.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from forgeml.data.bad_rows import BadRows, quote
from forgeml.data.config import DataConfig
from forgeml.data.sequence import (
    ParsedSequences,
    SequenceConfig,
    SequenceScaler,
    parse_sequences,
)
from forgeml.data.split import parse_floats
from forgeml.data.table import Table
from forgeml.data.text import TextConfig, TextEncoder
from forgeml.errors import ConfigError, DataError
from forgeml.schema import FeatureSpec

EMPTY_TEXT = "empty text"
BAD_SEQUENCE = "bad sequence"


@dataclass
class Encoded:
    """One text/sequence column of a table as tensors, and what happened on the way."""

    values: torch.Tensor  # (N, L) int64 ids or (N, L, C) float32 values
    mask: torch.Tensor  # (N, L) bool, True at real steps
    bad: np.ndarray  # (N,) bool: rows without a usable step (skip mode drops them)
    truncated: int  # rows cut to max_length


def resolve_runs(table: Table, cfg: DataConfig) -> dict[str, list[str]]:
    """`data.sequences` with each glob pattern resolved to the column names it matches, in
    column order (fitted on TRAIN, saved, reused for every later table).

    A column declared a sequence (`data.columns.NAME.type: sequence`) that the table does not
    have, but has as NAME_0, NAME_1, ... NAME_{L-1} (how an (N, L) .npz array NAME is read), is
    the run of those columns too."""
    runs = {name: split for name in cfg.columns if (split := _split_columns(table, cfg, name))}
    for name, pattern in cfg.sequences.items():
        if isinstance(pattern, str):
            names = [c for c in table.column_names if fnmatch.fnmatchcase(c, pattern)]
        else:
            names = list(pattern)
        if not names:
            raise DataError(
                f"{table.source}: data.sequences.{name} = {pattern!r} matches no column; columns "
                f"are: {', '.join(table.column_names[:20])}; fix the pattern"
            )
        if cfg.target in names:
            raise ConfigError(
                f"data.sequences.{name} = {pattern!r} includes the target '{cfg.target}'; "
                "narrow the pattern"
            )
        runs[name] = names
    return runs


def _split_columns(table: Table, cfg: DataConfig, name: str) -> list[str]:
    """NAME_0 .. NAME_{L-1}, all numbered from 0 without a gap, for a declared sequence NAME that
    is not a column of `table`; else []."""
    if cfg.columns[name].type != "sequence" or name in table.columns or name in cfg.sequences:
        return []
    numbers = [c.removeprefix(f"{name}_") for c in table.column_names if c.startswith(f"{name}_")]
    steps = sorted(int(n) for n in numbers if n.isascii() and n.isdigit() and n == str(int(n)))
    return [f"{name}_{j}" for j in steps] if steps == list(range(len(steps))) else []


def combine_runs(table: Table, runs: dict[str, list[str]]) -> Table:
    """Each run of numeric columns becomes one column NAME holding a (L,) float32 array per row;
    the run's columns are removed. A table that holds NAME itself and none of the run's
    columns (records of raw sequences, at predict time) is used as it is."""
    if not runs:
        return table
    columns = dict(table.columns)
    for name, names in runs.items():
        if name in table.columns and not any(c in table.columns for c in names):
            continue
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise DataError(
                f"{table.source}: column '{missing[0]}' is missing; sequence '{name}' is made "
                f"of the columns {names[0]}..{names[-1]} ({len(names)}); add it to the input"
            )
        block = np.empty((table.num_rows, len(names)), dtype=np.float32)  # (N, L)
        for j, column in enumerate(names):
            floats, bad = parse_floats(table.columns[column])
            if bad is None and np.isnan(floats).any():
                bad = int(np.argmax(np.isnan(floats)))
            if bad is not None:
                raise DataError(
                    f"{table.row_ref(bad)}, column '{column}': {table.columns[column][bad]!r} is "
                    f"not a number; sequence '{name}' needs a number in every one of its "
                    "columns; fix the value or drop the row"
                )
            block[:, j] = floats
            del columns[column]
        cells = np.empty(table.num_rows, dtype=object)
        cells[:] = list(block)  # one (L,) row per cell
        columns[name] = cells
    return Table(columns, table.source, table.row_label, table.row_numbers)


# --------------------------------------------------------------------------------- text


def text_config(cfg: DataConfig, name: str) -> TextConfig:
    column = cfg.columns.get(name)
    return column.text if column is not None and column.text is not None else TextConfig()


def fit_text(table: Table, spec: FeatureSpec, options: TextConfig) -> TextEncoder:
    """Clean, tokenise and build the vocabulary from the TRAIN texts; fills `spec`."""
    if spec.fill in ("mean", "median"):
        raise ConfigError(
            f"data.columns.{spec.name}.fill={spec.fill}: column '{spec.name}' is text; use "
            "fill=constant with a fill_value text, or fill=error"
        )
    if spec.fill == "constant":
        spec.fill_value = str(spec.fill_value if spec.fill_value is not None else "")
    texts = _texts(table, spec)
    encoder = TextEncoder.fit(texts, options, column=spec.name)
    spec.text = encoder.state()
    spec.max_length = options.max_length
    return encoder


def encode_text(table: Table, spec: FeatureSpec, encoder: TextEncoder) -> Encoded:
    encoded = encoder.encode(_texts(table, spec))
    ids = torch.from_numpy(encoded.ids)  # (N, L)
    lengths = torch.from_numpy(encoded.lengths)
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    return Encoded(ids, mask, encoded.lengths == 0, encoded.truncated)


def _texts(table: Table, spec: FeatureSpec) -> list[str]:
    values = table.columns[spec.name]
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            out.append(spec.fill_value if spec.fill == "constant" else "")
        else:
            out.append(v if isinstance(v, str) else str(v))
    return out


def empty_text_detail(table: Table, spec: FeatureSpec, row: int) -> str:
    """What is wrong with a text that has no token: 'empty text' (missing, empty or blank) or
    'no token left after cleaning and tokenising ...' (e.g. stop words only)."""
    value = table.columns[spec.name][row]
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        return "empty text"
    return f"no token left after cleaning and tokenising {quote(value)}"


def empty_text_message(table: Table, spec: FeatureSpec, row: int) -> str:
    return (
        f"{table.row_ref(row)}, column '{spec.name}': {empty_text_detail(table, spec, row)}; "
        "expected at least one token; fix or drop the row"
    )


# --------------------------------------------------------------------------------- sequence


def sequence_config(cfg: DataConfig, name: str) -> SequenceConfig:
    column = cfg.columns.get(name)
    if column is not None and column.sequence is not None:
        return column.sequence
    return SequenceConfig()


def fit_sequence(table: Table, spec: FeatureSpec, options: SequenceConfig) -> None:
    """Channels and per-channel statistics of the TRAIN sequences; fills `spec`."""
    if spec.fill != "error":
        raise ConfigError(
            f"data.columns.{spec.name}.fill={spec.fill}: column '{spec.name}' holds sequences, "
            "which cannot be filled in; remove the fill rule"
        )
    parsed = parse_sequences(
        table.columns[spec.name], column=spec.name, where=table.row_ref, cfg=options
    )
    scaler = SequenceScaler.fit(parsed, column=spec.name) if options.normalize else None
    spec.max_length = options.length or options.max_length
    spec.sequence = {
        "config": options.model_dump(),
        "channels": parsed.channels,
        "scaler": scaler.state() if scaler is not None else None,
    }


def bad_sequences(table: Table, spec: FeatureSpec, options: SequenceConfig) -> dict[int, str]:
    """Skip mode, TRAIN split: the rows of a sequence column that cannot be used (missing, not
    an array of numbers, ragged where a length is declared, another channel count than the
    first good row), row -> detail."""
    found: dict[int, str] = {}
    parse_sequences(
        table.columns[spec.name],
        column=spec.name,
        where=table.row_ref,
        cfg=options,
        bad=found.__setitem__,
    )
    return found


def encode_sequence(
    table: Table, spec: FeatureSpec, bad: Callable[[int, str], None] | None
) -> Encoded:
    state = spec.sequence or {}
    options = SequenceConfig(**state["config"])
    problems = np.zeros(table.num_rows, dtype=bool)

    def collect(i: int, detail: str) -> None:
        problems[i] = True
        if bad is not None:
            bad(i, detail)

    parsed: ParsedSequences = parse_sequences(
        table.columns[spec.name],
        column=spec.name,
        where=table.row_ref,
        cfg=options,
        bad=collect if bad is not None else None,
        channels=state["channels"],
    )
    values = parsed.values
    if state.get("scaler") is not None:
        values = SequenceScaler.from_state(state["scaler"]).transform(values, parsed.lengths)
    lengths = torch.from_numpy(parsed.lengths)
    width = values.shape[1]
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return Encoded(torch.from_numpy(np.ascontiguousarray(values)), mask, problems, parsed.truncated)


def record_bad(
    bad_rows: BadRows, table: Table, spec: FeatureSpec, rows: np.ndarray, reason: str
) -> None:
    for i in rows:
        detail = empty_text_detail(table, spec, int(i)) if reason == EMPTY_TEXT else reason
        bad_rows.record(table.row_ref(int(i)), spec.name, reason, detail)
