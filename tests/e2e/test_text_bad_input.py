"""Bad text and sequence input: one `error:` line on stderr, exit code 2, no traceback.

The line names the file, line and column (or the config key) at fault. Every error case is a
real `python -m forgeml ...` subprocess in its own directory; they are launched together (each
pays seconds of imports), and each test checks one result.

Under `data.on_bad_rows: skip` the same kinds of rows are skipped instead, counted in
metrics.json `bad_rows` and logged; those runs train in this process through `forgeml.train`,
the function `forgeml train` calls, with its log captured.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

import forgeml
from forgeml.errors import ForgeError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

POSITIVE = ["good", "great", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dreadful"]
FILLER = ["the", "film", "was", "really", "quite", "plot", "acting", "story"]


def review_rows(n: int = 60) -> list[tuple[str, str]]:
    """n deterministic (review, label) rows of four words or more, both labels."""
    rows = []
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        word = (POSITIVE if label == "pos" else NEGATIVE)[i % 4]
        rows.append((f"{FILLER[i % 8]} {word} {FILLER[(i + 3) % 8]} {FILLER[(i + 5) % 8]}", label))
    return rows


def reviews_csv(replace: dict[int, str] | None = None) -> str:
    """reviews.csv; `replace` maps a file line (the header is line 1) to its review cell."""
    lines = ["review,label"]
    for line, (text, label) in enumerate(review_rows(), start=2):
        text = (replace or {}).get(line, text)
        lines.append(f"{json.dumps(text, ensure_ascii=False)},{label}")  # quoted like CSV
    return "\n".join(lines) + "\n"


def latin1(text: str) -> bytes:
    """UTF-8 bytes of `text` with "@@" replaced by the Latin-1 byte of "é" (not UTF-8)."""
    return text.encode("utf-8").replace(b"@@", b"\xe9")


def reviews_jsonl(replace: dict[int, Any] | None = None) -> str:
    out = []
    for line, (text, label) in enumerate(review_rows(), start=1):
        out.append(json.dumps({"review": (replace or {}).get(line, text), "label": label}))
    return "\n".join(out) + "\n"


def signals_jsonl(replace: dict[int, Any] | None = None, n: int = 60) -> str:
    """n rows of 4-step signals: rising ones are 'up', falling ones 'down'."""
    out = []
    for line in range(1, n + 1):
        up = line % 2 == 0
        signal = [round((k if up else 4 - k) * 0.5 + 0.01 * line, 3) for k in range(4)]
        value = (replace or {}).get(line, signal)
        out.append(json.dumps({"signal": value, "label": "up" if up else "down"}))
    return "\n".join(out) + "\n"


def signals_csv(replace: dict[int, str]) -> str:
    lines = ["signal,label"]
    for line, record in enumerate(signals_jsonl().splitlines(), start=2):
        row = json.loads(record)
        cell = replace.get(line, json.dumps(row["signal"]))
        lines.append(f'"{cell}",{row["label"]}')
    return "\n".join(lines) + "\n"


def config(source: str, model: dict | None = None, **data: Any) -> str:
    return yaml.safe_dump(
        {
            "data": {"source": source, **data},
            "model": model or {"name": "rnn", "hidden_size": 8, "embedding_dim": 8},
            "train": {"max_epochs": 1, "batch_size": 16, "precision": "fp32"},
        },
        sort_keys=False,
    )


TEXT_YAML = config("reviews.csv")
SEQUENCE_YAML = config("signals.jsonl", {"name": "rnn", "cell": "gru", "hidden_size": 8})


@dataclass
class Case:
    """One bad input: the files its directory holds, the CLI arguments, what the error names.

    Every directory also holds reviews.csv and text.yaml (a tiny LSTM on it), signals.jsonl and
    seq.yaml (a tiny GRU on it). In args, TEXT_RUN and TAGS_RUN become the trained runs' paths.
    """

    args: list[str]
    expect: tuple[str, ...] = ()
    files: dict[str, str | bytes] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # empty and whitespace-only texts (texts of stop words only: see skip_bad_texts)
    "empty_text_csv": Case(
        ["validate", "text.yaml", "data.source=empty.csv"],
        ("empty.csv, line 7, column 'review'", "empty text", "expected at least one token"),
        {"empty.csv": reviews_csv({7: ""})},
    ),
    "whitespace_text_jsonl": Case(
        ["validate", "text.yaml", "data.source=blank.jsonl"],
        ("blank.jsonl, line 5, column 'review'", "empty text", "expected at least one token"),
        {"blank.jsonl": reviews_jsonl({5: " \t  "})},
    ),
    # a text file that is not UTF-8
    "invalid_utf8_text": Case(
        ["validate", "text.yaml", "data.source=latin1.csv"],
        ("latin1.csv, line 9: byte 0xe9 is not valid UTF-8", "re-save the file as UTF-8"),
        {"latin1.csv": latin1(reviews_csv({9: "caf@@ good film here"}))},
    ),
    # sequences of the wrong type, ragged sequences where the length is declared
    "sequence_not_json_csv": Case(
        ["validate", "seq.yaml", "data.source=signals.csv", "data.columns.signal.type=sequence"],
        ("signals.csv, line 6, column 'signal'", '"abc" is not valid JSON', "JSON array"),
        {"signals.csv": signals_csv({6: "abc"})},
    ),
    "sequence_with_a_string_jsonl": Case(
        ["validate", "seq.yaml", "data.source=mixed.jsonl"],
        ("mixed.jsonl, line 4, column 'signal'", '"x" at index 1 is not a number'),
        {"mixed.jsonl": signals_jsonl({4: [1, "x"]})},
    ),
    "sequence_ragged_with_declared_length": Case(
        ["validate", "seq.yaml", "data.columns.signal.sequence.length=4", "data.source=rag.jsonl"],
        (
            "rag.jsonl, line 8, column 'signal'",
            "ragged: 3 steps, the declared length is 4",
            "data.columns.signal.sequence.length",
        ),
        {"rag.jsonl": signals_jsonl({8: [0.1, 0.2, 0.3]})},
    ),
    # tokenizer files and vocabularies
    "tokenizer_file_missing": Case(
        ["validate", "text.yaml", "data.columns.review.text.tokenizer_file=nope.json"],
        (
            "data.columns.review.text.tokenizer_file",
            "nope.json does not exist",
            "relative to the current directory",
        ),
    ),
    "tokenizer_file_does_not_parse": Case(
        ["validate", "text.yaml", "data.columns.review.text.tokenizer_file=broken.json"],
        ("data.columns.review.text.tokenizer_file", "cannot load broken.json", "tokenizer.json"),
        {"broken.json": '{"version": "1.0", "model": {"type": "WordLevel"'},
    ),
    "empty_vocabulary": Case(
        ["validate", "text.yaml", "data.columns.review.text.min_frequency=1000"],
        (
            "column 'review'",
            "vocabulary is empty",
            "lower data.columns.review.text.min_frequency",
        ),
    ),
    # config mistakes in text options
    "unknown_text_option_in_file": Case(
        ["validate", "typo.yaml"],
        (
            "typo.yaml: unknown config key 'data.columns.review.text.tokenzier'",
            "did you mean 'data.columns.review.text.tokenizer'?",
        ),
        {"typo.yaml": config("reviews.csv", columns={"review": {"text": {"tokenzier": "char"}}})},
    ),
    "numeric_type_with_text_section": Case(
        ["validate", "numeric.yaml"],
        ("numeric.yaml", "data.columns.review", "type is numeric", "set type: text"),
        {
            "numeric.yaml": config(
                "reviews.csv",
                columns={"review": {"type": "numeric", "text": {"tokenizer": "char"}}},
            )
        },
    ),
}

RUN_CASES: dict[str, Case] = {
    "multilabel_label_unseen_in_training": Case(
        ["evaluate", "TAGS_RUN", "--data", "unseen.jsonl"],
        ("unseen.jsonl, line 3, column 'tags'", "label 'weather'", "food, sports, tech"),
        {
            "unseen.jsonl": "\n".join(
                json.dumps(r)
                for r in [
                    {"text": "the goal of the match", "tags": ["sports"]},
                    {"text": "a pizza and a laptop", "tags": ["food", "tech"]},
                    {"text": "rain and sun and snow", "tags": ["weather"]},
                ]
            )
            + "\n"
        },
    ),
    "predict_on_an_empty_text": Case(
        ["predict", "TEXT_RUN", "new.jsonl"],
        ("new.jsonl, line 2, column 'review'", "empty text"),
        {"new.jsonl": '{"review": "a good film"}\n{"review": "   "}\n'},
    ),
}

# Skipping bad rows: these train (in this process, as `forgeml train CONFIG OVERRIDES` does) and
# succeed; max_bad_fraction 0.1 allows their few bad rows.
SKIP = ["data.on_bad_rows=skip", "data.max_bad_fraction=0.1"]
SKIP_CASES: dict[str, Case] = {
    "skip_bad_texts": Case(
        ["text.yaml", "data.source=bad.csv", "data.columns.review.text.stopwords=english", *SKIP],
        files={
            "bad.csv": latin1(reviews_csv({7: "", 12: "   ", 20: "the of and", 30: "caf@@ ok"}))
        },
    ),
    "skip_bad_sequences": Case(
        [
            "seq.yaml",
            "data.source=bad.jsonl",
            "data.columns.signal.type=sequence",
            "data.columns.signal.sequence.length=4",
            *SKIP,
        ],
        files={"bad.jsonl": signals_jsonl({3: "abc", 10: [1, "x"], 21: [0.5, 0.25, 0.125]})},
    ),
}


def train_runs(root: Path) -> dict[str, Path]:
    """The runs RUN_CASES use, trained in this process (their training is not under test)."""
    root.mkdir(parents=True)
    (root / "reviews.csv").write_text(reviews_csv(), encoding="utf-8")
    tags = [
        {"text": "the goal of the match", "tags": ["sports"]},
        {"text": "a pizza and some pasta", "tags": ["food"]},
        {"text": "my laptop runs code", "tags": ["tech"]},
        {"text": "pizza after the match", "tags": ["food", "sports"]},
        {"text": "a day in the town", "tags": []},
    ] * 8
    (root / "tags.jsonl").write_text("\n".join(json.dumps(t) for t in tags) + "\n")
    runs = {}
    for name, source, target in (
        ("TEXT_RUN", "reviews.csv", "label"),
        ("TAGS_RUN", "tags.jsonl", "tags"),
    ):
        run = forgeml.train(
            {
                "data": {"source": str(root / source), "target": target},
                "model": {"name": "rnn", "hidden_size": 8, "embedding_dim": 8},
                "train": {"max_epochs": 1, "batch_size": 16, "precision": "fp32"},
                "output": {"dir": str(root / "runs"), "name": name.lower()},
            },
            quiet=True,
        )
        runs[name] = run.dir
    return runs


def setup_case(case_dir: Path, case: Case, runs: dict[str, Path]) -> list[str]:
    case_dir.mkdir(parents=True)
    files = {
        "reviews.csv": reviews_csv(),
        "text.yaml": TEXT_YAML,
        "signals.jsonl": signals_jsonl(),
        "seq.yaml": SEQUENCE_YAML,
        **case.files,
    }
    for name, content in files.items():
        path = case_dir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return [str(runs.get(a, a)) for a in case.args]


@dataclass
class Outcome:
    case: Case
    dir: Path
    returncode: int
    stdout: str
    stderr: str


def run_cases(root: Path, cases: dict[str, Case], runs: dict[str, Path]) -> Callable[[], dict]:
    """Start every case; returns the function that waits for them all."""
    started = {}
    for name, case in cases.items():
        args = setup_case(root / name, case, runs)
        started[name] = subprocess.Popen(
            [sys.executable, "-m", "forgeml", *args],
            cwd=root / name,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait() -> dict[str, Outcome]:
        out = {}
        for name, process in started.items():
            try:
                stdout, stderr = process.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            out[name] = Outcome(cases[name], root / name, process.returncode, stdout, stderr)
        return out

    return wait


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("text_bad_input")
    wait_first = run_cases(root, CASES, {})
    runs = train_runs(root / "trained")  # while the first cases run
    wait_runs = run_cases(root, RUN_CASES, runs)
    skipped = {name: train_skipping(root / name, case) for name, case in SKIP_CASES.items()}
    return {**wait_first(), **wait_runs(), **skipped}


def train_skipping(case_dir: Path, case: Case) -> Outcome:
    """`forgeml train ARGS` in this process: exit code 0/2 as the CLI, its log as stdout."""
    setup_case(case_dir, case, {})
    log = io.StringIO()
    cwd = os.getcwd()
    os.chdir(case_dir)  # data.source is relative to the current directory
    try:
        forgeml.train(case.args[0], case.args[1:], console=Console(file=log, width=120))
        code, error = 0, ""
    except ForgeError as exc:
        code, error = exc.exit_code, f"error: {exc}"
    finally:
        os.chdir(cwd)
    return Outcome(case, case_dir, code, log.getvalue(), error)


def assert_user_error(outcome: Outcome, *parts: str) -> str:
    """Exit code 2, one `error:` line on stderr naming every part, no traceback anywhere."""
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    line = lines[0]
    assert line.startswith("error: ") and line.strip() != "error:", line
    assert outcome.returncode == 2, (outcome.returncode, line)
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


@pytest.mark.parametrize("name", [*CASES, *RUN_CASES])
def test_bad_text_or_sequence_is_one_line_exit_2(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert_user_error(outcome, *outcome.case.expect)


def skipped_run(outcome: Outcome) -> dict[str, Any]:
    assert outcome.returncode == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    (metrics_file,) = (outcome.dir / "runs").glob("*/metrics.json")
    return json.loads(metrics_file.read_text())


def assert_skips_logged(outcome: Outcome, bad_rows: dict[str, Any], source: str) -> None:
    """Each split with skipped rows has its 'SPLIT: skipped N bad rows of SOURCE' log line."""
    log = " ".join(outcome.stdout.split())
    assert any(found["skipped"] for found in bad_rows.values())
    for split, found in bad_rows.items():
        if found["skipped"]:
            rows = "row" if found["skipped"] == 1 else "rows"
            assert f"{split}: skipped {found['skipped']} bad {rows} of {source} (" in log, log


def all_examples(bad_rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["row"]: e for split in bad_rows.values() for e in split["examples"]}


def test_skip_counts_and_reports_bad_texts(outcomes: dict[str, Outcome]) -> None:
    bad_rows = skipped_run(outcomes["skip_bad_texts"])["bad_rows"]
    assert set(bad_rows) == {"train", "val", "test"}
    assert sum(split["skipped"] for split in bad_rows.values()) == 4
    assert sum(split["rows"] for split in bad_rows.values()) == 60
    examples = all_examples(bad_rows)
    assert set(examples) == {f"bad.csv, line {n}" for n in (7, 12, 20, 30)}
    assert examples["bad.csv, line 30"]["reason"] == "invalid UTF-8"
    assert examples["bad.csv, line 20"]["column"] == "review"  # stop words only
    assert all(examples[f"bad.csv, line {n}"]["column"] == "review" for n in (7, 12))
    assert_skips_logged(outcomes["skip_bad_texts"], bad_rows, "bad.csv")


def test_skip_counts_and_reports_bad_sequences(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["skip_bad_sequences"]
    bad_rows = skipped_run(outcome)["bad_rows"]
    assert sum(split["skipped"] for split in bad_rows.values()) == 3
    examples = all_examples(bad_rows)
    assert set(examples) == {f"bad.jsonl, line {n}" for n in (3, 10, 21)}
    assert all(e["column"] == "signal" for e in examples.values())
    assert "ragged" in examples["bad.jsonl, line 21"]["detail"]
    assert '"x" at index 1 is not a number' in examples["bad.jsonl, line 10"]["detail"]
    assert "not valid JSON" in examples["bad.jsonl, line 3"]["detail"]
    assert_skips_logged(outcome, bad_rows, "bad.jsonl")


def test_empty_text_errors_say_empty_and_predict_does_not_offer_skipping(
    outcomes: dict[str, Outcome],
) -> None:
    """An empty CSV cell is read as a missing value: the line says "empty text", not 'None';
    predict never skips, so its error does not point at data.on_bad_rows."""
    assert "None" not in outcomes["empty_text_csv"].stderr
    assert "on_bad_rows" not in outcomes["predict_on_an_empty_text"].stderr
