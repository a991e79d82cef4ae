"""configs/sentiment-lstm.yaml and configs/sentiment-transformer.yaml: as written they read the
whole IMDb file of ../shared/data/sentiment (every line, including those that open with a `"`);
with overrides they train for one epoch on a slice of it, from the CLI and from Python, and
predict raw text.

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
NAMES = ["sentiment-lstm", "sentiment-transformer"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RAW = ['" An opening quote, never closed.', "A wonderful, moving film.", "Dull and far too long."]


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
    """Each config validated as written, trained for one epoch on the first 240 sentences (lines
    21 and 198 open with a `"`), then used to predict raw text: all through `python -m forgeml`."""
    tmp = tmp_path_factory.mktemp("sentiment")
    data = shared_data.path("sentiment/imdb_labelled.txt")  # skips, or fails in CI, if missing
    lines = data.read_text(encoding="utf-8").split("\n")
    (tmp / "slice.tsv").write_text("\n".join(lines[:241]) + "\n", encoding="utf-8")
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
        overrides = quick(tmp, n, tmp / "slice.tsv")
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
def test_cli_trains_one_epoch_and_predicts_raw_text(cli: Cli, name: str) -> None:
    ok(cli.done[f"train {name}"])
    run = cli.tmp / "runs" / name
    manifest = json.loads((run / "forgeml.json").read_text())
    assert manifest["task"] == "binary" and sum(manifest["data_summary"].values()) == 240
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
