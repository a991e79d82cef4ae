"""`forgeml evaluate RUN` and `forgeml predict RUN INPUT`: parsers and bodies (forgeml.api)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from forgeml.errors import ForgeError


def add_run_parsers(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics of a saved run on labelled data")
    p.add_argument("run_dir")
    p.add_argument("--data", help="labelled file; default: the run's own held-out test split")
    p.add_argument("--output", help="write the metrics as JSON to this file")

    p = sub.add_parser("predict", help="predict with a saved run")
    p.add_argument("run_dir")
    p.add_argument("input", help="CSV/TSV/JSONL/Parquet file, an image, or a folder of images")
    p.add_argument("--output", help="CSV or JSONL file (by extension); default: JSONL on stdout")
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: run the model `forgeml export` wrote with onnxruntime (default: torch)",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from forgeml.api import evaluate
    from forgeml.run_dir import write_json
    from forgeml.training.progress import summary_table

    metrics = evaluate(args.run_dir, args.data)
    split = "test"
    Console().print(
        summary_table({split: metrics}, title=f"{args.run_dir} on {args.data or 'its test split'}")
    )
    if args.output:
        write_json(Path(args.output), metrics)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from forgeml.api import load
    from forgeml.run_dir import atomic_write

    predictor = load(args.run_dir, backend=args.backend)
    if not hasattr(predictor, "predict_file"):
        raise ForgeError(
            f"{args.run_dir} is a {type(predictor).__name__}, which does not predict rows of a "
            "file; a language model generates text: forgeml generate RUN_DIR --prompt TEXT"
        )
    rows = predictor.predict_file(args.input)
    for note in predictor.truncation_notes():  # as training logs them: cut, never silently
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        suffix = out.suffix.lower()
        if suffix not in (".csv", ".jsonl", ".json", ".ndjson"):
            raise ForgeError(
                f"--output {out}: unsupported extension '{suffix}'; use .csv or .jsonl"
            )
        text = _to_csv(rows) if suffix == ".csv" else _to_jsonl(rows)
        atomic_write(out, text)  # a crash never leaves half a predictions file
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    else:
        sys.stdout.write(_to_jsonl(rows))
    return 0


def _to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, default=str) + "\n" for row in rows)


def _to_csv(rows: list[dict]) -> str:
    """Flatten probabilities into probability_<class> columns. A list (multi-label
    prediction) is written as a JSON array, the form a multi-label target has in a CSV file."""
    flat = []
    for row in rows:
        item = {
            k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v
            for k, v in row.items()
            if k != "probabilities"
        }
        for cls, p in row.get("probabilities", {}).items():
            item[f"probability_{cls}"] = f"{p:.6f}"
        flat.append(item)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["prediction"])
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()
