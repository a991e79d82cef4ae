"""End to end through the real CLI: `python -m forgeml train|validate|predict|evaluate` in
subprocesses, on the digits CNN and on CSV, JSONL and image-folder sources written here.

Every subprocess pays seconds of torch import, so the module starts them together in two waves
(all trainings, then everything that reads a trained run) and each test checks one result.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

import forgeml
from forgeml.config import Config, load_config
from forgeml.data.splits import read_splits as load_splits
from forgeml.run_dir import sha256_file

REPO = Path(__file__).resolve().parents[2]
DIGITS_CONFIG = REPO / "configs" / "digits-cnn.yaml"
# One intra-op thread per process: several small trainings share two cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN_FILES = {
    "forgeml.json",
    "config.yaml",
    "model.safetensors",
    "preprocess",
    "metrics.json",
    "history.jsonl",
    "card.md",
    "training_curves.png",
    "confusion_matrix.png",
    "checkpoints",
}


@dataclass
class Done:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Done:
        assert self.returncode == 0, (
            f"forgeml {' '.join(self.args)} exited {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )
        return self


def run_all(commands: dict[str, list[str]], cwd: Path) -> dict[str, Done]:
    """Start every `forgeml ARGS` at once, wait for all; name -> result."""
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "forgeml", *args],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    done = {}
    for name, process in started.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done[name] = Done(commands[name], process.returncode, stdout, stderr)
    return done


# --------------------------------------------------------------------------- data written here


def write_csv(path: Path, columns: dict[str, Any]) -> None:
    names = list(columns)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*(columns[n] for n in names), strict=True))


def tabular_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Numeric + category columns and a yes/no target that depends on all of them (no noise)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, size=n)
    income = rng.lognormal(10.5, 0.5, size=n).round(-2)
    color = rng.choice(["red", "green", "blue"], size=n)
    effect = np.select([color == "red", color == "green"], [1.5, 0.0], -1.5)
    logit = 0.08 * (age - 49) + 2.0 * (np.log(income) - 10.5) + effect
    return {"age": age, "income": income, "color": color, "label": np.where(logit > 0, "yes", "no")}


def regression_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """y in the hundreds from a smooth non-linear function of two inputs, plus a little noise."""
    rng = np.random.default_rng(seed)
    x0, x1 = rng.uniform(-2, 2, size=n), rng.uniform(-2, 2, size=n)
    y = 500 + 40 * np.sin(x0) + 10 * x1**2 + rng.normal(0, 2, size=n)
    return {"x0": x0.round(5), "x1": x1.round(5), "y": y.round(4)}


def square_image(bright: bool, rng: np.random.Generator) -> np.ndarray:
    """(10, 10) uint8: noisy grey background with a 4x4 square, bright or dark."""
    image = rng.normal(128, 25, size=(10, 10))
    top, left = rng.integers(0, 7, size=2)
    image[top : top + 4, left : left + 4] = rng.normal(235 if bright else 20, 10, size=(4, 4))
    return image.clip(0, 255).astype(np.uint8)


def prepare_files(root: Path) -> dict[str, Any]:
    """Write every data set and config; returns the held-out truths the tests compare with."""
    truths: dict[str, Any] = {}

    # Digits held out by the config's own test split, as PNG files.
    digits_cfg = load_config(DIGITS_CONFIG)
    test = load_splits(digits_cfg.data, digits_cfg.seed)["test"]
    folder = root / "digit_pngs"
    folder.mkdir()
    labels = []
    for i in range(40):
        Image.fromarray(test.columns["image"][i], mode="L").save(folder / f"digit_{i:02d}.png")
        labels.append(int(test.columns["label"][i]))
    truths["digit_labels"] = labels  # file names sort in this order
    truths["digit_test_images"] = [test.columns["image"][i] for i in range(40)]

    # A CSV with numeric + category columns and a string target; predict on rows without it.
    table = tabular_data(700, seed=0)
    write_csv(root / "tabular.csv", table)
    unseen = tabular_data(200, seed=1)
    truths["tabular"] = list(unseen.pop("label"))
    write_csv(root / "tabular_unlabelled.csv", unseen)
    write_yaml(
        root / "tabular.yaml",
        source="tabular.csv",
        model={"name": "mlp", "hidden_sizes": [32]},
        train={"max_epochs": 20, "batch_size": 32, "optimizer": {"lr": 0.01}},
    )

    write_csv(root / "regression.csv", regression_data(600, seed=0))
    unseen = regression_data(200, seed=1)
    truths["regression"] = unseen.pop("y")
    write_csv(root / "regression_unlabelled.csv", unseen)
    write_yaml(
        root / "regression.yaml",
        source="regression.csv",
        target="y",
        model={"name": "mlp", "hidden_sizes": [32, 32]},
        train={"max_epochs": 30, "batch_size": 32, "optimizer": {"lr": 0.01}},
    )

    rng = np.random.default_rng(0)
    names = np.array(["alpha", "beta", "gamma"])
    centers = rng.uniform(-4, 4, size=(3, 4))
    with open(root / "blobs.jsonl", "w", encoding="utf-8") as f:
        for i in range(300):
            point = centers[i % 3] + rng.normal(0, 1, size=4)
            record = {f"f{j}": round(float(v), 5) for j, v in enumerate(point)}
            f.write(json.dumps({**record, "species": str(names[i % 3])}) + "\n")
    write_yaml(
        root / "jsonl.yaml",
        source="blobs.jsonl",
        target="species",
        model={"name": "mlp", "hidden_sizes": [16]},
        train={"max_epochs": 10, "batch_size": 32, "optimizer": {"lr": 0.01}},
    )

    for kind in ("bright", "dark"):
        (root / "squares" / kind).mkdir(parents=True)
        for i in range(60):
            image = square_image(kind == "bright", rng)
            Image.fromarray(image, mode="L").save(root / "squares" / kind / f"{i:02d}.png")
    write_yaml(
        root / "squares.yaml",
        source="squares",
        model={"name": "cnn", "channels": [8, 16], "head_hidden": [16]},
        train={"max_epochs": 10, "batch_size": 16, "optimizer": {"lr": 0.005}},
    )
    return truths


def write_yaml(path: Path, *, source: str, model: dict, train: dict, target: str | None = None):
    data: dict[str, Any] = {"source": source}
    if target:
        data["target"] = target
    config = {"seed": 0, "data": data, "model": model, "train": train, "output": {"dir": "runs"}}
    path.write_text(f"# forgeml train {path.name}\n" + yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------- the two waves


@dataclass
class CliRuns:
    root: Path
    truths: dict[str, Any]
    done: dict[str, Done]

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def metrics(self, name: str) -> dict[str, Any]:
        return json.loads((self.run_dir(name) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    root = tmp_path_factory.mktemp("cli")
    truths = prepare_files(root)
    done = run_all(
        {
            "train_digits": [
                "train",
                str(DIGITS_CONFIG),
                "train.max_epochs=3",
                "output.dir=runs",
                "--quiet",
            ],
            "train_tabular": ["train", "tabular.yaml"],
            "train_regression": ["train", "regression.yaml", "--quiet"],
            "train_jsonl": ["train", "jsonl.yaml", "--quiet"],
            "train_squares": ["train", "squares.yaml", "--quiet"],
            "validate": ["validate", str(DIGITS_CONFIG), "output.dir=runs", "output.name=checked"],
        },
        root,
    )
    digits = "runs/digits-cnn"
    done |= run_all(
        {
            "predict_folder": ["predict", digits, "digit_pngs", "--output", "folder.csv"],
            "predict_single": [
                "predict",
                digits,
                "digit_pngs/digit_00.png",
                "--output",
                "single.jsonl",
            ],
            "evaluate": ["evaluate", digits, "--output", "evaluation.json"],
            "predict_tabular": [
                "predict",
                "runs/tabular",
                "tabular_unlabelled.csv",
                "--output",
                "tabular_predictions.csv",
            ],
            "predict_regression": [
                "predict",
                "runs/regression",
                "regression_unlabelled.csv",
                "--output",
                "regression_predictions.jsonl",
            ],
        },
        root,
    )
    return CliRuns(root, truths, done)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- digits CNN


def test_digits_run_directory_holds_exactly_the_design_files(cli_runs: CliRuns) -> None:
    cli_runs.done["train_digits"].check()
    run_dir = cli_runs.run_dir("digits-cnn")
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    assert [p.name for p in (run_dir / "preprocess").iterdir()] == ["features.json"]
    for name in RUN_FILES - {"preprocess", "checkpoints"}:
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digits-cnn" in (run_dir / "card.md").read_text()


def test_digits_config_yaml_has_every_default_filled(cli_runs: CliRuns) -> None:
    cli_runs.done["train_digits"].check()
    written = yaml.safe_load((cli_runs.run_dir("digits-cnn") / "config.yaml").read_text())
    resolved = load_config(written)
    assert resolved.to_dict() == written  # nothing left for a default to fill
    assert set(written) == set(Config.model_fields)
    assert written["train"]["max_epochs"] == 3  # the override
    assert written["train"]["optimizer"] == {
        "name": "adamw",
        "lr": 0.002,
        "weight_decay": 0.0001,
        "momentum": 0.9,
        "nesterov": False,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    }
    assert written["model"]["kernel_size"] == 3  # a cnn default the YAML leaves out
    assert written["output"] == {"dir": "runs", "name": "digits-cnn", "overwrite": False}
    manifest = json.loads((cli_runs.run_dir("digits-cnn") / "forgeml.json").read_text())
    assert manifest["config_sha256"] == resolved.digest()


def test_digits_metrics_and_history(cli_runs: CliRuns) -> None:
    cli_runs.done["train_digits"].check()
    metrics = cli_runs.metrics("digits-cnn")
    assert metrics["test"]["accuracy"] >= 0.9
    assert metrics["stop_reason"] == "max_epochs" and metrics["epochs"] == 3
    sizes = json.loads((cli_runs.run_dir("digits-cnn") / "forgeml.json").read_text())[
        "data_summary"
    ]
    assert metrics["steps"] == 3 * -(-sizes["train"] // 32)  # batch_size 32, 3 epochs
    assert len(metrics["test"]["confusion_matrix"]) == 10
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == sizes["test"]

    history = read_jsonl(cli_runs.run_dir("digits-cnn") / "history.jsonl")
    assert [(r["epoch"], r["split"]) for r in history] == [
        (e, s) for e in (1, 2, 3) for s in ("train", "val")
    ]
    train_losses = [r["metrics"]["loss"] for r in history if r["split"] == "train"]
    assert train_losses[0] > train_losses[1] > train_losses[2]
    assert train_losses[2] < 0.5 * train_losses[0]
    assert history[-1]["metrics"]["accuracy"] >= 0.9  # val accuracy of the last epoch


def test_digits_manifest(cli_runs: CliRuns) -> None:
    cli_runs.done["train_digits"].check()
    run_dir = cli_runs.run_dir("digits-cnn")
    manifest = json.loads((run_dir / "forgeml.json").read_text())
    assert manifest["task"] == "multiclass" and manifest["model"] == "cnn"
    assert manifest["weights_sha256"] == sha256_file(run_dir / "model.safetensors")
    assert manifest["input_schema"] == [
        {"name": "image", "type": "image", "required": True, "channels": 1, "height": 8, "width": 8}
    ]
    assert manifest["output_schema"]["classes"] == list(range(10))
    sizes = manifest["data_summary"]
    assert sum(sizes.values()) == 1797  # every digit in exactly one split of 70/10/20
    assert abs(sizes["test"] - 0.2 * 1797) <= 1 and abs(sizes["val"] - 0.1 * 1797) <= 1


def test_predict_a_folder_of_pngs_to_csv(cli_runs: CliRuns) -> None:
    cli_runs.done["predict_folder"].check()
    rows = read_csv_rows(cli_runs.root / "folder.csv")
    assert len(rows) == 40
    assert list(rows[0]) == ["image", "prediction"] + [f"probability_{c}" for c in range(10)]
    assert [Path(r["image"]).name for r in rows] == [f"digit_{i:02d}.png" for i in range(40)]
    predicted = [int(r["prediction"]) for r in rows]
    accuracy = np.mean(np.array(predicted) == np.array(cli_runs.truths["digit_labels"]))
    assert accuracy >= 0.9
    for row in rows:
        probabilities = [float(row[f"probability_{c}"]) for c in range(10)]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)  # 6 decimals each
        assert int(row["prediction"]) == int(np.argmax(probabilities))
    # A PNG file predicts as the same pixels given as an array.
    predictor = forgeml.load(cli_runs.run_dir("digits-cnn"))
    in_memory = predictor.predict([{"image": a} for a in cli_runs.truths["digit_test_images"]])
    assert [r["prediction"] for r in in_memory] == predicted
    assert "wrote 40 predictions" in cli_runs.done["predict_folder"].stderr


def test_predict_a_single_png_to_jsonl(cli_runs: CliRuns) -> None:
    cli_runs.done["predict_single"].check()
    (row,) = read_jsonl(cli_runs.root / "single.jsonl")
    assert Path(row["image"]).name == "digit_00.png"
    assert row["prediction"] == cli_runs.truths["digit_labels"][0]
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert list(row["probabilities"]) == [str(c) for c in range(10)]


def test_evaluate_without_data_reproduces_the_test_metrics(cli_runs: CliRuns) -> None:
    done = cli_runs.done["evaluate"].check()
    evaluation = json.loads((cli_runs.root / "evaluation.json").read_text())
    expected = cli_runs.metrics("digits-cnn")["test"]
    assert evaluation["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert evaluation["f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-12)
    assert evaluation["confusion_matrix"] == expected["confusion_matrix"]
    assert evaluation["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert "accuracy" in done.stdout  # the summary table


def test_validate_prints_ok(cli_runs: CliRuns) -> None:
    done = cli_runs.done["validate"].check()
    assert done.stdout.startswith("ok:") or "\nok:" in done.stdout
    assert "task multiclass" in done.stdout and "model cnn" in done.stdout
    assert not (cli_runs.root / "runs" / "checked").exists()  # validating trains and writes nothing


# --------------------------------------------------------------------------- other sources


def test_csv_with_numeric_and_category_columns_and_a_string_target(cli_runs: CliRuns) -> None:
    done = cli_runs.done["train_tabular"].check()
    assert "color category (3 values" in done.stdout  # not --quiet: the inferred column types
    metrics = cli_runs.metrics("tabular")
    assert metrics["test"]["accuracy"] >= 0.85
    manifest = json.loads((cli_runs.run_dir("tabular") / "forgeml.json").read_text())
    assert manifest["task"] == "binary"
    assert manifest["output_schema"]["classes"] == ["no", "yes"]
    assert [c["type"] for c in manifest["input_schema"]] == ["numeric", "numeric", "category"]

    cli_runs.done["predict_tabular"].check()
    rows = read_csv_rows(cli_runs.root / "tabular_predictions.csv")
    assert list(rows[0]) == ["prediction", "probability_no", "probability_yes"]
    predicted = [r["prediction"] for r in rows]
    truth = cli_runs.truths["tabular"]
    assert np.mean(np.array(predicted) == np.array(truth)) >= 0.85  # on 200 unseen rows
    # The CLI and the Python API give the same probabilities for the same rows.
    unlabelled = read_csv_rows(cli_runs.root / "tabular_unlabelled.csv")
    in_process = forgeml.load(cli_runs.run_dir("tabular")).predict(unlabelled)
    assert [r["prediction"] for r in in_process] == predicted
    for cli_row, api_row in zip(rows, in_process, strict=True):
        assert float(cli_row["probability_yes"]) == pytest.approx(
            api_row["probabilities"]["yes"], abs=1e-6
        )


def test_regression_csv_predicts_in_the_target_units(cli_runs: CliRuns) -> None:
    cli_runs.done["train_regression"].check()
    metrics = cli_runs.metrics("regression")
    assert metrics["test"]["r2"] > 0.8
    # Errors are reported in the target's units (y has std ~30): not the standardised scale.
    assert 0.5 < metrics["test"]["rmse"] < 10

    cli_runs.done["predict_regression"].check()
    rows = read_jsonl(cli_runs.root / "regression_predictions.jsonl")
    predicted = np.array([r["prediction"] for r in rows])
    truth = np.asarray(cli_runs.truths["regression"])
    assert len(predicted) == len(truth) == 200
    r2 = 1 - np.sum((predicted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert r2 > 0.8
    assert abs(predicted.mean() - truth.mean()) < 5  # de-standardised: around 500, not 0
    assert np.abs(predicted - truth).mean() < 0.3 * truth.std()


def test_jsonl_source(cli_runs: CliRuns) -> None:
    cli_runs.done["train_jsonl"].check()
    metrics = cli_runs.metrics("jsonl")
    assert metrics["test"]["accuracy"] >= 0.9
    manifest = json.loads((cli_runs.run_dir("jsonl") / "forgeml.json").read_text())
    assert manifest["output_schema"] == {
        "name": "species",
        "task": "multiclass",
        "classes": ["alpha", "beta", "gamma"],
    }
    assert [c["name"] for c in manifest["input_schema"]] == ["f0", "f1", "f2", "f3"]
    losses = [
        r["metrics"]["loss"]
        for r in read_jsonl(cli_runs.run_dir("jsonl") / "history.jsonl")
        if r["split"] == "train"
    ]
    assert losses[-1] < 0.5 * losses[0]


def test_image_folder_source(cli_runs: CliRuns) -> None:
    cli_runs.done["train_squares"].check()
    metrics = cli_runs.metrics("squares")
    assert metrics["test"]["accuracy"] >= 0.9
    assert metrics["val"]["accuracy"] >= 0.9
    manifest = json.loads((cli_runs.run_dir("squares") / "forgeml.json").read_text())
    assert manifest["output_schema"]["classes"] == ["bright", "dark"]
    assert manifest["input_schema"][0]["type"] == "image"
    assert (manifest["input_schema"][0]["height"], manifest["input_schema"][0]["width"]) == (10, 10)
    assert {p.name for p in cli_runs.run_dir("squares").iterdir()} == RUN_FILES
