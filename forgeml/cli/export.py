"""`forgeml export RUN_DIR --format onnx|torchscript [--output DIR]`: the command's parser and body.

cli.py adds the parser with `add_export_parser(sub)` and runs `cmd_export(args)`; both import
nothing heavy, so `forgeml --help` stays fast and works without the `export` extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# The same as forgeml.export.FORMATS / TOLERANCE (a test checks): importing that module here
# would import torch for every `forgeml --help`.
FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4

EXPORT_EXAMPLES = """examples:
  forgeml export runs/digits-cnn                       # ONNX in runs/digits-cnn/export/onnx/
  forgeml export runs/digits-cnn --format torchscript  # runs/digits-cnn/export/torchscript/
  forgeml export runs/digits-cnn --output deploy/digits
  forgeml predict runs/digits-cnn images/ --backend onnx
  forgeml export runs/gpt-char                         # tokens (B, T) -> logits (B, T, V)

runs of your own nn.Module export from Python (the CLI cannot build the module):
  from forgeml.export import export_run; export_run("runs/mine", module=MyNet())
"""


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `export` command to the subparsers of the `forgeml` parser."""
    p = subparsers.add_parser(
        "export",
        help="export a saved run to ONNX or TorchScript, checked against the eager model",
        description=(
            "Write the run's model as ONNX or TorchScript with its preprocessing metadata (a "
            "language model: with its tokenizer). The export is run on rows of the run's own "
            "data (a language model: windows of its corpus) and compared with the eager model; "
            f"a max abs diff above --tolerance ({TOLERANCE:g}) fails and writes nothing."
        ),
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="the run directory forgeml train wrote")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    p.add_argument(
        "--output",
        metavar="DIR",
        help="export directory (replaced if it holds an earlier export); "
        "default: RUN_DIR/export/FORMAT",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="rows to check the export on (a language model: a text file); default: the "
        "run's held-out split (a language model: the start of its corpus)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        metavar="X",
        help=f"largest max abs diff from the eager model allowed (default {TOLERANCE:g})",
    )
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from forgeml.export import export_run

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    result = export_run(
        args.run_dir,
        format=args.format,
        output=args.output,
        data=args.data,
        tolerance=args.tolerance,
        log=log,
    )
    check = result.manifest["check"]
    print(
        f"exported {args.run_dir} to {result.file} ({result.format}, {result.exporter} exporter); "
        f"max abs diff vs the eager model {result.max_abs_diff:.2e} <= {check['tolerance']:g} "
        f"on {check['data']}"
    )
    return 0
