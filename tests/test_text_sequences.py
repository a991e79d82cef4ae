"""Text and sequence columns through the Python API: `forgeml.train(config)`, `forgeml.load(run)`,
`forgeml.Model`, on small generated data sets written to tmp_path.

Tasks are built so that a model only does well when it reads what is under test: a sentiment
word among neutral ones, a wave's shape, or a label that needs the text, a number and a category
together.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import forgeml
from forgeml.cli import main as cli_main
from forgeml.data.builtins import read_builtin
from forgeml.data.columns import infer_column_type
from forgeml.data.splits import read_splits as load_splits
from forgeml.data.table import Table
from forgeml.data.tensors import TensorData
from forgeml.errors import DataError

POSITIVE = ["good", "great", "excellent", "wonderful", "lovely", "superb", "brilliant", "enjoyable"]
NEGATIVE = ["bad", "awful", "terrible", "horrible", "poor", "dreadful", "boring", "dull"]
FILLER = "the movie was really quite a film plot acting and story it this with very cast".split()


# --------------------------------------------------------------------------- data


def review(label: str, rng: random.Random, tail: int = 8) -> str:
    """Two sentiment words among the first four tokens, then 0..tail neutral words."""
    words = POSITIVE if label == "pos" else NEGATIVE
    head = [rng.choice(FILLER), rng.choice(words), rng.choice(FILLER), rng.choice(words)]
    return " ".join(head + [rng.choice(FILLER) for _ in range(rng.randint(0, tail))])


def reviews(n: int, seed: int, tail: int = 8) -> list[dict[str, str]]:
    rng = random.Random(seed)
    labels = [("pos", "neg")[i % 2] for i in range(n)]
    rng.shuffle(labels)
    return [{"review": review(label, rng, tail), "label": label} for label in labels]


def mixed(n: int, seed: int) -> list[dict[str, Any]]:
    """A text, a number and a category; the label counts how many of the three are 'high':
    positive review, x > 0, color red. Any one input alone gets about half of them right."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        sentiment, high, red = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
        x = rng.uniform(0.5, 2.0) * (1 if high else -1)
        count = int(sentiment) + int(high) + int(red)
        rows.append(
            {
                "review": review("pos" if sentiment else "neg", rng),
                "x": round(x, 4),
                "color": "red" if red else "blue",
                "label": ["none", "one", "two", "three"][count],
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def train(
    tmp_path: Path,
    name: str,
    data: dict[str, Any],
    model: dict[str, Any],
    *,
    epochs: int = 4,
    lr: float = 0.01,
    batch_size: int = 16,
    **options: Any,
) -> Any:
    config = {
        "data": data,
        "model": model,
        "train": {
            "max_epochs": epochs,
            "batch_size": batch_size,
            "precision": "fp32",
            "optimizer": {"lr": lr},
            **options,
        },
        "output": {"dir": str(tmp_path / "runs"), "name": name},
    }
    return forgeml.train(config, quiet=True)


def predict_accuracy(run_dir: Path, rows: list[dict[str, Any]], target: str = "label") -> float:
    records = [{k: v for k, v in row.items() if k != target} for row in rows]
    predicted = [p["prediction"] for p in forgeml.load(run_dir).predict(records)]
    return float(np.mean([p == row[target] for p, row in zip(predicted, rows, strict=True)]))


def split_of(run: Any, split: str) -> Table:
    return load_splits(run.config.data, run.config.seed)[split]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


SMALL_RNN = {"name": "rnn", "cell": "gru", "hidden_size": 16, "embedding_dim": 16}
TEXT_CNN = {
    "name": "cnn",
    "channels": [32],
    "kernel_size": 5,
    "embedding_dim": 16,
    "head_hidden": [],
}


@pytest.fixture(scope="module")
def reviews_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("reviews") / "reviews.jsonl", reviews(300, seed=0))


UNSEEN = reviews(100, seed=1)


# --------------------------------------------------------------------------- text models


TEXT_MODELS = {
    "lstm_bidirectional_attention": {
        "name": "rnn",
        "cell": "lstm",
        "hidden_size": 16,
        "embedding_dim": 16,
        "bidirectional": True,
        "pooling": "attention",
    },
    "transformer_mean": {
        "name": "transformer",
        "d_model": 16,
        "num_heads": 2,
        "num_layers": 1,
        "dropout": 0.0,
        "pooling": "mean",
    },
}  # transformer with cls pooling and cnn on text: tests/e2e/test_text_cli.py


@pytest.mark.parametrize("name", list(TEXT_MODELS))
def test_text_models_learn_binary_sentiment(tmp_path: Path, reviews_jsonl: Path, name: str) -> None:
    run = train(tmp_path, name, {"source": str(reviews_jsonl)}, TEXT_MODELS[name])
    manifest = read_json(run.dir / "forgeml.json")
    assert manifest["task"] == "binary"
    assert manifest["input_schema"][0]["type"] == "text"  # inferred
    assert predict_accuracy(run.dir, UNSEEN) >= 0.85


TOKENIZERS = {
    "char": {"tokenizer": "char", "max_length": 64},
    "bpe": {"tokenizer": "bpe", "vocab_size": 60},
    "wordpiece": {"tokenizer": "wordpiece", "vocab_size": 60},
    "file": {"tokenizer_file": "TOKENIZER"},
}  # word, the default: every other text test here


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_each_tokenizer_learns_and_its_state_is_self_contained(
    tmp_path: Path, reviews_jsonl: Path, kind: str
) -> None:
    options = dict(TOKENIZERS[kind])
    tokenizer_file = tmp_path / "tokenizer.json"
    if kind == "file":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        texts = [r["review"] for r in reviews(300, seed=0)]
        tokenizer.train_from_iterator(
            texts, trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>"])
        )
        tokenizer.save(str(tokenizer_file))
        options["tokenizer_file"] = str(tokenizer_file)
    data = {"source": str(reviews_jsonl), "columns": {"review": {"text": options}}}
    run = train(tmp_path, kind, data, TEXT_CNN, epochs=4)
    state = read_json(run.dir / "preprocess" / "features.json")["features"][0]["text"]
    if kind == "char":
        assert state["vocab"][:2] == ["[PAD]", "[UNK]"] and state["tokenizer"] is None
    else:
        assert state["vocab"] is None and json.loads(state["tokenizer"])["model"]["vocab"]
    tokenizer_file.unlink(missing_ok=True)  # prediction needs nothing but the run
    assert predict_accuracy(run.dir, UNSEEN) >= 0.85


def test_cjk_text_columns_are_inferred_as_text() -> None:
    """Chinese and Japanese are written without spaces: a column of sentences is text all the
    same, while a column of short names stays a category."""

    def column(values: list[str]) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    chinese = [
        "这部电影非常好看，我很喜欢",
        "剧情很无聊，演员也很差",
        "今天天气很好我们去公园散步吧",
    ]
    japanese = [
        "この映画はとても面白かったです",
        "ストーリーが退屈で最悪でした",
        "今日はいい天気ですね",
    ]
    mixed_languages = ["this movie is really great", chinese[0], japanese[0]]
    cities = ["北京", "上海", "東京", "大阪"]
    assert infer_column_type(column(chinese * 5)) == "text"
    assert infer_column_type(column(japanese * 5)) == "text"
    assert infer_column_type(column(mixed_languages * 5)) == "text"
    assert infer_column_type(column(cities * 5)) == "category"


def test_chinese_and_japanese_reviews_train_without_declaring_the_type(tmp_path: Path) -> None:
    rng = random.Random(0)
    openers = [
        "今天看了这部电影，",
        "昨天和朋友一起看，",
        "この映画を見ました。",
        "週末に映画館で見た。",
    ]
    good = ["非常好看", "演员非常出色", "とても面白かった", "最高の映画でした"]
    bad = ["剧情很无聊", "演员表演很差", "つまらなかった", "最悪の映画でした"]
    closers = ["。", "，就是这样。", "と思います。", "です。"]
    rows = []
    for i in range(120):
        label = ("pos", "neg")[i % 2]
        words = good if label == "pos" else bad
        text = rng.choice(openers) + rng.choice(words) + rng.choice(closers)
        rows.append({"review": text, "label": label})
    source = write_jsonl(tmp_path / "cjk.jsonl", rows)
    run = train(tmp_path, "cjk", {"source": str(source)}, SMALL_RNN, epochs=2)
    assert read_json(run.dir / "forgeml.json")["input_schema"][0]["type"] == "text"


# --------------------------------------------------------------------------- mixed inputs


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_text_numeric_and_category_in_one_model(tmp_path: Path, family: str) -> None:
    source = write_jsonl(tmp_path / "mixed.jsonl", mixed(400, seed=0))
    model = (
        SMALL_RNN
        if family == "rnn"
        else {"name": "transformer", "d_model": 16, "num_heads": 2, "num_layers": 1, "dropout": 0.0}
    )
    run = train(
        tmp_path, family, {"source": str(source)}, {**model, "head_hidden": [16]}, epochs=10
    )
    schema = read_json(run.dir / "forgeml.json")["input_schema"]
    assert [(c["name"], c["type"]) for c in schema] == [
        ("review", "text"),
        ("x", "numeric"),
        ("color", "category"),
    ]
    assert predict_accuracy(run.dir, mixed(150, seed=1)) >= 0.85


# --------------------------------------------------------------------------- the Keras classic


KERAS_CLASSIC = {"name": "rnn", "cell": "lstm", "hidden_size": 100, "pooling": "last"}


def test_keras_classic_lstm_trains_with_bce_and_predicts_probabilities(
    tmp_path: Path, reviews_jsonl: Path
) -> None:
    run = train(tmp_path, "keras", {"source": str(reviews_jsonl)}, KERAS_CLASSIC, epochs=3)
    predictor = forgeml.load(run.dir)
    weights = predictor.model.state_dict()
    (hidden,) = [v for k, v in weights.items() if k.endswith("weight_hh_l0")]
    assert tuple(hidden.shape) == (4 * 100, 100)  # one LSTM layer of 100 units
    # One logit per row, and the loss in metrics.json is BCE with logits on it.
    test = split_of(run, "test")
    inputs, target = predictor.preprocessor.transform(test)
    logits = predictor.raw_outputs(TensorData(inputs, None))
    assert logits.shape == (test.num_rows, 1)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target.float()).item()
    assert run.metrics["test"]["loss"] == pytest.approx(bce, rel=1e-5)
    predictions = predictor.predict(test)
    for row, logit in zip(predictions, logits[:, 0].tolist(), strict=True):
        assert row["probabilities"]["pos"] == pytest.approx(torch.sigmoid(torch.tensor(logit)))
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert predict_accuracy(run.dir, UNSEEN) >= 0.85


def test_keras_like_model_on_text_records(tmp_path: Path) -> None:
    model = forgeml.Model("rnn", cell="lstm", hidden_size=100, pooling="last", embedding_dim=16)
    model.compile(optimizer="adam", lr=0.01, precision="fp32")
    model.fit(reviews(240, seed=0), epochs=3, batch_size=16, verbose=False)
    records = [{"review": r["review"]} for r in UNSEEN]
    probabilities = model.predict(records)  # (N, 2): P(neg), P(pos)
    assert probabilities.shape == (len(UNSEEN), 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    labels = np.array(["neg", "pos"])[probabilities.argmax(axis=1)]
    assert np.mean(labels == np.array([r["label"] for r in UNSEEN])) >= 0.85
    saved = model.save(tmp_path / "keras-run")
    loaded = forgeml.load(saved).predict(records)
    assert [r["prediction"] for r in loaded] == labels.tolist()


# --------------------------------------------------------------------------- truncation


def test_text_truncation_is_counted_per_split_and_training_still_works(
    tmp_path: Path,
) -> None:
    source = write_jsonl(tmp_path / "long.jsonl", reviews(300, seed=2, tail=12))
    data = {"source": str(source), "columns": {"review": {"text": {"max_length": 8}}}}
    run = train(tmp_path, "long", data, SMALL_RNN, epochs=5)
    truncated = read_json(run.dir / "metrics.json")["truncated"]
    splits = load_splits(run.config.data, run.config.seed)
    expected = {
        split: sum(len(text.split()) > 8 for text in table.columns["review"])
        for split, table in splits.items()
    }
    assert {split: counts["review"] for split, counts in truncated.items()} == expected
    assert expected["train"] > 50
    assert predict_accuracy(run.dir, reviews(100, seed=3, tail=12)) >= 0.85


def test_predict_counts_and_reports_truncated_texts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", reviews(200, seed=2, tail=12))
    data = {"source": str(source), "columns": {"review": {"text": {"max_length": 8}}}}
    run = train(tmp_path, "long", data, SMALL_RNN, epochs=1)
    rows = [{"review": r["review"]} for r in reviews(50, seed=3, tail=12)]
    long = sum(len(r["review"].split()) > 8 for r in rows)
    assert 0 < long < len(rows)
    predictor = forgeml.load(run.dir)
    assert predictor.last_truncated == {}
    predictor.predict(rows)
    assert predictor.last_truncated == {"review": long}
    note = f"{long} of 50 texts in column 'review' were longer than max_length 8 and were cut"
    assert predictor.truncation_notes() == [note]
    predictor.predict([{"review": "a good film"}])  # each call counts its own rows
    assert predictor.last_truncated == {} and predictor.truncation_notes() == []
    predictor.predict([{"review": "the good movie was great and really quite a film"}])
    assert predictor.truncation_notes() == [
        "1 of 1 texts in column 'review' was longer than max_length 8 and was cut"
    ]

    # The CLI prints the note on stderr, once, and the predictions on stdout as before.
    new = write_jsonl(tmp_path / "new.jsonl", rows)
    capsys.readouterr()
    assert cli_main(["predict", str(run.dir), str(new)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 50 and "note" not in out
    assert err.splitlines() == [f"note: {note}"]
    short = write_jsonl(tmp_path / "short.jsonl", [{"review": "a good film"}])
    assert cli_main(["predict", str(run.dir), str(short)]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- multi-label


TOPICS = {
    "food": "pizza pasta cook tasty recipe soup".split(),
    "sports": "goal match team score player coach".split(),
    "tech": "laptop code software chip robot phone".split(),
}
NEUTRAL = "today i read about the new thing and it was in our town".split()


def tagged(n: int, seed: int, weights: tuple[int, ...] = (1, 2, 2, 1)) -> list[dict[str, Any]]:
    """Texts mentioning 0..3 topics; `tags` lists them (often none, so labels are imbalanced)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.choices(range(len(weights)), weights=weights)[0]
        tags = sorted(rng.sample(list(TOPICS), k))
        tokens = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 7))]
        for tag in tags:
            for _ in range(2):
                tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(TOPICS[tag]))
        rows.append({"text": " ".join(tokens), "tags": tags})
    return rows


def as_csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"text": r["text"], "tags": json.dumps(r["tags"])} for r in rows]


def test_multilabel_csv_of_json_arrays_with_class_weights(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "tags.csv", as_csv_rows(tagged(300, seed=0)))
    data = {"source": str(source), "target": "tags"}
    run = train(tmp_path, "tags", data, SMALL_RNN, epochs=6, loss={"class_weights": "auto"})
    assert read_json(run.dir / "forgeml.json")["task"] == "multilabel"
    test = read_json(run.dir / "metrics.json")["test"]
    assert test["f1_micro"] >= 0.8 and test["subset_accuracy"] >= 0.6
    assert set(test["per_label"]) == set(TOPICS)

    unseen = tagged(60, seed=1)
    predicted = forgeml.load(run.dir).predict([{"text": r["text"]} for r in unseen])
    for row in predicted:
        assert list(row["probabilities"]) == sorted(TOPICS)
        assert row["prediction"] == [k for k, p in row["probabilities"].items() if p >= 0.5]
    exact = np.mean([p["prediction"] == r["tags"] for p, r in zip(predicted, unseen, strict=True)])
    assert exact >= 0.6


def test_multilabel_with_on_bad_rows_skip(tmp_path: Path) -> None:
    """Skipping bad rows must not take every label list for an unknown class."""
    rows = as_csv_rows(tagged(200, seed=0))
    rows[10]["text"] = "   "  # the one bad row
    source = write_csv(tmp_path / "tags.csv", rows)
    data = {"source": str(source), "target": "tags", "on_bad_rows": "skip"}
    run = train(tmp_path, "tags-skip", data, SMALL_RNN, epochs=2)
    bad_rows = read_json(run.dir / "metrics.json")["bad_rows"]
    assert sum(split["skipped"] for split in bad_rows.values()) == 1
    (example,) = [e for split in bad_rows.values() for e in split["examples"]]
    assert example["row"].endswith("tags.csv, line 12") and example["column"] == "text"


IMBALANCED = {
    "binary": ["pos"] + ["neg"] * 4,
    "multiclass": ["pos"] + ["neg"] * 3 + ["mixed"] * 6,
}


def imbalanced(task: str, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = IMBALANCED[task][i % len(IMBALANCED[task])]
        if label == "mixed":
            text = f"{review('pos', rng, 2)} but {review('neg', rng, 2)}"
        else:
            text = review(label, rng)
        rows.append({"review": text, "label": label})
    return rows


@pytest.fixture(scope="module")
def weighted_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run per task with `train.loss.class_weights: auto` on imbalanced classes or labels."""
    root = tmp_path_factory.mktemp("weighted")
    runs = {}
    for task in ("binary", "multiclass", "multilabel"):
        if task == "multilabel":
            rows: list[dict[str, Any]] = tagged(300, seed=0, weights=(6, 3, 1))
            data = {"source": str(write_jsonl(root / f"{task}.jsonl", rows)), "target": "tags"}
        else:
            rows = imbalanced(task, 300, seed=0)
            data = {"source": str(write_jsonl(root / f"{task}.jsonl", rows))}
        runs[task] = train(root, task, data, SMALL_RNN, epochs=6, loss={"class_weights": "auto"})
    return runs


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_class_weights_auto_weigh_the_loss(weighted_runs: dict[str, Any], task: str) -> None:
    run = weighted_runs[task]
    predictor = forgeml.load(run.dir)
    assert predictor.task == task
    inputs, target = predictor.preprocessor.transform(split_of(run, "test"))
    outputs = predictor.raw_outputs(TensorData(inputs, None))
    if task == "binary":
        plain = F.binary_cross_entropy_with_logits(outputs[:, 0], target.float())
    elif task == "multiclass":
        plain = F.cross_entropy(outputs, target)
    else:
        plain = F.binary_cross_entropy_with_logits(outputs, target)
    # metrics.json's loss is the weighted one: not the plain loss of the same outputs.
    assert run.metrics["test"]["loss"] != pytest.approx(plain.item(), rel=1e-3)
    recall = run.metrics["test"]["per_label" if task == "multilabel" else "per_class"]
    assert min(r["recall"] for r in recall.values() if r["support"]) > 0.5


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_evaluate_reproduces_the_loss_of_a_class_weighted_run(
    weighted_runs: dict[str, Any], task: str
) -> None:
    """`forgeml evaluate` (Predictor.evaluate) on the run's own test split gives metrics.json."""
    run = weighted_runs[task]
    evaluation = forgeml.load(run.dir).evaluate(split_of(run, "test"))
    assert evaluation["loss"] == pytest.approx(run.metrics["test"]["loss"], rel=1e-5)
    assert evaluation["f1_macro"] == pytest.approx(run.metrics["test"]["f1_macro"], abs=1e-12)


# --------------------------------------------------------------------------- sequences


def waves_rows(n: int, seed: int, steps: int | None = None) -> list[dict[str, Any]]:
    table = read_builtin(f"builtin:waves?n={n}&seed={seed}")
    return [
        {"signal": [round(float(v), 5) for v in signal[:steps]], "label": label}
        for signal, label in zip(table.columns["signal"], table.columns["label"], strict=True)
    ]


SEQ_CNN = {"name": "cnn", "channels": [16, 32], "kernel_size": 5, "head_hidden": []}


def test_waves_transformer_learns(tmp_path: Path) -> None:
    model = {
        "name": "transformer",
        "d_model": 16,
        "num_heads": 2,
        "num_layers": 2,
        "dropout": 0.0,
        "positions": "sinusoidal",
    }
    run = train(
        tmp_path,
        "waves",
        {"source": "builtin:waves?n=600"},
        model,
        epochs=8,
        lr=0.005,
        batch_size=32,
    )
    # Chance is 1/3. Measured with seeds 0 (this run), 1, 2, 3: 0.683, 0.717, 0.667, 0.717 on
    # the 60 test signals and 0.697, 0.597, 0.663, 0.687 on 300 unseen ones; 0.55 is over 20
    # points above chance and under every measured value.
    assert run.metrics["test"]["accuracy"] >= 0.55
    assert predict_accuracy(run.dir, waves_rows(300, seed=7)) >= 0.55
    assert read_json(run.dir / "forgeml.json")["input_schema"][0]["type"] == "sequence"


def test_json_arrays_in_csv_and_lists_in_jsonl_are_the_same_data(tmp_path: Path) -> None:
    rows = waves_rows(300, seed=1)
    csv_rows = [{"signal": json.dumps(r["signal"]), "label": r["label"]} for r in rows]
    sources = {
        "csv": write_csv(tmp_path / "waves.csv", csv_rows),
        "jsonl": write_jsonl(tmp_path / "waves.jsonl", rows),
    }
    runs = {
        kind: train(tmp_path, kind, {"source": str(path)}, SEQ_CNN, batch_size=32, epochs=5)
        for kind, path in sources.items()
    }
    features = {k: read_json(r.dir / "preprocess" / "features.json") for k, r in runs.items()}
    assert features["csv"]["features"] == features["jsonl"]["features"]
    assert features["csv"]["features"][0]["type"] == "sequence"  # inferred from either form
    assert runs["csv"].metrics["test"] == runs["jsonl"].metrics["test"]
    unseen = waves_rows(90, seed=2)
    assert predict_accuracy(runs["jsonl"].dir, unseen) >= 0.9
    from_strings = [{"signal": json.dumps(r["signal"])} for r in unseen]
    from_lists = [{"signal": r["signal"]} for r in unseen]
    predictor = forgeml.load(runs["csv"].dir)
    assert predictor.predict(from_strings) == predictor.predict(from_lists)


def test_a_run_of_numeric_columns_becomes_one_sequence(tmp_path: Path) -> None:
    def flat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, row in enumerate(rows):
            out.append({"id": i, **{f"x{j}": v for j, v in enumerate(row["signal"])}})
            out[-1]["label"] = row["label"]
        return out

    source = write_csv(tmp_path / "flat.csv", flat(waves_rows(300, seed=1, steps=32)))
    data = {"source": str(source), "sequences": {"signal": "x*"}, "exclude": ["id"]}
    run = train(tmp_path, "flat", data, SEQ_CNN, batch_size=32, epochs=5)
    (column,) = read_json(run.dir / "forgeml.json")["input_schema"]
    assert column["name"] == "signal" and column["type"] == "sequence"
    assert column["channels"] == 1
    assert column["columns"] == [f"x{j}" for j in range(32)]  # in column order, not x0, x1, x10
    unseen = flat(waves_rows(90, seed=2, steps=32))
    assert predict_accuracy(run.dir, unseen) >= 0.85
    missing = [{k: v for k, v in row.items() if k != "x5"} for row in unseen[:3]]
    with pytest.raises(DataError, match="'x5'"):
        forgeml.load(run.dir).predict(missing)


def test_multichannel_fixed_length_sequences_and_channel_statistics(tmp_path: Path) -> None:
    def two_channels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"signal": [[v, round(10 * v + 100, 4)] for v in r["signal"]], "label": r["label"]}
            for r in rows
        ]

    source = write_jsonl(tmp_path / "two.jsonl", two_channels(waves_rows(300, seed=1, steps=32)))
    data = {"source": str(source), "columns": {"signal": {"sequence": {"length": 32}}}}
    run = train(tmp_path, "two", data, SEQ_CNN, batch_size=32, epochs=5)
    (feature,) = read_json(run.dir / "preprocess" / "features.json")["features"]
    assert feature["sequence"]["channels"] == 2
    assert feature["sequence"]["config"]["length"] == 32 and feature["max_length"] == 32
    # Per-channel statistics of the train split, saved with the run.
    steps = np.array([s for s in split_of(run, "train").columns["signal"]], dtype=np.float64)
    assert steps.shape[1:] == (32, 2)
    scaler = feature["sequence"]["scaler"]
    assert scaler["mean"] == pytest.approx(steps.reshape(-1, 2).mean(axis=0).tolist(), rel=1e-4)
    assert scaler["std"] == pytest.approx(steps.reshape(-1, 2).std(axis=0).tolist(), rel=1e-4)
    assert scaler["mean"][1] == pytest.approx(10 * scaler["mean"][0] + 100, rel=1e-4)
    assert predict_accuracy(run.dir, two_channels(waves_rows(90, seed=2, steps=32))) >= 0.85
    short = [{"signal": [[0.0, 100.0]] * 31}]
    with pytest.raises(DataError, match="ragged: 31 steps, the declared length is 32"):
        forgeml.load(run.dir).predict(short)


def test_long_sequences_are_truncated_and_counted(tmp_path: Path) -> None:
    data = {
        "source": "builtin:waves?n=300",
        "columns": {"signal": {"sequence": {"max_length": 40}}},
    }
    run = train(tmp_path, "cut", data, SEQ_CNN, batch_size=32, epochs=4)
    truncated = read_json(run.dir / "metrics.json")["truncated"]
    splits = load_splits(run.config.data, run.config.seed)
    expected = {
        split: sum(len(s) > 40 for s in table.columns["signal"]) for split, table in splits.items()
    }
    assert {split: counts["signal"] for split, counts in truncated.items()} == expected
    assert expected["train"] > 50
    assert run.metrics["test"]["accuracy"] >= 0.8
    # Predicting counts the signals it cuts too.
    unseen = waves_rows(30, seed=2)
    long = sum(len(r["signal"]) > 40 for r in unseen)
    predictor = forgeml.load(run.dir)
    predictor.predict([{"signal": r["signal"]} for r in unseen])
    assert predictor.last_truncated == {"signal": long} and long > 5
    assert predictor.truncation_notes() == [
        f"{long} of 30 sequences in column 'signal' were longer than max_length 40 and were cut"
    ]
