"""`python -m forgeml.cli.demo RUN_DIR`: show a digits run's test metrics and predict held-out digits.

The held-out digits are written as PNG files and predicted through the same path as
`forgeml predict RUN_DIR FOLDER`, so the demo exercises image-file prediction end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table as RichTable

from forgeml.data.splits import held_out, read_splits
from forgeml.tasks.table.predictor import Predictor

SHADES = " .:-=+*#%@"


def ascii_digit(pixels: np.ndarray) -> list[str]:
    """(8, 8) uint8 -> 8 lines of characters, darker = more ink."""
    return ["".join(SHADES[int(v) * (len(SHADES) - 1) // 255] * 2 for v in row) for row in pixels]


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0] if argv else "runs/digits-cnn")
    count = int(argv[1]) if len(argv) > 1 else 6
    console = Console()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    console.print(
        f"[bold]test accuracy {test['accuracy']:.4f}[/bold]  macro-F1 {test['f1_macro']:.4f}  "
        f"loss {test['loss']:.4f}  ({metrics['epochs']} epochs, stopped by {metrics['stop_reason']}, "
        f"precision {metrics['precision']})"
    )
    predictor = Predictor(run_dir)
    tables = read_splits(predictor.config.data, predictor.config.seed)
    unseen = tables[held_out(tables)]
    folder = run_dir.parent / f"{run_dir.name}-demo-digits"
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for i in range(count):
        pixels, label = unseen.columns["image"][i], unseen.columns["label"][i]
        path = folder / f"heldout-{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        truths[path.resolve()] = (int(label), pixels)
    predictions = predictor.predict(folder)
    table = RichTable(
        show_lines=True, title=f"held-out digits from {folder} (forgeml predict {run_dir} {folder})"
    )
    for column in ("image", "true", "predicted", "confidence"):
        table.add_column(column)
    for path, row in zip(sorted(truths), predictions, strict=True):
        label, pixels = truths[path]
        confidence = row["probabilities"][str(row["prediction"])]
        table.add_row(
            "\n".join(ascii_digit(pixels)), str(label), str(row["prediction"]), f"{confidence:.3f}"
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
