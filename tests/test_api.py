"""The Python API: `forgeml.train` -> `Run`, `forgeml.load(...).predict`, `forgeml.evaluate`,
with the metrics checked against scikit-learn computed from the predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch import nn

import forgeml
from forgeml.cli import main as cli_main
from forgeml.data.splits import read_splits as load_splits
from forgeml.data.table import Table
from forgeml.data.tensors import TensorData
from forgeml.errors import ConfigError, DataError


def blobs_config(out: Path, name: str = "blobs", **train: Any) -> dict[str, Any]:
    return {
        "seed": 1,
        "data": {
            "source": "builtin:blobs?n=300&features=4&classes=3&std=2.5",
            "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        },
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"batch_size": 32, "optimizer": {"lr": 0.01}, **train},
        "output": {"dir": str(out), "name": name},
    }


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory: pytest.TempPathFactory) -> forgeml.Run:
    out = tmp_path_factory.mktemp("api")
    return forgeml.train(
        blobs_config(out), ["train.max_epochs=8", "train.precision=fp32"], quiet=True
    )


def split_table(run: forgeml.Run, split: str) -> Table:
    """The rows of a split exactly as training saw them (same seed, same split)."""
    return load_splits(run.config.data, run.config.seed)[split]


def to_records(table: Table, *, drop: str | None = None) -> list[dict[str, Any]]:
    names = [n for n in table.column_names if n != drop]

    def plain(value: Any) -> Any:
        return value.item() if isinstance(value, np.generic) else value

    return [{n: plain(table.columns[n][i]) for n in names} for i in range(table.num_rows)]


# --------------------------------------------------------------------------- train -> Run


def test_train_returns_a_run_matching_its_directory(blobs_run: forgeml.Run) -> None:
    run = blobs_run
    assert run.config.train.max_epochs == 8  # the override was applied
    assert run.stop_reason == "max_epochs"
    saved = json.loads((run.dir / "metrics.json").read_text())
    assert set(run.metrics) == {"train", "val", "test"}
    for split, values in run.metrics.items():
        assert saved[split] == values
    assert saved["stop_reason"] == run.stop_reason
    assert saved["epochs"] == 8 and saved["precision"] == "fp32"
    lines = (run.dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(run.history))
    train_losses = [r["metrics"]["loss"] for r in run.history if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert run.metrics["test"]["accuracy"] >= 0.85
    manifest = json.loads((run.dir / "forgeml.json").read_text())
    assert manifest["config_sha256"] == run.config.digest()
    assert manifest["data_summary"] == {"train": 180, "val": 60, "test": 60}


def test_predictions_are_probabilities(blobs_run: forgeml.Run) -> None:
    predictor = forgeml.load(blobs_run.dir)
    rows = predictor.predict(to_records(split_table(blobs_run, "test"), drop="label"))
    assert len(rows) == 60
    for row in rows:
        probabilities = row["probabilities"]
        assert list(probabilities) == ["0", "1", "2"]
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert str(row["prediction"]) == max(probabilities, key=probabilities.get)
        assert isinstance(row["prediction"], int)  # labels come back as the type they were


def test_test_metrics_agree_with_scikit_learn(blobs_run: forgeml.Run) -> None:
    table = split_table(blobs_run, "test")
    truth = table.columns["label"].astype(int)
    rows = forgeml.load(blobs_run.dir).predict(table)
    predicted = np.array([row["prediction"] for row in rows])
    metrics = blobs_run.metrics["test"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-9)
    assert metrics["f1_macro"] == pytest.approx(
        f1_score(truth, predicted, average="macro"), abs=1e-9
    )
    assert metrics["precision_macro"] == pytest.approx(
        precision_score(truth, predicted, average="macro", zero_division=0), abs=1e-9
    )
    assert metrics["recall_macro"] == pytest.approx(
        recall_score(truth, predicted, average="macro"), abs=1e-9
    )
    assert metrics["f1_weighted"] == pytest.approx(
        f1_score(truth, predicted, average="weighted"), abs=1e-9
    )
    assert metrics["confusion_matrix"] == confusion_matrix(truth, predicted).tolist()
    # The loss is the mean cross-entropy of the model's outputs on that split.
    probabilities = np.array([[row["probabilities"][c] for c in "012"] for row in rows])
    log_loss = -np.mean(np.log(probabilities[np.arange(len(truth)), truth]))
    assert metrics["loss"] == pytest.approx(log_loss, rel=1e-4)


def test_load_predict_equals_the_cli(
    blobs_run: forgeml.Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = to_records(split_table(blobs_run, "test"), drop="label")
    source = tmp_path / "records.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "predictions.jsonl"
    assert cli_main(["predict", str(blobs_run.dir), str(source), "--output", str(output)]) == 0
    from_cli = [json.loads(line) for line in output.read_text().splitlines()]
    assert from_cli == forgeml.load(blobs_run.dir).predict(records)
    assert from_cli == forgeml.predict(blobs_run.dir, records)
    assert from_cli == blobs_run.load().predict(records)

    assert cli_main(["predict", str(blobs_run.dir), str(source)]) == 0  # JSONL on stdout
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == from_cli


def test_evaluate_reproduces_the_test_metrics(blobs_run: forgeml.Run) -> None:
    metrics = forgeml.evaluate(blobs_run.dir)  # no data: the run's own test split
    expected = blobs_run.metrics["test"]
    assert metrics["accuracy"] == expected["accuracy"]
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-6)

    labelled = to_records(split_table(blobs_run, "val"))
    on_val = forgeml.evaluate(blobs_run.dir, labelled)
    assert on_val["accuracy"] == blobs_run.metrics["val"]["accuracy"]
    with pytest.raises(DataError, match="target column 'label' is missing"):
        forgeml.evaluate(blobs_run.dir, to_records(split_table(blobs_run, "val"), drop="label"))


def test_a_finished_run_is_not_replaced_without_overwrite(blobs_run: forgeml.Run) -> None:
    before = (blobs_run.dir / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="output.overwrite=true"):
        forgeml.train(blobs_config(blobs_run.dir.parent), ["train.max_epochs=1"], quiet=True)
    assert (blobs_run.dir / "model.safetensors").read_bytes() == before
    assert forgeml.load(blobs_run.dir).predict([{"x0": 0, "x1": 0, "x2": 0, "x3": 0}])


def test_config_mistakes_raise_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'train.max_epochs'"):
        forgeml.train(blobs_config(tmp_path), ["train.max_epoch=3"], quiet=True)
    assert not (tmp_path / "blobs").exists()


# --------------------------------------------------------------------------- binary and weights


def test_binary_run_agrees_with_scikit_learn(tmp_path: Path) -> None:
    run = forgeml.train(
        {
            "data": {"source": "builtin:tabular?n=600&seed=3"},
            "model": {"name": "mlp", "hidden_sizes": [16]},
            "train": {"max_epochs": 10, "batch_size": 32, "optimizer": {"lr": 0.01}},
            "output": {"dir": str(tmp_path), "name": "tabular"},
        },
        quiet=True,
    )
    table = split_table(run, "test")
    truth = np.array([v == "yes" for v in table.columns["label"]])
    rows = forgeml.load(run.dir).predict(to_records(table, drop="label"))
    assert all(set(r["probabilities"]) == {"no", "yes"} for r in rows)
    p_yes = np.array([r["probabilities"]["yes"] for r in rows])
    predicted = np.array([r["prediction"] == "yes" for r in rows])
    metrics = run.metrics["test"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-9)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, p_yes), abs=1e-6)
    assert metrics["f1_macro"] == pytest.approx(
        f1_score(truth, predicted, average="macro"), abs=1e-9
    )
    assert metrics["roc_auc"] >= 0.75  # the label depends on all three columns, with noise
    assert metrics["accuracy"] > max(truth.mean(), 1 - truth.mean())  # beats the majority class


def imbalanced_csv(path: Path) -> Path:
    """Three overlapping classes of 120, 50 and 30 rows: weighting them changes the loss."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], [120, 50, 30])
    x = (
        rng.normal(size=(200, 2))
        + np.array([[0, 0], [1.5, 0], [0, 1.5]])[np.searchsorted(["a", "b", "c"], labels)]
    )
    lines = ["x0,x1,label"] + [f"{u:.4f},{v:.4f},{c}" for (u, v), c in zip(x, labels, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("weights", [{"a": 0.5, "c": 3.0}, "auto"])
def test_class_weights_reach_the_loss(tmp_path: Path, weights: Any) -> None:
    cfg = blobs_config(tmp_path, name="weighted", max_epochs=2, eval_batch_size=1000)
    cfg["data"]["source"] = str(imbalanced_csv(tmp_path / "imbalanced.csv"))
    cfg["train"]["loss"] = {"class_weights": weights}
    cfg["train"]["precision"] = "fp32"
    run = forgeml.train(cfg, quiet=True)
    predictor = forgeml.load(run.dir)
    features, target = predictor.preprocessor.transform(split_table(run, "train"))
    logits = predictor.raw_outputs(TensorData(features, target))  # (N, 3)
    if weights == "auto":  # inverse class frequency on the train split: n / (C * count)
        counts = torch.bincount(target, minlength=3).double()
        assert counts.tolist() == [72.0, 30.0, 18.0]
        w = (len(target) / (3 * counts)).float()
    else:
        w = torch.tensor([0.5, 1.0, 3.0])  # classes a, b, c; b unnamed: 1
    weighted = F.cross_entropy(logits, target, weight=w).item()
    assert run.metrics["train"]["loss"] == pytest.approx(weighted, rel=1e-5)
    assert F.cross_entropy(logits, target).item() < weighted - 0.01


def test_class_weights_for_unknown_classes_are_an_error(tmp_path: Path) -> None:
    cfg = blobs_config(tmp_path, name="bad-weights", max_epochs=1)
    cfg["train"]["loss"] = {"class_weights": {"7": 2.0}}
    with pytest.raises(DataError, match=r"names classes \['7'\] that are not in the target"):
        forgeml.train(cfg, quiet=True)


# --------------------------------------------------------------------------- extension points


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B, 3)
        return self.net(x)


def test_train_with_a_user_module_and_callbacks(tmp_path: Path) -> None:
    class Events:
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_eval_end(self, row: dict) -> None:
            self.names.append(f"eval:{row['split']}")

        def on_epoch_end(self, row: dict) -> None:
            self.names.append("epoch")

        def on_train_end(self, result: Any) -> None:
            self.names.append(f"end:{result.stop_reason}")

    events = Events()
    run = forgeml.train(
        blobs_config(tmp_path, name="custom", max_epochs=6),
        module=TwoLayer(),
        callbacks=[events],
        quiet=True,
    )
    assert events.names == ["eval:train", "eval:val", "epoch"] * 6 + ["end:max_epochs"]
    assert run.metrics["test"]["accuracy"] >= 0.85
    assert json.loads((run.dir / "forgeml.json").read_text())["model"] == "custom"
    records = to_records(split_table(run, "test"), drop="label")
    predictor = forgeml.load(run.dir, module=TwoLayer())
    predicted = [r["prediction"] for r in predictor.predict(records)]
    truth = split_table(run, "test").columns["label"].astype(int)
    assert accuracy_score(truth, predicted) == pytest.approx(run.metrics["test"]["accuracy"])


def test_validate_reads_and_encodes_without_writing(tmp_path: Path) -> None:
    """`forgeml.validate`: the checks `forgeml validate` runs, from Python; nothing is written."""
    out = tmp_path / "runs"
    summary = forgeml.validate(blobs_config(out))
    assert summary.startswith("task multiclass; rows train 180, val 60, test 60; model mlp with")
    parameters = int(summary.rsplit(" with ", 1)[1].split()[0].replace(",", ""))
    assert parameters == 4 * 16 + 16 + 16 * 3 + 3  # Linear(4, 16) + Linear(16, 3)
    assert not out.exists()
    with pytest.raises(ConfigError, match="train.max_epoch'; did you mean 'train.max_epochs'"):
        forgeml.validate(blobs_config(out), ["train.max_epoch=3"])
