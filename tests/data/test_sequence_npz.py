"""Sequences in NumPy `.npz` files: which arrays read as sequence columns (forgeml/data/npz.py),
a GRU and a 1-D CNN trained on (N, L, C) float arrays and predicting from .npz files, declared
types, the KEY_lengths companion, and one-line errors for bad shapes and dtypes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import forgeml
from forgeml.config import DataConfig
from forgeml.data.builtins import read_builtin
from forgeml.data.columns import infer_column_type
from forgeml.data.preprocess import Preprocessor
from forgeml.data.sources import read_table
from forgeml.data.table import Table
from forgeml.errors import DataError


def waves(n: int, seed: int, steps: int = 64) -> dict[str, np.ndarray]:
    """builtin:waves as arrays: "signal" (n, steps, 2) float32 zero-padded at the end (channel 1
    is 10 x channel 0 + 100, so the channel statistics matter), "signal_lengths" (n,) int64 real
    steps (32..64 of them, at most `steps`) and "label" (n,) str."""
    table = read_builtin(f"builtin:waves?n={n}&seed={seed}")
    signal = np.zeros((n, steps, 2), dtype=np.float32)
    lengths = np.array([min(len(s), steps) for s in table.columns["signal"]], dtype=np.int64)
    for i, s in enumerate(table.columns["signal"]):
        signal[i, : lengths[i], 0] = s[: lengths[i]]
        signal[i, : lengths[i], 1] = 10 * s[: lengths[i]] + 100
    labels = np.array(table.columns["label"].tolist(), dtype=str)
    return {"signal": signal, "signal_lengths": lengths, "label": labels}


def one_line(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def train(tmp: Path, name: str, data: dict[str, Any], model: dict[str, Any]) -> Any:
    config = {
        "data": data,
        "model": model,
        "train": {
            "max_epochs": 6,
            "batch_size": 32,
            "precision": "fp32",
            "optimizer": {"lr": 0.01},
        },
        "output": {"dir": str(tmp / "runs"), "name": name},
    }
    return forgeml.train(config, quiet=True)


def accuracy(rows: list[dict[str, Any]], labels: np.ndarray) -> float:
    return float(np.mean([r["prediction"] == label for r, label in zip(rows, labels, strict=True)]))


@pytest.fixture(scope="module")
def npz_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A GRU on fixed-length (N, 32, 2) float signals, a 1-D CNN on (N, 64, 2) padded signals
    with a signal_lengths array (32..64 real steps), and unlabelled .npz files to predict."""
    tmp = tmp_path_factory.mktemp("npz")
    fixed, padded = waves(300, seed=1, steps=32), waves(300, seed=1)
    np.savez(tmp / "fixed.npz", signal=fixed["signal"], label=fixed["label"])
    np.savez(tmp / "padded.npz", **padded)
    unseen = waves(90, seed=2)
    np.savez(tmp / "new_fixed.npz", signal=unseen["signal"][:, :32])
    np.savez(
        tmp / "new_padded.npz", signal=unseen["signal"], signal_lengths=unseen["signal_lengths"]
    )
    gru = {"name": "rnn", "cell": "gru", "hidden_size": 32, "pooling": "max"}
    cnn = {"name": "cnn", "channels": [16, 32], "kernel_size": 5, "head_hidden": []}
    return {
        "tmp": tmp,
        "unseen": unseen,
        "gru": train(tmp, "gru", {"source": str(tmp / "fixed.npz")}, gru),
        "cnn": train(tmp, "cnn", {"source": str(tmp / "padded.npz")}, cnn),
    }


# --- what an array reads as ----------------------------------------------------------------------


def test_which_arrays_are_sequences(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        seq=rng.normal(size=(4, 5, 2)).astype(np.float32),  # (N, L, C) floats: a sequence
        flat=rng.normal(size=(4, 3)),  # (N, F): F numeric columns
        var=rng.normal(size=(4, 6)),  # (N, L) with var_lengths: a variable-length sequence
        var_lengths=np.array([6, 1, 3, 0]),
        counts=rng.integers(0, 9, size=(4, 5, 2)),  # integers with counts_lengths: a sequence
        counts_lengths=np.array([5, 5, 2, 4], dtype=np.int32),
        gray=rng.integers(0, 256, size=(4, 5, 6), dtype=np.uint8),  # uint8 3-D: images
        rgb=rng.random((4, 5, 6, 3)),  # 4-D floats in [0, 1]: images
        other_lengths=np.arange(4),  # no array 'other': an ordinary column
    )
    table = read_table(str(tmp_path / "data.npz"))
    assert table.column_names == [
        "seq", "flat_0", "flat_1", "flat_2", "var", "counts", "gray", "rgb", "other_lengths"
    ]  # fmt: skip
    seq = table.columns["seq"]
    assert seq.shape == (4,) and seq[2].shape == (5, 2) and seq[2].dtype == np.float32
    assert [len(row) for row in table.columns["var"]] == [6, 1, 3, 0]
    assert [row.shape for row in table.columns["counts"]] == [(5, 2), (5, 2), (2, 2), (4, 2)]
    assert table.columns["counts"][0].dtype == np.float32  # an integer (L, C) row is no image
    kinds = {name: infer_column_type(values) for name, values in table.columns.items()}
    assert kinds == {
        "seq": "sequence",
        "flat_0": "numeric",
        "flat_1": "numeric",
        "flat_2": "numeric",
        "var": "sequence",
        "counts": "sequence",
        "gray": "image",
        "rgb": "image",
        "other_lengths": "numeric",
    }


def fit(table: Any, **data: Any) -> Preprocessor:
    return Preprocessor.fit(table, DataConfig(source="x.npz", **data), log=lambda _: None)


def test_declared_types_are_honoured(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 10)
    np.savez(
        tmp_path / "data.npz",
        signal=rng.normal(size=(20, 7)),  # read as signal_0..signal_6
        steps=rng.integers(0, 256, size=(20, 6, 3), dtype=np.uint8),  # read as images
        gray=rng.random((20, 5, 4)),  # floats in [0, 1]: read as sequences
        label=labels,
    )
    table = read_table(str(tmp_path / "data.npz"))
    columns = {"signal": {"type": "sequence"}, "steps": {"sequence": {"length": 6}}}
    pre = fit(table, columns=columns, exclude=["gray"])
    assert {f.name: f.type for f in pre.features} == {"signal": "sequence", "steps": "sequence"}
    assert pre.runs == {"signal": [f"signal_{j}" for j in range(7)]}
    inputs, _ = pre.transform(table, with_target=False)
    assert inputs["seq:signal"].shape == (20, 7, 1) and inputs["seq:steps"].shape == (20, 6, 3)
    # The (N, L) array joined again; raw sequences under its own name are the same input.
    rows = np.empty(20, dtype=object)
    rows[:] = [list(map(float, r)) for r in np.load(tmp_path / "data.npz")["signal"]]
    raw = Table({"signal": rows, "steps": table.columns["steps"]}, "records")
    again, _ = pre.transform(raw, with_target=False)
    assert torch.equal(again["seq:signal"], inputs["seq:signal"])

    signal = [f"signal_{j}" for j in range(7)]
    image = fit(table, columns={"gray": {"type": "image"}}, exclude=[*signal, "steps"])
    assert [(f.name, f.type) for f in image.features] == [("gray", "image")]
    assert image.spec.image_shape == (1, 5, 4)


# --- training and predicting from .npz ------------------------------------------------------------


@pytest.mark.parametrize("name", ["gru", "cnn"])
def test_train_on_npz_sequences_and_predict_from_npz(npz_runs: dict[str, Any], name: str) -> None:
    run, tmp, unseen = npz_runs[name], npz_runs["tmp"], npz_runs["unseen"]
    (feature,) = run.load().preprocessor.features
    assert (feature.name, feature.type, feature.sequence["channels"]) == ("signal", "sequence", 2)
    assert run.metrics["test"]["accuracy"] >= 0.8  # chance: 1/3
    predictor = forgeml.load(run.dir)
    source = tmp / ("new_fixed.npz" if name == "gru" else "new_padded.npz")
    rows = predictor.predict(source)
    assert accuracy(rows, unseen["label"]) >= 0.85
    # The same signals as records of raw (L, C) lists: the same predictions.
    if name == "gru":
        records = [{"signal": s[:32].tolist()} for s in unseen["signal"]]
    else:
        steps = unseen["signal_lengths"]
        records = [{"signal": s[:n].tolist()} for s, n in zip(unseen["signal"], steps, strict=True)]
    from_records = predictor.predict(records)
    assert [r["prediction"] for r in from_records] == [r["prediction"] for r in rows]
    for a, b in zip(from_records, rows, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_padding_is_not_data_with_a_lengths_array(npz_runs: dict[str, Any]) -> None:
    """The CNN run's channel statistics are those of the real steps only."""
    padded = waves(300, seed=1)
    scaler = npz_runs["cnn"].load().preprocessor.features[0].sequence["scaler"]
    steps = padded["signal_lengths"]
    real = np.concatenate([s[:n] for s, n in zip(padded["signal"], steps, strict=True)])
    assert real[:, 1].mean() == pytest.approx(100, abs=1.0)
    assert padded["signal"][:, :, 1].mean() < 90  # with the padding zeros
    assert scaler["mean"][1] == pytest.approx(100, abs=1.0)  # fitted on the train split
    assert scaler["mean"][1] == pytest.approx(10 * scaler["mean"][0] + 100, rel=1e-4)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "parts"),
    [
        ({"x": np.zeros((2, 3, 4, 5, 6))}, ["bad.npz", "'x'", "(2, 3, 4, 5, 6)", "(N, L, C)"]),
        ({"x": np.zeros((2, 4, 3), dtype=np.int64)}, ["'x'", "int64", "astype(np.float32)", "'x_lengths'"]),
        (
            {"x": np.zeros((2, 4)), "x_lengths": np.array([1.0, 2.0])},
            ["'x_lengths'", "'x'", "float64", "integer", "astype(np.int64)"],
        ),
        (
            {"x": np.zeros((2, 4, 1)), "x_lengths": np.array([4, 5])},
            ["'x_lengths'", "row 2 has 5", "4 steps per row", "0..4"],
        ),
        (
            {"x": np.zeros((2, 4)), "x_lengths": np.zeros((2, 1), dtype=int)},
            ["'x_lengths'", "shape (2, 1)", "one integer per row"],
        ),
    ],
    ids=["5-d", "int-3d", "float-lengths", "too-long", "2-d-lengths"],
)  # fmt: skip
def test_bad_arrays_are_one_line_errors(tmp_path: Path, arrays: dict, parts: list[str]) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as excinfo:
        read_table(str(tmp_path / "bad.npz"))
    one_line(excinfo, "bad.npz", *parts)


def test_bad_sequence_values_name_the_row(tmp_path: Path, npz_runs: dict[str, Any]) -> None:
    signal = np.zeros((3, 8, 2), dtype=np.float32)
    signal[1, 4, 1] = np.nan
    labels = np.array(["a", "b", "a"])
    np.savez(tmp_path / "nan.npz", signal=signal, label=labels)
    with pytest.raises(DataError) as excinfo:
        fit(read_table(str(tmp_path / "nan.npz")))
    one_line(excinfo, "nan.npz, row 2", "column 'signal'", "non-finite", "step 4, channel 1")

    np.savez(
        tmp_path / "empty.npz", signal=signal, signal_lengths=np.array([8, 0, 3]), label=labels
    )
    with pytest.raises(DataError) as excinfo:
        fit(read_table(str(tmp_path / "empty.npz")))
    one_line(excinfo, "empty.npz, row 2", "column 'signal'", "empty sequence")

    np.savez(tmp_path / "three.npz", signal=np.zeros((2, 32, 3), dtype=np.float32))
    with pytest.raises(DataError) as excinfo:
        forgeml.load(npz_runs["gru"].dir).predict(tmp_path / "three.npz")
    one_line(excinfo, "three.npz, row 1", "3 channels per step", "has 2")
