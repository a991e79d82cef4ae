"""`forgeml` command line: subcommands that only call the Python API.

A user mistake (ForgeError) prints one line and exits 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

from forgeml.cli.export import add_export_parser, cmd_export
from forgeml.cli.generate import add_generate_parser, cmd_generate
from forgeml.cli.serve import add_serve_parser, cmd_serve
from forgeml.errors import ForgeError

USAGE_EXAMPLES = """examples:
  forgeml train configs/digits-cnn.yaml train.max_epochs=5
  forgeml validate configs/digits-cnn.yaml
  forgeml evaluate runs/digits-cnn --data new_labelled.csv
  forgeml predict runs/digits-cnn images/ --output predictions.csv
  forgeml train configs/gpt-char.yaml && forgeml generate runs/gpt-char --prompt "ROMEO:"
  forgeml serve runs/digits-cnn --port 8000
  forgeml export runs/digits-cnn --format onnx
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgeml",
        description="Train, evaluate and use neural networks from a YAML config.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a config; writes runs/NAME")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_epochs=5")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes: launches torchrun (DDP; gloo on CPU, NCCL on GPU)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="with --nproc: restart a failed job up to K times, resuming from its checkpoint",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue the run from its newest valid checkpoint, or from CHECKPOINT",
    )

    add_trust_pickle(p)

    p = sub.add_parser("validate", help="check a config and its data without training")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    add_trust_pickle(p)

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

    add_generate_parser(sub)
    add_serve_parser(sub)
    add_export_parser(sub)
    return parser


def add_trust_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help=(
            "model.name=pretrained: also load pickle-only weights (pytorch_model.bin), which can "
            "run code when loaded; only for checkpoints you trust (same as model.trust_pickle=true)"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting overrides at the first option: `train c.yaml --quiet a.b=1`.
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "trust_pickle", False):
        args.overrides.append("model.trust_pickle=true")  # explicit, on this command line only
    try:
        return COMMANDS[args.command](args)
    except ForgeError as exc:
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_train(args: argparse.Namespace) -> int:
    from forgeml.api import train
    from forgeml.training.loop import Interrupted

    resume = args.resume
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        args.overrides.append(resume)  # `--resume a.b=1`: an override, not a checkpoint path
        resume = True
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from forgeml.training.distributed import launch

        argv = ["train", args.config, *args.overrides]
        argv += ["--quiet"] if args.quiet else []
        argv += [] if resume is None else ["--resume"] + ([] if resume is True else [str(resume)])
        from forgeml.config import load_config

        load_config(args.config, args.overrides)  # a config mistake: one line, before any rank
        return launch(
            args.nproc, (["--debug"] if args.debug else []) + argv, max_restarts=args.max_restarts
        )
    try:
        train(args.config, args.overrides, quiet=args.quiet, resume=resume)
    except Interrupted as exc:
        # Name the actual config in the how-to-resume hint.
        raise Interrupted(str(exc).replace("CONFIG", args.config), exc.exit_code - 128) from None
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from forgeml.api import prepare
    from forgeml.config import load_config
    from forgeml.models.registry import build_model, count_parameters

    console = Console()
    cfg = load_config(args.config, args.overrides)
    if cfg.data.corpus is not None:  # a language model
        from forgeml.lm.train import validate_lm

        summary = validate_lm(cfg, log=lambda msg: console.print(msg, highlight=False))
        console.print(f"ok: {args.config} is valid; {summary}", highlight=False)
        return 0
    prepared = prepare(cfg, log=lambda msg: console.print(msg, highlight=False))
    model = build_model(cfg.model, prepared.preprocessor.spec)
    sizes = ", ".join(f"{split} {len(data):,}" for split, data in prepared.data.items())
    console.print(
        f"ok: {args.config} is valid; task {prepared.preprocessor.target.task}; rows {sizes}; "
        f"model {cfg.model.name} with {count_parameters(model):,} parameters",
        highlight=False,
    )
    return 0


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
    from forgeml.run_dir import atomic_write
    from forgeml.tasks.table.predictor import Predictor

    predictor = Predictor(args.run_dir, backend=args.backend)
    table = predictor.to_table(args.input)
    rows = predictor.predict(table)
    for note in predictor.truncation_notes():  # as training logs them: cut, never silently
        print(f"note: {note}", file=sys.stderr)
    # Keep the image path with each prediction: an image folder has no other row identity.
    images = [f.name for f in predictor.preprocessor.features if f.type == "image"]
    if images and images[0] in table.columns and isinstance(table.columns[images[0]][0], str):
        rows = [
            {images[0]: path, **row}
            for path, row in zip(table.columns[images[0]], rows, strict=True)
        ]
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


COMMANDS = {
    "train": cmd_train,
    "validate": cmd_validate,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "generate": cmd_generate,
    "serve": cmd_serve,
    "export": cmd_export,
}

if __name__ == "__main__":
    raise SystemExit(main())
