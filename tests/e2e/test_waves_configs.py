"""configs/waves-cnn1d.yaml and configs/waves-gru.yaml through the real CLI: `forgeml train
CONFIG` (the command on each config's first line, on 600 signals of builtin:waves instead of
1,200, epochs as written), then `forgeml predict RUN FILE` on raw held-out signals in CSV (JSON
arrays in a cell) and JSONL (lists), and `forgeml.load(RUN).predict(records)` in Python on the
very same signals: the same predictions every way, of the known classes, mostly right.

Subprocesses pay seconds of imports (torch), so they run in two waves in parallel: both
trainings, then every predict.
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

import forgeml
from forgeml.data.builtins import read_builtin

REPO = Path(__file__).resolve().parents[2]
NAMES = ["waves-cnn1d", "waves-gru"]
CLASSES = ["sawtooth", "sine", "square"]
# One intra-op thread per process: two trainings share two cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Held-out signals: another seed of the generator than the configs' seed 0.
UNSEEN = read_builtin("builtin:waves?n=150&seed=7")
SIGNALS = [[float(v) for v in s] for s in UNSEEN.columns["signal"]]  # float32 values, exact
LABELS = list(UNSEEN.columns["label"])
# Far above chance (1/3); 600 signals and the configs' epochs reach 0.93..0.98 on these.
BAR = 0.85


def command(name: str, tmp: Path) -> list[str]:
    """The config's first line, plus overrides that make it quick and keep the run in tmp."""
    return [
        "train",
        f"configs/{name}.yaml",
        "--quiet",
        "data.source=builtin:waves?n=600",
        f"output.dir={tmp / 'runs'}",
        f"output.name={name}",
    ]


@dataclass
class Waves:
    tmp: Path
    done: dict[str, subprocess.CompletedProcess]  # "train NAME", "predict NAME csv|jsonl|long"

    def ok(self, key: str) -> subprocess.CompletedProcess:
        done = self.done[key]
        assert done.returncode == 0, f"{key} exited {done.returncode}: {done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def rows(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ok(key).stdout.splitlines()]


def run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    started = {
        key: subprocess.Popen(
            [sys.executable, "-m", "forgeml", *args],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        for key, args in commands.items()
    }
    done = {}
    for key, process in started.items():
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        done[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.fixture(scope="module")
def waves(tmp_path_factory: pytest.TempPathFactory) -> Waves:
    tmp = tmp_path_factory.mktemp("waves")
    with open(tmp / "unseen.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["signal"])
        writer.writerows([json.dumps(s)] for s in SIGNALS)
    lines = [json.dumps({"signal": s}) + "\n" for s in SIGNALS]
    (tmp / "unseen.jsonl").write_text("".join(lines), encoding="utf-8")
    # Two of three signals longer than the configs' max_length 64.
    long = [SIGNALS[0] * 2, SIGNALS[1], SIGNALS[2] + SIGNALS[3]]
    assert [len(s) > 64 for s in long] == [True, False, True]
    lines = [json.dumps({"signal": s}) + "\n" for s in long]
    (tmp / "long.jsonl").write_text("".join(lines), encoding="utf-8")

    done = run_all({f"train {name}": command(name, tmp) for name in NAMES})
    predict = {}
    for name in NAMES:
        if done[f"train {name}"].returncode != 0:
            continue  # reported by the test of the training
        run = str(tmp / "runs" / name)
        for kind in ("csv", "jsonl"):
            predict[f"predict {name} {kind}"] = ["predict", run, str(tmp / f"unseen.{kind}")]
    predict["predict waves-gru long"] = [
        "predict",
        str(tmp / "runs/waves-gru"),
        str(tmp / "long.jsonl"),
    ]
    return Waves(tmp, {**done, **run_all(predict)})


def accuracy(rows: list[dict[str, Any]]) -> float:
    assert len(rows) == len(LABELS)
    return float(np.mean([r["prediction"] == label for r, label in zip(rows, LABELS, strict=True)]))


@pytest.mark.parametrize("name", NAMES)
def test_first_line_is_the_command_that_runs_the_config(name: str) -> None:
    first = (REPO / "configs" / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# forgeml train configs/{name}.yaml"
    assert first.removeprefix("# forgeml ").split() == command(name, Path())[:2]


@pytest.mark.parametrize("name", NAMES)
def test_cli_trains_the_config(waves: Waves, name: str) -> None:
    waves.ok(f"train {name}")
    run = waves.tmp / "runs" / name
    manifest = json.loads((run / "forgeml.json").read_text(encoding="utf-8"))
    assert manifest["task"] == "multiclass" and sum(manifest["data_summary"].values()) == 600
    assert manifest["output_schema"]["classes"] == CLASSES
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["stop_reason"] == "max_epochs"
    assert metrics["test"]["accuracy"] >= BAR


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("name", NAMES)
def test_cli_predicts_raw_held_out_signals(waves: Waves, name: str, kind: str) -> None:
    key = f"predict {name} {kind}"
    rows = waves.rows(key)
    assert all(r["prediction"] in CLASSES and list(r["probabilities"]) == CLASSES for r in rows)
    assert accuracy(rows) >= BAR
    assert "note:" not in waves.done[key].stderr  # no signal is longer than max_length 64


@pytest.mark.parametrize("name", NAMES)
def test_python_predicts_the_same_as_the_cli(waves: Waves, name: str) -> None:
    waves.ok(f"train {name}")
    predictor = forgeml.load(waves.tmp / "runs" / name)
    rows = predictor.predict([{"signal": s} for s in SIGNALS])
    assert accuracy(rows) >= BAR and predictor.last_truncated == {}
    for kind in ("csv", "jsonl"):
        cli = waves.rows(f"predict {name} {kind}")
        assert [r["prediction"] for r in cli] == [r["prediction"] for r in rows]
        for a, b in zip(cli, rows, strict=True):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_cli_notes_signals_cut_to_max_length(waves: Waves) -> None:
    done = waves.ok("predict waves-gru long")
    assert len(done.stdout.splitlines()) == 3
    note = "note: 2 of 3 sequences in column 'signal' were longer than max_length 64 and were cut"
    assert done.stderr.splitlines() == [note]
