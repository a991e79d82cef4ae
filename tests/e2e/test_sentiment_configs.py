"""configs/sentiment-lstm.yaml and configs/sentiment-transformer.yaml: as written they read the
whole IMDb file of ../shared/data/sentiment (every line, including those that open with a `"`);
from the CLI, as shipped (but for a cap on the epochs) on all 3,000 sentences of that folder,
each reaches its accuracy bar and predicts raw text; from Python, one epoch on a slice.

The data lives outside the project (../shared/data): without it these tests skip, or fail where
the data is required (CI; see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import forgeml
from forgeml.config import load_config

REPO = Path(__file__).resolve().parents[2]
FILES = ["amazon_cells", "imdb", "yelp"]  # sentiment/NAME_labelled.txt, 1,000 sentences each
NAMES = ["sentiment-lstm", "sentiment-transformer"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RAW = ['" An opening quote, never closed.', "A wonderful, moving film.", "Dull and far too long."]
# Test accuracy on the run's own 300 test sentences (10% of 3,000, half positive: chance 0.5).
# Measured as the test runs them (config seed 0): LSTM 0.760, Transformer 0.767; with seed=1 and
# seed=2 (other splits and initialisations) 0.737 / 0.737 and 0.660 / 0.763. TF-IDF + logistic
# regression reaches 0.833 on such splits (bench/RESULTS.md). 0.65 is 15 points above chance
# (300 coin flips reach it with probability < 1e-7) and under every measured value.
BAR = {"sentiment-lstm": 0.65, "sentiment-transformer": 0.65}
# Early stopping as shipped keeps epoch 3 (LSTM) and 6 (Transformer) here and stops at 6 and 10;
# cut at those epochs the runs keep the very same model (same test loss and accuracy) at about
# half the cost.
EPOCHS = {"sentiment-lstm": 4, "sentiment-transformer": 6}


def quick(tmp: Path, name: str, source: Path) -> list[str]:
    """Overrides: one epoch on `source`, the run under tmp/runs/<name>."""
    return [
        f"data.source={source}",
        "train.max_epochs=1",
        f"output.dir={tmp / 'runs'}",
        f"output.name={name}",
    ]


@dataclass
class Cli:
    tmp: Path  # slice.tsv, new.tsv, runs/
    done: dict[str, subprocess.CompletedProcess]  # "validate NAME", "train NAME", "predict NAME"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, shared_data) -> Cli:
    """Each config validated as written, trained as shipped on all three files, then used to
    predict raw text: all through `python -m forgeml`. Also slice.tsv, the first 240 IMDb
    sentences (lines 21 and 198 open with a `"`), for the one-epoch runs from Python."""
    tmp = tmp_path_factory.mktemp("sentiment")
    texts = {
        name: shared_data.path(f"sentiment/{name}_labelled.txt").read_text(encoding="utf-8")
        for name in FILES
    }
    lines = texts["imdb"].split("\n")
    (tmp / "slice.tsv").write_text("\n".join(lines[:241]) + "\n", encoding="utf-8")
    rows = [line for text in texts.values() for line in text.split("\n")[1:] if line.strip()]
    (tmp / "all.tsv").write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    (tmp / "new.tsv").write_text("\n".join(["reviews", *RAW]) + "\n", encoding="utf-8")

    def start(*args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "forgeml", *args]
        return subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait(started: dict[str, subprocess.Popen]) -> dict[str, subprocess.CompletedProcess]:
        done = {}
        for key, process in started.items():
            out, err = process.communicate(timeout=300)
            done[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        return done

    first = {
        f"validate {n}": start(
            "validate",
            f"configs/{n}.yaml",
            *shared_data.source_overrides(REPO / "configs" / f"{n}.yaml"),
        )
        for n in NAMES
    }
    for n in NAMES:
        overrides = [
            f"data.source={tmp / 'all.tsv'}",
            f"train.max_epochs={EPOCHS[n]}",
            f"output.dir={tmp / 'runs'}",
            f"output.name={n}",
        ]
        first[f"train {n}"] = start("train", f"configs/{n}.yaml", "--quiet", *overrides)
    done = wait(first)
    predict = {
        f"predict {n}": start("predict", str(tmp / "runs" / n), str(tmp / "new.tsv"))
        for n in NAMES
        if done[f"train {n}"].returncode == 0
    }
    return Cli(tmp, {**done, **wait(predict)})


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-2000:]
    return " ".join(done.stdout.split())


@pytest.mark.parametrize("name", NAMES)
def test_config_as_written_reads_every_line_of_the_imdb_file(cli: Cli, name: str) -> None:
    path = REPO / "configs" / f"{name}.yaml"
    assert (
        path.read_text(encoding="utf-8").splitlines()[0] == f"# forgeml train configs/{name}.yaml"
    )
    model = {"sentiment-lstm": "rnn", "sentiment-transformer": "transformer"}[name]
    expected = f"task binary; rows train 800, val 100, test 100; model {model} with"
    assert expected in ok(cli.done[f"validate {name}"])


def test_the_lstm_config_is_the_classic_keras_model() -> None:
    """Embedding -> LSTM(100) -> Dense(1, sigmoid) with binary cross-entropy (a binary target
    gets one logit and BCE-with-logits)."""
    model = load_config(REPO / "configs" / "sentiment-lstm.yaml").model
    assert (model.name, model.cell, model.hidden_size, model.num_layers) == ("rnn", "lstm", 100, 1)
    assert model.head_hidden == []


@pytest.mark.parametrize("name", NAMES)
def test_cli_trains_the_config_to_its_bar_and_predicts_raw_text(cli: Cli, name: str) -> None:
    ok(cli.done[f"train {name}"])
    run = cli.tmp / "runs" / name
    manifest = json.loads((run / "forgeml.json").read_text())
    assert manifest["task"] == "binary"
    assert manifest["data_summary"] == {"train": 2400, "val": 300, "test": 300}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= BAR[name], metrics["test"]
    ok(cli.done[f"predict {name}"])
    rows = [json.loads(line) for line in cli.done[f"predict {name}"].stdout.splitlines()]
    assert len(rows) == len(RAW)
    for row in rows:
        assert row["prediction"] in ("0", "1") and list(row["probabilities"]) == ["0", "1"]


@pytest.mark.parametrize("name", NAMES)
def test_python_trains_one_epoch_and_predicts_raw_text(cli: Cli, name: str) -> None:
    tmp = cli.tmp
    run = forgeml.train(
        REPO / "configs" / f"{name}.yaml", quick(tmp, f"{name}-py", tmp / "slice.tsv"), quiet=True
    )
    rows = forgeml.load(run.dir).predict([{"reviews": text} for text in RAW])
    assert len(rows) == len(RAW)
    for row in rows:
        assert row["prediction"] in ("0", "1")  # labels as read from the TSV file
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
