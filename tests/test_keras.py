"""The Keras-like `forgeml.Model`: compile / fit / evaluate / predict / save, then load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from torch import nn

import forgeml
from forgeml.errors import ConfigError, DataError, ForgeError


def records(x: np.ndarray) -> list[dict[str, float]]:
    """Rows of a 2-D array as the records a saved model reads: columns x0..x{F-1}."""
    return [{f"x{j}": float(v) for j, v in enumerate(row)} for row in x]


@pytest.fixture(scope="module")
def classification() -> tuple[np.ndarray, ...]:
    x, y = make_classification(
        n_samples=500,
        n_features=10,
        n_informative=6,
        n_classes=3,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=0,
    )
    return tuple(train_test_split(x, y, test_size=0.2, random_state=0, stratify=y))


@pytest.fixture(scope="module")
def classifier(classification: tuple[np.ndarray, ...]) -> tuple[forgeml.Model, list[dict]]:
    x_train, _, y_train, _ = classification
    model = forgeml.Model("mlp", hidden_sizes=[32]).compile(optimizer="adam", lr=1e-2)
    history = model.fit(x_train, y_train, epochs=15, validation_split=0.2, verbose=False)
    return model, history


def test_fit_on_arrays_reaches_the_bar(
    classifier: tuple[forgeml.Model, list[dict]], classification: tuple[np.ndarray, ...]
) -> None:
    model, history = classifier
    _, x_test, _, y_test = classification
    train_losses = [r["metrics"]["loss"] for r in history if r["split"] == "train"]
    val_rows = [r for r in history if r["split"] == "val"]
    assert len(train_losses) == len(val_rows) == 15  # one train and one val row per epoch
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert val_rows[-1]["metrics"]["accuracy"] >= 0.8
    assert model.result.stop_reason == "max_epochs"
    assert model.config.train.optimizer.name == "adam"
    assert model.config.train.optimizer.lr == 1e-2
    # validation_split=0.2 of 400 training rows, stratified
    assert len(model._prepared.data["val"]) == 80 and len(model._prepared.data["train"]) == 320

    metrics = model.evaluate(x_test, y_test)
    assert metrics["accuracy"] >= 0.85
    probabilities = model.predict(x_test)
    assert probabilities.shape == (100, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert (probabilities >= 0).all()
    # evaluate() and predict() agree with each other, and with scikit-learn on the predictions.
    assert metrics["accuracy"] == pytest.approx(
        accuracy_score(y_test, probabilities.argmax(axis=1)), abs=1e-12
    )


def test_save_then_load_gives_the_same_probabilities(
    classifier: tuple[forgeml.Model, list[dict]],
    classification: tuple[np.ndarray, ...],
    tmp_path: Path,
) -> None:
    model, _ = classifier
    _, x_test, _, y_test = classification
    path = model.save(tmp_path / "keras-mlp")
    for name in ("forgeml.json", "config.yaml", "model.safetensors", "metrics.json", "card.md"):
        assert (path / name).is_file()
    manifest = json.loads((path / "forgeml.json").read_text())
    assert manifest["model"] == "mlp" and manifest["task"] == "multiclass"

    predictor = forgeml.load(path)
    rows = predictor.predict(records(x_test))
    loaded = np.array([[row["probabilities"][c] for c in ("0", "1", "2")] for row in rows])
    assert np.allclose(loaded, model.predict(x_test), atol=1e-6)
    assert [row["prediction"] for row in rows] == list(loaded.argmax(axis=1))

    # The saved run's own metrics equal a fresh evaluation of the loaded model.
    saved = json.loads((path / "metrics.json").read_text())
    assert set(saved) >= {"train", "val", "stop_reason", "epochs", "steps", "precision"}
    test_records = [{**r, "label": int(y)} for r, y in zip(records(x_test), y_test, strict=True)]
    assert predictor.evaluate(test_records)["accuracy"] == pytest.approx(
        model.evaluate(x_test, y_test)["accuracy"]
    )
    with pytest.raises(ForgeError, match="already holds a finished run"):
        model.save(path)
    model.save(path, overwrite=True)


def test_regression_predicts_values_in_the_target_units(tmp_path: Path) -> None:
    x, y = make_regression(n_samples=400, n_features=5, noise=5.0, random_state=0)
    y = y + 1000.0  # far from 0: de-standardisation must add the mean back
    model = forgeml.Model("mlp", hidden_sizes=[32]).compile(optimizer="adam", lr=1e-2)
    model.fit(x[:300], y[:300], epochs=20, verbose=False)
    predictions = model.predict(x[300:])
    assert predictions.shape == (100,)
    assert r2_score(y[300:], predictions) > 0.9
    assert abs(predictions.mean() - y[300:].mean()) < 0.1 * y[300:].std()
    metrics = model.evaluate(x[300:], y[300:])
    assert metrics["r2"] == pytest.approx(r2_score(y[300:], predictions), abs=1e-5)
    # Errors are in the target's units, as scikit-learn computes them from the predictions.
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y[300:], predictions), rel=1e-4)
    # So are the ones a saved run writes to metrics.json.
    saved = json.loads((model.save(tmp_path / "regression") / "metrics.json").read_text())
    train_mae = mean_absolute_error(y[:300], model.predict(x[:300]))
    assert saved["train"]["mae"] == pytest.approx(train_mae, rel=1e-4)
    assert saved["train"]["rmse"] > 1.0  # noise 5 on a target of std ~100: not standardised


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 10) -> (B, 3)
        return self.body(x)


def test_user_module_trains_saves_and_loads(
    classification: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    x_train, x_test, y_train, y_test = classification
    torch.manual_seed(0)
    model = forgeml.Model(MyNet()).compile(optimizer="adam", lr=1e-2)
    history = model.fit(x_train, y_train, epochs=10, verbose=False)
    losses = [r["metrics"]["loss"] for r in history]
    assert losses[-1] < 0.5 * losses[0]
    assert model.evaluate(x_test, y_test)["accuracy"] >= 0.8

    path = model.save(tmp_path / "custom")
    assert json.loads((path / "forgeml.json").read_text())["model"] == "custom"
    with pytest.raises(ForgeError, match="custom nn.Module"):
        forgeml.load(path)
    predictor = forgeml.load(path, module=MyNet())
    rows = predictor.predict(records(x_test))
    loaded = np.array([list(row["probabilities"].values()) for row in rows])
    assert np.allclose(loaded, model.predict(x_test), atol=1e-6)


def test_user_module_options_are_rejected() -> None:
    with pytest.raises(ConfigError, match="configure your module directly"):
        forgeml.Model(MyNet(), hidden_sizes=[3])


def test_cnn_on_uint8_image_arrays() -> None:
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)  # (N, 8, 8) uint8
    model = forgeml.Model("cnn", channels=[8, 16], head_hidden=[32])
    model.compile(optimizer="adam", lr=3e-3)
    history = model.fit(images[:800], digits.target[:800], epochs=4, batch_size=32, verbose=False)
    losses = [r["metrics"]["loss"] for r in history]
    assert losses[-1] < 0.5 * losses[0]
    assert model.preprocessor.spec.image_shape == (1, 8, 8)
    metrics = model.evaluate(images[800:1100], digits.target[800:1100])
    assert metrics["accuracy"] >= 0.85
    probabilities = model.predict(images[800:820])
    assert probabilities.shape == (20, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    # Float images in [0, 1] are the same pixels.
    assert np.allclose(model.predict(images[800:820] / 255.0), probabilities, atol=1e-5)


def test_predict_before_fit_raises() -> None:
    model = forgeml.Model("mlp")
    with pytest.raises(ForgeError, match="not trained yet"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(ForgeError, match="not trained yet"):
        model.evaluate(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ForgeError, match="not trained yet"):
        model.save("never-written")
    assert not Path("never-written").exists()


def test_bad_inputs_are_clear_errors() -> None:
    model = forgeml.Model("mlp")
    with pytest.raises(DataError, match="one label per row"):
        model.fit(np.zeros((5, 2)), np.zeros(4), epochs=1, verbose=False)
    with pytest.raises(DataError, match="outside"):
        model.fit(np.full((4, 8, 8), 3.0), np.arange(4) % 2, epochs=1, verbose=False)


def test_a_binary_task_on_a_module_with_two_outputs_says_what_shape_it_needs() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 10)).astype(np.float32), rng.integers(0, 2, 32)
    two = nn.Sequential(nn.Linear(10, 2))  # two logits, but the labels are binary
    with pytest.raises(ConfigError, match=r"returned \(\d+, 2\); make its last layer output 1"):
        forgeml.Model(two).compile().fit(x, y, epochs=1, verbose=False)
