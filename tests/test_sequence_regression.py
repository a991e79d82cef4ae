"""Regression on a text column and on a sequence column, end to end: `forgeml.train(config)`,
then `forgeml.load(run).predict(records)` on held-out generated rows, scored with scikit-learn's
`r2_score`; the run's own test r2 (metrics.json) is checked against scikit-learn's too.

The targets only follow from reading the whole input: a review's score is the sum of the ratings
of the two rated words somewhere in it; a signal's target is its amplitude, whatever its
frequency, phase and length.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import r2_score

import forgeml
from forgeml.data.splits import read_splits as load_splits

RATINGS = {
    "awful": -2.0,
    "dreadful": -2.0,
    "bad": -1.0,
    "dull": -1.0,
    "fine": 0.0,
    "okay": 0.0,
    "good": 1.0,
    "nice": 1.0,
    "great": 2.0,
    "superb": 2.0,
}
FILLER = "the movie was really quite a film plot acting and story it this with very cast".split()


def rated_reviews(n: int, seed: int) -> list[dict[str, Any]]:
    """3..10 neutral words with two rated words put anywhere; `score` (-4..4, integers, so
    declared numeric) is the sum of their ratings."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
        rated = rng.choices(list(RATINGS), k=2)
        for word in rated:
            words.insert(rng.randrange(len(words) + 1), word)
        rows.append({"review": " ".join(words), "score": sum(RATINGS[w] for w in rated)})
    return rows


def sines(n: int, seed: int) -> list[dict[str, Any]]:
    """Noisy sines of 24..48 steps, 1.5..4 periods, random phase; `amplitude` in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        steps = int(rng.integers(24, 49))
        amplitude = float(rng.uniform(0.5, 2.0))
        phase = rng.uniform(0, 1) + np.arange(steps) * rng.uniform(1.5, 4.0) / steps
        signal = amplitude * np.sin(2 * np.pi * phase) + rng.normal(0, 0.05, steps)
        rows.append({"signal": [round(float(v), 5) for v in signal], "amplitude": amplitude})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train(tmp: Path, rows: list[dict[str, Any]], data: dict[str, Any], model: dict) -> Any:
    config = {
        "data": {"source": str(write_jsonl(tmp / "train.jsonl", rows)), **data},
        "model": model,
        "train": {
            "max_epochs": 12,
            "batch_size": 32,
            "precision": "fp32",
            "optimizer": {"lr": 0.01},
        },
        "output": {"dir": str(tmp / "runs"), "name": "run"},
    }
    return forgeml.train(config, quiet=True)


def check_regression(run: Any, unseen: list[dict[str, Any]], target: str, bar: float) -> None:
    assert run.load().task == "regression"
    # The run's test r2 is scikit-learn's on the predictions for its test split.
    test = load_splits(run.config.data, run.config.seed)["test"]
    predictor = forgeml.load(run.dir)
    predicted = [r["prediction"] for r in predictor.predict(test)]
    truth = test.columns[target].astype(float)
    assert run.metrics["test"]["r2"] == pytest.approx(r2_score(truth, predicted), abs=1e-4)
    # Held-out rows given as raw records, in the target's own units.
    records = [{k: v for k, v in r.items() if k != target} for r in unseen]
    predicted = [r["prediction"] for r in predictor.predict(records)]
    assert all(isinstance(p, float) for p in predicted)
    assert r2_score([r[target] for r in unseen], predicted) >= bar


def test_regression_on_a_text_column(tmp_path: Path) -> None:
    data = {"target": "score", "columns": {"score": {"type": "numeric"}}}
    model = {"name": "rnn", "cell": "gru", "hidden_size": 32, "embedding_dim": 16}
    run = train(tmp_path, rated_reviews(500, seed=0), data, model)
    check_regression(run, rated_reviews(200, seed=1), "score", bar=0.9)


def test_regression_on_a_sequence_column(tmp_path: Path) -> None:
    model = {"name": "cnn", "channels": [16, 32], "kernel_size": 5, "head_hidden": []}
    run = train(tmp_path, sines(400, seed=0), {"target": "amplitude"}, model)
    check_regression(run, sines(200, seed=1), "amplitude", bar=0.9)
