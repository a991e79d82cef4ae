"""`forgeml` command line: subcommands that only call the Python API.

A user mistake (ForgeError) prints one line and exits 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse

from forgeml.cli.common import new_parser, run
from forgeml.cli.export import add_export_parser, cmd_export
from forgeml.cli.generate import add_generate_parser, cmd_generate
from forgeml.cli.predict import add_run_parsers, cmd_evaluate, cmd_predict
from forgeml.cli.serve import add_serve_parser, cmd_serve
from forgeml.cli.train import add_train_parsers, cmd_train, cmd_validate

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
    description = "Train, evaluate and use neural networks from a YAML config."
    parser = new_parser("forgeml", description, USAGE_EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_train_parsers(sub)
    add_run_parsers(sub)
    add_generate_parser(sub)
    add_serve_parser(sub)
    add_export_parser(sub)
    return parser


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
    return run(COMMANDS[args.command], args)


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
