"""Text and sequences end to end through the real CLI: `python -m forgeml train|validate|predict|
evaluate` in subprocesses, on CSV and JSONL files of texts, label lists and signals written here.

A subprocess pays seconds of imports (torch, torchmetrics), so the module starts its work in two
waves: the CLI trainings and validations together, while the runs whose training is not what is
under test (the waves configs, a multi-label run) train in this process; then every predict and
evaluate at once. Each test checks one result.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import forgeml
from forgeml.config import load_config
from forgeml.data.builtins import read_builtin

REPO = Path(__file__).resolve().parents[2]
WAVES_CONFIGS = {name: REPO / "configs" / f"{name}.yaml" for name in ("waves-cnn1d", "waves-gru")}
# One intra-op thread per process: several small trainings share two cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# --------------------------------------------------------------------------- data written here

POSITIVE = ["good", "great", "excellent", "wonderful", "lovely", "superb", "brilliant", "enjoyable"]
NEGATIVE = ["bad", "awful", "terrible", "horrible", "poor", "dreadful", "boring", "dull"]
FILLER = "the movie was really quite a film plot acting and story it this with very cast".split()


def review(label: str, rng: random.Random, tail: int = 12) -> str:
    """Two sentiment words among the first five tokens, then up to `tail` neutral words; some
    rows carry a comma, quotes or capitals, which the CSV writer must quote."""
    words = POSITIVE if label == "pos" else NEGATIVE
    head = [rng.choice(FILLER), rng.choice(words), rng.choice(FILLER), rng.choice(words)]
    text = " ".join(head + [rng.choice(FILLER) for _ in range(rng.randint(0, tail))])
    kind = rng.randrange(6)
    if kind == 0:
        text = text.replace(" ", ", ", 1)
    elif kind == 1:
        text = f'"{text}" she said'
    elif kind == 2:
        text = text.capitalize()
    return text


def reviews(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    labels = [("pos", "neg")[i % 2] for i in range(n)]
    rng.shuffle(labels)
    return [review(label, rng) for label in labels], labels


# Three topics in English, Chinese and Japanese. Chinese and Japanese rows have no spaces.
TOPIC_WORDS = {
    "sports": {
        "en": "goal match team score player coach".split(),
        "zh": "足球比赛",
        "ja": "サッカーの試合",
    },
    "food": {
        "en": "pizza pasta cook tasty recipe soup".split(),
        "zh": "美食面条",
        "ja": "おいしい料理",
    },
    "tech": {
        "en": "laptop code software chip robot phone".split(),
        "zh": "电脑软件",
        "ja": "コンピュータ",
    },
}
EN_FILLER = "today i read about the new thing and it was in our town".split()


def topic_text(topic: str, lang: str, rng: random.Random) -> str:
    words = TOPIC_WORDS[topic]
    if lang == "zh":
        return f"我今天看了关于{words['zh']}的新闻，{words['zh']}很有意思"
    if lang == "ja":
        return f"今日は{words['ja']}について読みました。{words['ja']}が好きです"
    tokens = [rng.choice(EN_FILLER) for _ in range(rng.randint(3, 8))]
    for _ in range(2):
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(words["en"]))
    return " ".join(tokens)


def topics(n: int, seed: int) -> list[dict[str, str]]:
    """Rows {"text", "topic"}: 60% English, 20% Chinese, 20% Japanese."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = list(TOPIC_WORDS)[i % 3]
        lang = rng.choice(["en", "en", "en", "zh", "ja"])
        rows.append({"text": topic_text(topic, lang, rng), "topic": topic, "lang": lang})
    rng.shuffle(rows)
    return rows


def tagged(n: int, seed: int) -> list[dict[str, Any]]:
    """Rows {"text", "tags"}: each text mentions zero, one or two topics; the tags list them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = sorted(rng.sample(list(TOPIC_WORDS), rng.choice([0, 1, 1, 2])))
        tokens = [rng.choice(EN_FILLER) for _ in range(rng.randint(3, 7))]
        for tag in tags:
            for _ in range(2):
                tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(TOPIC_WORDS[tag]["en"]))
        rows.append({"text": " ".join(tokens), "tags": tags})
    return rows


URLS = ["http://example.com/page", "https://www.movies.org/x?id=3", "www.reviews.net/top"]


def tokenizer_rows(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Reviews with a URL in every row and capitalised stop words, for the cleaning options."""
    rng = random.Random(seed)
    texts, labels = reviews(n, seed)
    out = []
    for text in texts:
        words = text.split()
        words.insert(rng.randrange(len(words) + 1), rng.choice(URLS))
        out.append("The " + " ".join(words))
    return out, labels


TEXT_COLUMNS = {
    "r_char": {"tokenizer": "char", "max_length": 48},
    "r_word": {"tokenizer": "word", "lowercase": False},
    "r_clean": {"tokenizer": "word", "lowercase": True, "strip_urls": True, "stopwords": "english"},
    "r_bpe": {"tokenizer": "bpe", "vocab_size": 60},
    "r_wp": {"tokenizer": "wordpiece", "vocab_size": 60},
    "r_file": {"tokenizer_file": "tokenizer.json"},
}


def write_csv(path: Path, columns: dict[str, list[Any]]) -> None:
    names = list(columns)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*(columns[n] for n in names), strict=True))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_yaml(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def build_tokenizer_file(path: Path, texts: list[str]) -> None:
    """A word-level Hugging Face tokenizer.json trained here on the (lowercased) texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>"])
    tokenizer.train_from_iterator([t.lower() for t in texts], trainer)
    tokenizer.save(str(path))


FAST = {"batch_size": 16, "precision": "fp32", "optimizer": {"lr": 0.01}}


def prepare_files(root: Path) -> dict[str, Any]:
    """Write every data set and config; returns the truths the tests compare with."""
    truths: dict[str, Any] = {}

    texts, labels = reviews(300, seed=0)
    write_csv(root / "reviews.csv", {"review": texts, "label": labels})
    texts, labels = reviews(120, seed=1)
    write_csv(root / "reviews_unlabelled.csv", {"review": texts})  # as training, no target
    truths["reviews"] = (texts, labels)
    write_yaml(
        root / "reviews.yaml",
        {
            "data": {"source": "reviews.csv", "columns": {"review": {"text": {"max_length": 12}}}},
            "model": {
                "name": "rnn",
                "cell": "lstm",
                "hidden_size": 16,
                "embedding_dim": 16,
                "bidirectional": True,
                "pooling": "attention",
            },
            "train": {**FAST, "max_epochs": 4},
        },
    )

    rows = topics(300, seed=0)
    write_jsonl(root / "topics.jsonl", [{"text": r["text"], "topic": r["topic"]} for r in rows])
    unseen = topics(90, seed=1)
    write_jsonl(root / "topics_unlabelled.jsonl", [{"text": r["text"]} for r in unseen])
    truths["topics"] = unseen
    write_yaml(
        root / "topics.yaml",
        {
            "data": {"source": "topics.jsonl", "target": "topic"},
            "model": {
                "name": "transformer",
                "d_model": 32,
                "num_heads": 2,
                "num_layers": 1,
                "dropout": 0.0,
                "pooling": "cls",
            },
            "train": {**FAST, "max_epochs": 3, "optimizer": {"lr": 0.005}},
        },
    )

    texts, labels = tokenizer_rows(300, seed=0)
    write_csv(root / "tokens.csv", {**{c: texts for c in TEXT_COLUMNS}, "label": labels})
    build_tokenizer_file(root / "tokenizer.json", texts)
    texts, labels = tokenizer_rows(60, seed=1)
    write_csv(root / "tokens_unlabelled.csv", {c: texts for c in TEXT_COLUMNS})
    truths["tokens"] = (texts, labels)
    write_yaml(
        root / "tokens.yaml",
        {
            "data": {
                "source": "tokens.csv",
                "columns": {c: {"text": options} for c, options in TEXT_COLUMNS.items()},
            },
            "model": {"name": "cnn", "channels": [16], "embedding_dim": 16, "head_hidden": []},
            "train": {**FAST, "max_epochs": 3, "batch_size": 32},
        },
    )

    write_jsonl(root / "tags.jsonl", tagged(300, seed=0))
    unseen = tagged(60, seed=1)
    write_jsonl(root / "tags_unlabelled.jsonl", [{"text": r["text"]} for r in unseen])
    truths["tags"] = [r["tags"] for r in unseen]

    waves = read_builtin("builtin:waves?n=90&seed=7")
    signals = [[round(float(v), 5) for v in s] for s in waves.columns["signal"]]
    write_jsonl(root / "waves_unlabelled.jsonl", [{"signal": s} for s in signals])
    truths["waves"] = list(waves.columns["label"])
    return truths


# --------------------------------------------------------------------------- the two waves


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
        assert "Traceback" not in self.stderr, self.stderr
        return self


def start_all(commands: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.Popen]:
    return {
        name: subprocess.Popen(
            [sys.executable, "-m", "forgeml", *args],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        for name, args in commands.items()
    }


def wait_all(
    started: dict[str, subprocess.Popen], commands: dict[str, list[str]]
) -> dict[str, Done]:
    done = {}
    for name, process in started.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done[name] = Done(commands[name], process.returncode, stdout, stderr)
    return done


@dataclass
class TextRuns:
    root: Path
    truths: dict[str, Any]
    done: dict[str, Done]
    in_process: dict[str, Any]  # name -> forgeml Run (or the exception it raised)

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def metrics(self, name: str) -> dict[str, Any]:
        return json.loads((self.run_dir(name) / "metrics.json").read_text())

    def manifest(self, name: str) -> dict[str, Any]:
        return json.loads((self.run_dir(name) / "forgeml.json").read_text())

    def features(self, name: str) -> dict[str, Any]:
        return json.loads((self.run_dir(name) / "preprocess" / "features.json").read_text())

    def trained(self, name: str) -> Any:
        run = self.in_process[name]
        if isinstance(run, BaseException):
            raise AssertionError(f"training {name} in process failed: {run!r}") from run
        return run


def train_in_process(root: Path) -> dict[str, Any]:
    """The runs whose training is not under test here: configs, and a multi-label run."""
    runs: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(root)  # data.source and tokenizer paths are relative to the current directory
    try:
        for name, path in WAVES_CONFIGS.items():
            try:
                runs[name] = forgeml.train(path, ["output.dir=runs"], quiet=True)
            except Exception as exc:  # reported by the test that needs the run
                runs[name] = exc
        config = {
            "data": {"source": "tags.jsonl", "target": "tags"},
            "model": {"name": "rnn", "cell": "gru", "hidden_size": 16, "embedding_dim": 16},
            "train": {**FAST, "max_epochs": 5, "loss": {"class_weights": "auto"}},
            "output": {"dir": "runs", "name": "tags"},
        }
        try:
            runs["tags"] = forgeml.train(config, quiet=True)
        except Exception as exc:
            runs["tags"] = exc
    finally:
        os.chdir(cwd)
    return runs


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory: pytest.TempPathFactory) -> TextRuns:
    root = tmp_path_factory.mktemp("text_cli")
    truths = prepare_files(root)
    first = {
        "train_reviews": ["train", "reviews.yaml"],
        "train_topics": ["train", "topics.yaml"],
        "train_tokens": ["train", "tokens.yaml", "--quiet"],
        **{f"validate_{name}": ["validate", str(path)] for name, path in WAVES_CONFIGS.items()},
    }
    started = start_all(first, root)
    in_process = train_in_process(root)  # while the subprocesses run
    done = wait_all(started, first)
    # The trained tokenizer state is self-contained: predicting never reads the file again.
    (root / "tokenizer.json").rename(root / "tokenizer.json.moved")
    second = {
        "predict_reviews": [
            "predict",
            "runs/reviews",
            "reviews_unlabelled.csv",
            "--output",
            "reviews_predictions.csv",
        ],
        "evaluate_reviews": ["evaluate", "runs/reviews", "--output", "reviews_evaluation.json"],
        "predict_topics": ["predict", "runs/topics", "topics_unlabelled.jsonl"],
        "predict_tokens": [
            "predict",
            "runs/tokens",
            "tokens_unlabelled.csv",
            "--output",
            "tokens_predictions.jsonl",
        ],
        "predict_tags": [
            "predict",
            "runs/tags",
            "tags_unlabelled.jsonl",
            "--output",
            "tags_predictions.jsonl",
        ],
        "predict_waves": [
            "predict",
            "runs/waves-gru",
            "waves_unlabelled.jsonl",
            "--output",
            "waves_predictions.jsonl",
        ],
    }
    done |= wait_all(start_all(second, root), second)
    return TextRuns(root, truths, done, in_process)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def accuracy(predicted: list[Any], truth: list[Any]) -> float:
    assert len(predicted) == len(truth)
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


# --------------------------------------------------------------------------- binary text, CSV


def test_binary_csv_lstm_learns_and_reports_truncation(text_runs: TextRuns) -> None:
    done = text_runs.done["train_reviews"].check()
    metrics = text_runs.metrics("reviews")
    assert metrics["test"]["accuracy"] >= 0.85
    manifest = text_runs.manifest("reviews")
    assert manifest["task"] == "binary" and manifest["model"] == "rnn"
    assert manifest["output_schema"]["classes"] == ["neg", "pos"]
    assert manifest["input_schema"] == [
        {"name": "review", "type": "text", "required": True, "max_length": 12, "tokenizer": "word"}
    ]
    # Rows of up to 16 words (and punctuation) are cut to 12 tokens: counted per split, logged.
    truncated = metrics["truncated"]
    assert set(truncated) == {"train", "val", "test"}
    assert all(set(split) == {"review"} for split in truncated.values())
    assert truncated["train"]["review"] > 10
    log = " ".join(done.stdout.split())
    for split, counts in truncated.items():
        assert (
            f"{split}: {counts['review']:,} rows of 'review' longer than 12 were truncated" in log
        )


def test_predict_raw_texts_as_in_the_training_file(text_runs: TextRuns) -> None:
    done = text_runs.done["predict_reviews"].check()
    assert "wrote 120 predictions" in done.stderr
    rows = read_csv_rows(text_runs.root / "reviews_predictions.csv")
    assert list(rows[0]) == ["prediction", "probability_neg", "probability_pos"]
    texts, truth = text_runs.truths["reviews"]
    predicted = [r["prediction"] for r in rows]
    assert accuracy(predicted, truth) >= 0.85  # on 120 unseen reviews
    for row in rows:
        p_neg, p_pos = float(row["probability_neg"]), float(row["probability_pos"])
        assert p_neg + p_pos == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == ("pos" if p_pos > p_neg else "neg")
    # The Python API gives the same predictions for the same records.
    in_process = forgeml.load(text_runs.run_dir("reviews")).predict([{"review": t} for t in texts])
    assert [r["prediction"] for r in in_process] == predicted
    for cli_row, api_row in zip(rows, in_process, strict=True):
        assert float(cli_row["probability_pos"]) == pytest.approx(
            api_row["probabilities"]["pos"], abs=1e-5
        )


def test_evaluate_reproduces_the_test_metrics(text_runs: TextRuns) -> None:
    done = text_runs.done["evaluate_reviews"].check()
    evaluation = json.loads((text_runs.root / "reviews_evaluation.json").read_text())
    expected = text_runs.metrics("reviews")["test"]
    assert evaluation["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert evaluation["confusion_matrix"] == expected["confusion_matrix"]
    assert evaluation["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert "accuracy" in done.stdout


# --------------------------------------------------------------------------- multiclass, JSONL


def test_multiclass_multilingual_jsonl_transformer(text_runs: TextRuns) -> None:
    done = text_runs.done["train_topics"].check()
    log = " ".join(done.stdout.split())
    assert "text text (word, max 256 tokens)" in log  # inferred, not declared
    assert text_runs.metrics("topics")["test"]["accuracy"] >= 0.85
    manifest = text_runs.manifest("topics")
    assert manifest["task"] == "multiclass" and manifest["model"] == "transformer"
    assert manifest["output_schema"]["classes"] == ["food", "sports", "tech"]
    # Chinese and Japanese characters are tokens of their own in the fitted vocabulary.
    vocab = text_runs.features("topics")["features"][0]["text"]["vocab"]
    assert {"足", "球", "料", "理", "电", "脑"} <= set(vocab)

    predicted = read_jsonl_stdout(text_runs.done["predict_topics"].check().stdout)
    unseen = text_runs.truths["topics"]
    assert accuracy([p["prediction"] for p in predicted], [r["topic"] for r in unseen]) >= 0.85
    for lang in ("zh", "ja"):
        rows = [(p, r) for p, r in zip(predicted, unseen, strict=True) if r["lang"] == lang]
        assert rows and all(p["prediction"] == r["topic"] for p, r in rows), lang
    in_process = forgeml.load(text_runs.run_dir("topics")).predict(
        [{"text": r["text"]} for r in unseen]
    )
    assert [r["prediction"] for r in in_process] == [p["prediction"] for p in predicted]


def read_jsonl_stdout(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# --------------------------------------------------------------------------- tokenizers


def text_states(text_runs: TextRuns) -> dict[str, dict[str, Any]]:
    features = text_runs.features("tokens")["features"]
    assert [f["name"] for f in features] == list(TEXT_COLUMNS)
    assert all(f["type"] == "text" and not f["inferred"] for f in features)
    return {f["name"]: f["text"] for f in features}


def test_every_tokenizer_trains_through_the_cli(text_runs: TextRuns) -> None:
    text_runs.done["train_tokens"].check()
    assert text_runs.metrics("tokens")["test"]["accuracy"] >= 0.85
    schema = {c["name"]: c for c in text_runs.manifest("tokens")["input_schema"]}
    assert {name: c["tokenizer"] for name, c in schema.items()} == {
        "r_char": "char",
        "r_word": "word",
        "r_clean": "word",
        "r_bpe": "bpe",
        "r_wp": "wordpiece",
        "r_file": "file",
    }
    states = text_states(text_runs)
    for name, options in TEXT_COLUMNS.items():
        for key, value in options.items():
            assert states[name]["config"][key] == value, (name, key)
    char_vocab = states["r_char"]["vocab"]
    assert char_vocab[:2] == ["[PAD]", "[UNK]"] and " " in char_vocab
    assert all(len(token) == 1 for token in char_vocab[2:])
    for name, model in (("r_bpe", "BPE"), ("r_wp", "WordPiece")):
        tokenizer = json.loads(states[name]["tokenizer"])  # the whole trained tokenizer
        assert tokenizer["model"]["type"] == model
        assert states[name]["vocab"] is None
        vocab = tokenizer["model"]["vocab"]
        assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
        assert len(vocab) < 100  # vocab_size 60 plus characters the trainer must keep
    spec = {s["name"]: s for s in text_runs.features("tokens")["spec"]["sequences"]}
    assert spec["r_char"]["max_length"] == 48
    assert text_runs.metrics("tokens")["truncated"]["train"]["r_char"] > 0


def test_a_given_tokenizer_file_is_saved_in_the_run(text_runs: TextRuns) -> None:
    text_runs.done["train_tokens"].check()
    state = text_states(text_runs)["r_file"]
    saved = json.loads(state["tokenizer"])
    given = json.loads((text_runs.root / "tokenizer.json.moved").read_text(encoding="utf-8"))
    assert saved["model"]["vocab"] == given["model"]["vocab"]
    spec = {s["name"]: s for s in text_runs.features("tokens")["spec"]["sequences"]}
    assert spec["r_file"]["vocab_size"] == len(given["model"]["vocab"]) + 1  # ids shift by one


def test_cleaning_options_change_what_the_model_sees(text_runs: TextRuns) -> None:
    text_runs.done["train_tokens"].check()
    states = text_states(text_runs)
    raw = set(states["r_word"]["vocab"])  # lowercase: false, URLs and stop words kept
    clean = set(states["r_clean"]["vocab"])  # lowercase, strip_urls, stopwords: english
    assert {"The", "http", "example", "com"} <= raw
    assert not {"The", "the", "http", "https", "www", "example", "com", "this", "with"} & clean
    assert not any(token != token.lower() for token in clean - {"[PAD]", "[UNK]"})
    assert "the" in states["r_clean"]["stopwords"]  # the stop-word list is saved with the run
    assert states["r_word"]["stopwords"] is None
    assert set(POSITIVE + NEGATIVE) <= clean


def test_predict_after_the_tokenizer_file_is_gone(text_runs: TextRuns) -> None:
    text_runs.done["train_tokens"].check()
    assert not (text_runs.root / "tokenizer.json").exists()
    text_runs.done["predict_tokens"].check()
    rows = read_jsonl(text_runs.root / "tokens_predictions.jsonl")
    texts, truth = text_runs.truths["tokens"]
    predicted = [r["prediction"] for r in rows]
    assert accuracy(predicted, truth) >= 0.85
    records = [{c: t for c in TEXT_COLUMNS} for t in texts]
    in_process = forgeml.load(text_runs.run_dir("tokens")).predict(records)
    assert [r["prediction"] for r in in_process] == predicted


# --------------------------------------------------------------------------- multi-label


def test_multilabel_jsonl_trains_and_predicts_label_lists(text_runs: TextRuns) -> None:
    run = text_runs.trained("tags")
    assert text_runs.manifest("tags")["task"] == "multilabel"
    assert text_runs.manifest("tags")["output_schema"]["classes"] == ["food", "sports", "tech"]
    test = text_runs.metrics("tags")["test"]
    assert test["subset_accuracy"] >= 0.7 and test["f1_micro"] >= 0.8
    assert set(test["per_label"]) == {"food", "sports", "tech"}
    assert run.metrics["test"]["f1_micro"] == test["f1_micro"]

    text_runs.done["predict_tags"].check()
    rows = read_jsonl(text_runs.root / "tags_predictions.jsonl")
    truth = text_runs.truths["tags"]
    assert len(rows) == len(truth)
    for row in rows:
        assert isinstance(row["prediction"], list)
        assert list(row["probabilities"]) == ["food", "sports", "tech"]
        assert row["prediction"] == [k for k, p in row["probabilities"].items() if p >= 0.5]
    exact = accuracy([sorted(r["prediction"]) for r in rows], truth)
    assert exact >= 0.7
    assert any(len(r["prediction"]) == 2 for r in rows) and any(not r["prediction"] for r in rows)


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("name", list(WAVES_CONFIGS))
def test_waves_config_validates_as_written(text_runs: TextRuns, name: str) -> None:
    done = text_runs.done[f"validate_{name}"].check()
    assert f"ok: {WAVES_CONFIGS[name]} is valid; task multiclass" in " ".join(done.stdout.split())
    lines = WAVES_CONFIGS[name].read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"# forgeml train configs/{name}.yaml"
    config = load_config(WAVES_CONFIGS[name])
    assert config.data.source == "builtin:waves"
    assert config.model.name == {"waves-cnn1d": "cnn", "waves-gru": "rnn"}[name]
    if name == "waves-gru":
        assert config.model.cell == "gru"


@pytest.mark.parametrize("name", list(WAVES_CONFIGS))
def test_waves_config_reaches_90_percent(text_runs: TextRuns, name: str) -> None:
    run = text_runs.trained(name)
    assert run.metrics["test"]["accuracy"] >= 0.9
    assert run.stop_reason == "max_epochs"
    assert run.config.train.max_epochs == load_config(WAVES_CONFIGS[name]).train.max_epochs
    (column,) = text_runs.manifest(name)["input_schema"]
    assert column == {
        "name": "signal",
        "type": "sequence",
        "required": True,
        "channels": 1,
        "max_length": 64,
    }


def test_predict_raw_sequences_from_a_file(text_runs: TextRuns) -> None:
    text_runs.trained("waves-gru")
    text_runs.done["predict_waves"].check()
    rows = read_jsonl(text_runs.root / "waves_predictions.jsonl")
    assert accuracy([r["prediction"] for r in rows], text_runs.truths["waves"]) >= 0.9
    assert all(set(r["probabilities"]) == {"sawtooth", "sine", "square"} for r in rows)
