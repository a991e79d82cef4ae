"""Tab-separated text: one record per line, no quoting; `.txt` files with a given delimiter."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeml.data.sources import read_table
from forgeml.errors import DataError

# As in the IMDb file of ../shared/data/sentiment: sentences opening with an unbalanced quote.
LINES = [
    "reviews\tsentiment",
    '" The structure of this film is tight.  \t1',
    "A slow, aimless movie.\t0",
    "\"You'll love it!  \t1",
    'But "Storm Trooper" is not even bad enough.\t0',
]


@pytest.mark.parametrize("name", ["reviews.tsv", "reviews.txt"])
def test_a_quote_in_tab_separated_text_is_text(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    table = read_table(str(path), delimiter="\t" if name.endswith(".txt") else None)
    assert table.num_rows == 4  # no line swallowed by a quoted field
    assert table.columns["reviews"][0] == '" The structure of this film is tight.  '
    assert table.columns["reviews"][3] == 'But "Storm Trooper" is not even bad enough.'
    assert table.columns["sentiment"].tolist() == ["1", "0", "1", "0"]
    assert table.row_ref(2) == f"{path}, line 4"


def test_a_txt_file_needs_a_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'.*needs data\.delimiter"):
        read_table(str(path))


def test_csv_keeps_its_quoting(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('reviews,sentiment\n"a, b ""c""\nd",1\n', encoding="utf-8")
    table = read_table(str(path))
    assert table.columns["reviews"].tolist() == ['a, b "c"\nd']
