"""Run directories written before the task redesign still load, predict, evaluate, serve and export.

tests/fixtures/runs_v1/ holds tiny runs written by forgeml at commit 7b0df82 (a table of numbers
and categories, a regression, a text column, images, a GPT) and what that code predicted for the
inputs in expected.json. Today's code must give the same answers from the same directories.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import forgeml
from forgeml.data.builtins import read_builtin
from forgeml.data.table import Table

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
TABLE_RUNS = ("tabular", "regression", "reviews")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixtures: nothing a test does may write into the repository."""
    out = tmp_path_factory.mktemp("runs_v1")
    for name in (*TABLE_RUNS, "digits", "gpt"):
        shutil.copytree(FIXTURES / name, out / name)
    return out


def assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    for row, old in zip(got, expected, strict=True):
        if isinstance(old["prediction"], float):
            assert row["prediction"] == pytest.approx(old["prediction"], rel=1e-5, abs=1e-6)
        else:
            assert row["prediction"] == old["prediction"]
        if "probabilities" in old:
            assert set(row["probabilities"]) == set(old["probabilities"])
            for label, p in old["probabilities"].items():
                assert row["probabilities"][label] == pytest.approx(p, abs=1e-5)


@pytest.mark.parametrize("name", TABLE_RUNS)
def test_table_runs_predict_as_before(runs: Path, name: str) -> None:
    case = EXPECTED[name]
    assert_same_predictions(forgeml.load(runs / name).predict(case["inputs"]), case["predictions"])


def test_image_run_predicts_as_before(runs: Path) -> None:
    images = read_builtin("builtin:digits").columns["image"][: len(EXPECTED["digits"]["rows"])]
    got = forgeml.load(runs / "digits").predict(Table({"image": images}, source="x"))
    assert_same_predictions(got, EXPECTED["digits"]["predictions"])


def test_language_model_run_generates_as_before(runs: Path) -> None:
    case = EXPECTED["gpt"]
    lm = forgeml.load(runs / "gpt")
    assert lm.generate(case["prompt"], max_new_tokens=8, temperature=0) == case["greedy_8"]


def test_old_runs_evaluate_on_labelled_records(runs: Path) -> None:
    """The run's own data paths point at a machine that is gone; labelled records still score."""
    case = EXPECTED["tabular"]
    labelled = [
        {**row, "label": p["prediction"]}
        for row, p in zip(case["inputs"], case["predictions"], strict=True)
    ]
    metrics = forgeml.evaluate(runs / "tabular", labelled)
    assert metrics["accuracy"] == 1.0  # labels are the run's own predictions


def test_old_table_run_exports_and_the_export_predicts_the_same(runs: Path) -> None:
    pytest.importorskip("onnxruntime")
    from forgeml.export import export_run

    case = EXPECTED["tabular"]
    export_run(runs / "tabular", format="onnx", data=case["inputs"])
    got = forgeml.load(runs / "tabular", backend="onnx").predict(case["inputs"])
    assert_same_predictions(got, case["predictions"])


def test_old_runs_are_served(runs: Path, tmp_path: Path) -> None:
    """A real server on 127.0.0.1 serves an old table run (:predict) and an old GPT run
    (OpenAI completions) with the answers the old code gave."""
    log = tmp_path / "server.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "forgeml.serve", str(runs / "tabular"), str(runs / "gpt")]
            + ["--port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_until_ready(server, log)
        case = EXPECTED["tabular"]
        reply = httpx.post(f"{url}/v1/models/tabular:predict", json={"instances": case["inputs"]})
        assert reply.status_code == 200, reply.text
        assert_same_predictions(reply.json()["predictions"], case["predictions"])
        case = EXPECTED["gpt"]
        body = {"model": "gpt", "prompt": case["prompt"], "max_tokens": 8, "temperature": 0}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == case["greedy_8"]
    finally:
        server.terminate()
        server.wait(30)


def wait_until_ready(server: subprocess.Popen, log: Path, timeout_s: float = 120) -> str:
    """The server's URL once it listens and its models are loaded (polls what it reports)."""
    deadline = time.monotonic() + timeout_s
    url = None
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        if url is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else None
        if url is not None and httpx.get(f"{url}/v2/health/ready").status_code == 200:
            return url
        time.sleep(0.1)
    raise AssertionError(f"the server never became ready:\n{log.read_text()}")
