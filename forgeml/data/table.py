"""`Table`: the columnar form every data source is read into.

Each column is a 1-D numpy array with one entry per row:
- numbers read from typed sources (JSONL numbers, Parquet, .npz, built-ins) are numeric arrays;
- text fields (CSV/TSV cells, JSONL strings) are object arrays of `str`;
- a missing value is `None` in an object array or NaN in a float array;
- an image is either a path (`str`) to a PNG/JPEG file or an already-decoded `np.ndarray` of
  uint8 pixels shaped (H, W) or (H, W, C);
- a numeric sequence is a JSON-array string, a list, or an `np.ndarray` of numbers shaped (L,)
  or — floats only, so it cannot be taken for an image — (L, C) (.npz arrays, see npz.py).

Values are not parsed here: preprocessing parses and checks them, and uses `row_ref` to name the
file and line of a bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Table:
    columns: dict[str, np.ndarray]
    source: str  # file path or "builtin:name", used in error messages
    row_label: str = "row"  # "line" for line-oriented text files (CSV/TSV/JSONL)
    # Human-facing number of each row (e.g. the file line). None means 1-based row index.
    row_numbers: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of {self.source} have different lengths: {lengths}")

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def row_ref(self, i: int) -> str:
        """'data.csv, line 17' for row index i (0-based) of this table."""
        number = int(self.row_numbers[i]) if self.row_numbers is not None else i + 1
        return f"{self.source}, {self.row_label} {number}"

    def take(self, indices: np.ndarray) -> Table:
        """Rows at `indices`, keeping their original row numbers for error messages."""
        indices = np.asarray(indices, dtype=np.int64)
        numbers = (
            self.row_numbers if self.row_numbers is not None else np.arange(1, self.num_rows + 1)
        )
        return Table(
            columns={k: v[indices] for k, v in self.columns.items()},
            source=self.source,
            row_label=self.row_label,
            row_numbers=numbers[indices],
        )
