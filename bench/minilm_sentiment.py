"""Sentiment with a pretrained MiniLM: accuracy and macro-F1 of configs/minilm-sentiment.yaml.

The split is bench/sentiment.py's, so the numbers sit next to its LSTM, Transformer and TF-IDF
rows: per seed, one stratified 80/20 split of all 3,000 sentences of ../shared/data/sentiment
(Amazon phones, IMDB, Yelp; strata: source x label), written as TSV files to a temporary folder.
The config trains on the 80% (`data.source`), its `data.split` carving a 10% validation set out of
it (so 2,160 training sentences) for early stopping on val_loss, and is scored on the 20%
(`data.test_source`, the run's metrics.json "test"). Time: wall clock of `forgeml.train`
(loading the checkpoint, training, per-epoch validation, final evaluation, plots).

`--lora` adds configs/finetune-lora.yaml (rank-8 adapters, merged on save) on the same splits.
Results go to stdout as a Markdown section (for bench/RESULTS.md); `--output FILE` also writes it.

    .venv/bin/python bench/minilm_sentiment.py [--seeds 0,1,2] [--lora] [--epochs N] [--output F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local; nothing may download

import forgeml  # noqa: E402
from forgeml.data.sources import read_table  # noqa: E402

DATA = Path("../shared/data/sentiment")
FILES = ("amazon_cells", "imdb", "yelp")
TEXT, TARGET = "reviews", "sentiment"
CONFIGS = {
    "MiniLM-L6 fine-tuned (configs/minilm-sentiment.yaml)": "configs/minilm-sentiment.yaml",
}
LORA = {"MiniLM-L6 + LoRA r=8, merged (configs/finetune-lora.yaml)": "configs/finetune-lora.yaml"}


def load_sentences() -> tuple[list[str], np.ndarray, np.ndarray]:
    """All 3,000 sentences, their 0/1 labels and source names (as bench/sentiment.py)."""
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


def run(config: str, seed: int, folder: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    result = forgeml.train(
        config,
        [
            f"seed={seed}",
            f"data.source={folder / 'train.tsv'}",
            f"data.test_source={folder / 'test.tsv'}",
            "data.delimiter=null",  # .tsv: tab
            f"output.dir={folder / 'runs'}",
            "output.overwrite=true",
            *extra,
        ],
        quiet=True,
    )
    seconds = time.perf_counter() - started
    saved = json.loads((result.dir / "metrics.json").read_text())  # with epochs, precision
    test = saved["test"]
    return {
        "accuracy": test["accuracy"],
        "f1_macro": test["f1_macro"],
        "seconds": seconds,
        "epochs": saved["epochs"],
        "precision": saved["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lora", action="store_true", help="add configs/finetune-lora.yaml")
    parser.add_argument("--epochs", type=int, help="override train.max_epochs")
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [f"train.max_epochs={args.epochs}"] if args.epochs else []
    torch.set_num_threads(2)
    from sklearn.model_selection import train_test_split

    configs = {**CONFIGS, **(LORA if args.lora else {})}
    texts, labels, files = load_sentences()
    print(f"{len(texts):,} sentences, {int(labels.sum()):,} positive; seeds {seeds}", flush=True)
    results: dict[str, dict[int, dict]] = {name: {} for name in configs}
    with tempfile.TemporaryDirectory(prefix="forgeml-minilm-") as tmp:
        for seed in seeds:
            folder = Path(tmp) / f"seed{seed}"
            folder.mkdir()
            strata = np.char.add(files.astype(str), labels.astype(str))
            train, test = train_test_split(
                np.arange(len(labels)), test_size=0.2, stratify=strata, random_state=seed
            )
            write_tsv(folder / "train.tsv", texts, labels, train)
            write_tsv(folder / "test.tsv", texts, labels, test)
            for name, config in configs.items():
                row = results[name][seed] = run(config, seed, folder, extra)
                print(
                    f"seed {seed} {name}: accuracy {row['accuracy']:.4f} macro-F1 "
                    f"{row['f1_macro']:.4f}, {row['epochs']} epochs, {row['seconds']:.0f} s "
                    f"({row['precision']})",
                    flush=True,
                )
    report = markdown(results, seeds, args)
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")


def markdown(results: dict[str, dict[int, dict]], seeds: list[int], args) -> str:
    head = "| model | " + " | ".join(f"seed {s} acc / F1" for s in seeds)
    lines = [
        "## MiniLM on ../shared/data/sentiment",
        "",
        f"`.venv/bin/python bench/minilm_sentiment.py --seeds {args.seeds}"
        + (" --lora" if args.lora else "")
        + (f" --epochs {args.epochs}" if args.epochs else "")
        + f"`, {datetime.now(UTC):%Y-%m-%d}, {platform.machine()} "
        f"{os.cpu_count()} cores, torch {torch.__version__}, 2 threads.",
        "",
        "Split as bench/sentiment.py: per seed a stratified 80/20 split of the 3,000 sentences "
        "(strata: source x label); 10% of the 80% is the validation set for early stopping; "
        "test = the 20% (600 sentences).",
        "",
        head + " | median acc | median macro-F1 | median time |",
        "|---|" + "---|" * (len(seeds) + 3),
    ]
    for name, by_seed in results.items():
        rows = [by_seed[s] for s in seeds]
        cells = " | ".join(f"{r['accuracy']:.4f} / {r['f1_macro']:.4f}" for r in rows)
        lines.append(
            f"| {name} | {cells} | {statistics.median(r['accuracy'] for r in rows):.4f} | "
            f"{statistics.median(r['f1_macro'] for r in rows):.4f} | "
            f"{statistics.median(r['seconds'] for r in rows):.0f} s |"
        )
    epochs = ", ".join(f"{r['epochs']}" for by_seed in results.values() for r in by_seed.values())
    precision = {r["precision"] for by_seed in results.values() for r in by_seed.values()}
    lines += [
        "",
        f"Epochs run (early stopping, patience 1): {epochs}; precision {', '.join(precision)}. "
        "Times are wall clock on a shared machine: compare within this table only.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
