"""Preprocessing speed: forgeml's table transform and word encoding against plain equivalents.

Two workloads that used to be timed by tests (with wall-clock bars of 1 s and 2 s):

- transform (tests/data/test_preprocess.py): `Preprocessor.transform` of 100,000 rows as read
  from a CSV file (a category column of 4 words, a numeric column of number strings, a float
  column, a 0/1 label) into the model's tensors. Reference: the same tensors with bare numpy:
  `astype(float64)` and standardisation for the numbers, `np.unique(return_inverse=True)` and a
  vocabulary lookup of the uniques for the category and the label.
- encode (tests/data/test_text.py): `TextEncoder.encode` of 20,000 texts of 8 words from a
  2,000-word vocabulary (word tokenizer, fitted on 2,000 of them) into padded ids. References:
  plain Python (lowercase, a regex for words and punctuation, dict lookups, one numpy fill) and
  Hugging Face `tokenizers` (a WordLevel model with the same vocabulary, `encode_batch`, Rust).

Each reference must give exactly forgeml's output (checked), so they do the same work. Each
repeat times forgeml and the reference, alternating which goes first; medians over repeats and
the median of the per-repeat ratios forgeml / reference.

    .venv/bin/python bench/data_transform.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np
import torch
from machine import describe, summary, time_pairs
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from forgeml.config import DataConfig
from forgeml.data.preprocess import Preprocessor
from forgeml.data.table import Table
from forgeml.data.text import TextConfig, TextEncoder

THREADS = 1


# --------------------------------------------------------------------------- transform


def csv_table(n: int) -> Table:
    """The test's table: as read from a CSV file, every cell an object, labels as ints."""
    rng = np.random.default_rng(0)

    def obj(values) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out

    columns = {
        "c": obj(rng.choice(np.array(["red", "green", "blue", "cyan"], dtype=object), n)),
        "s": obj(rng.random(n).astype(str)),
        "x": rng.random(n),
        "label": np.arange(n) % 2,
    }
    return Table(columns, source="data.csv", row_label="line", row_numbers=np.arange(2, n + 2))


def plain_transform(table: Table, pre: Preprocessor) -> dict[str, np.ndarray]:
    """What `pre.transform(table)` computes, with bare numpy and the fitted statistics."""
    f = {spec.name: spec for spec in pre.features}
    block = np.empty((table.num_rows, 2), dtype=np.float32)
    for j, name in enumerate(("s", "x")):
        block[:, j] = (table.columns[name].astype(np.float64) - f[name].mean) / f[name].std
    uniques, inverse = np.unique(table.columns["c"].astype(str), return_inverse=True)
    index = {v: i + 1 for i, v in enumerate(f["c"].vocab or [])}
    codes = np.array([index.get(u, 0) for u in uniques], dtype=np.int64)[inverse]
    classes, labels = np.unique(table.columns["label"], return_inverse=True)
    assert [str(c) for c in classes] == [str(c) for c in pre.target.classes or []]
    return {"numeric": block, "category": codes[:, None], "target": labels.astype(np.int64)}


def bench_transform(repeats: int) -> dict[str, float]:
    table = csv_table(100_000)
    pre = Preprocessor.fit(table, DataConfig(source="data.csv"), log=lambda _m: None)
    inputs, target = pre.transform(table)
    plain = plain_transform(table, pre)
    np.testing.assert_array_equal(inputs["numeric"].numpy(), plain["numeric"])
    np.testing.assert_array_equal(inputs["category"].numpy(), plain["category"])
    np.testing.assert_array_equal(target.numpy(), plain["target"])
    return summary(
        *time_pairs(lambda: pre.transform(table), lambda: plain_transform(table, pre), repeats)
    )


# --------------------------------------------------------------------------- encode


def texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(2000)]
    return [" ".join(words[j] for j in row) + "." for row in rng.integers(0, 2000, (n, 8))]


WORD = re.compile(r"\w+|[^\w\s]")


def plain_encode(batch: list[str], index: dict[str, int], max_length: int) -> np.ndarray:
    rows = [[index.get(t, 1) for t in WORD.findall(text.lower())][:max_length] for text in batch]
    ids = np.zeros((len(rows), max(1, max(map(len, rows), default=0))), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids


def rust_tokenizer(vocab: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ and runs of other non-space
    return tok


def rust_encode(tok: Tokenizer, batch: list[str]) -> np.ndarray:
    rows = [e.ids for e in tok.encode_batch_fast(batch, add_special_tokens=False)]
    ids = np.zeros((len(rows), max(1, max(map(len, rows), default=0))), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids


def bench_encode(repeats: int) -> dict[str, dict[str, float]]:
    batch = texts(20_000)
    enc = TextEncoder.fit(batch[:2000], TextConfig(), column="text")
    vocab = enc.vocab()
    index = {t: i for i, t in enumerate(vocab) if i >= 2}
    tok = rust_tokenizer(vocab)
    ours = enc.encode(batch).ids
    np.testing.assert_array_equal(ours, plain_encode(batch, index, enc.cfg.max_length))
    np.testing.assert_array_equal(ours, rust_encode(tok, batch))
    assert ours.shape == (20_000, 9)
    return {
        "plain Python": summary(
            *time_pairs(
                lambda: enc.encode(batch),
                lambda: plain_encode(batch, index, enc.cfg.max_length),
                repeats,
            )
        ),
        "`tokenizers` WordLevel (Rust)": summary(
            *time_pairs(lambda: enc.encode(batch), lambda: rust_encode(tok, batch), repeats)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.setdefault("RAYON_NUM_THREADS", str(THREADS))  # tokenizers' batch parallelism
    load = os.getloadavg()[0]
    transform = bench_transform(args.repeats)
    encode = bench_encode(args.repeats)
    print(describe(THREADS, load))
    print(f"{args.repeats} repeats; outputs of forgeml and each reference checked equal\n")
    print(
        "| workload | reference | forgeml median ms | reference median ms | forgeml / reference (median, range) |"
    )
    print("|---|---|---|---|---|")
    rows = [("transform, 100,000 rows", "bare numpy", transform)]
    rows += [("encode, 20,000 texts", name, s) for name, s in encode.items()]
    for workload, name, s in rows:
        print(
            f"| {workload} | {name} | {1e3 * s['ours']:.1f} | {1e3 * s['theirs']:.1f} "
            f"| **{s['ratio']:.2f}** ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) |"
        )


if __name__ == "__main__":
    main()
