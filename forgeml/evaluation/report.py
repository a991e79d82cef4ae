"""What a run leaves for people to read: training-curve and confusion-matrix PNGs, and card.md.

Plots draw on a `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global
backend switch, no window, safe in threads and on headless machines.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from forgeml.evaluation.metrics import scalar_metrics

_SPLIT_ORDER = ("train", "val", "test")


def plot_history(rows: list[dict], path: Path, *, x_axis: str = "epoch") -> None:
    """Training curves from history.jsonl lines, as a PNG.

    x_axis "epoch": panels of loss per epoch (train and val); the other scalar metrics per epoch
    (val solid, train dashed); the learning rate per step. Several lines of one split in one
    epoch (logging every N steps) are averaged. Works without val lines.
    x_axis "step" (a language model's one long epoch): train and val loss against the step.
    """
    if x_axis == "step":
        return _plot_loss_by_step(rows, path)
    from matplotlib.ticker import MaxNLocator

    fig = _figure(8.0, 9.0)
    grid = fig.add_gridspec(3, 1, height_ratios=(3, 3, 1.4), hspace=0.45)
    ax_loss, ax_metric, ax_lr = (fig.add_subplot(grid[i]) for i in range(3))
    curves = _epoch_curves(rows)  # {(split, metric): ([epoch], [value])}

    for split in ("train", "val"):
        if (split, "loss") in curves:
            ax_loss.plot(*curves[(split, "loss")], marker=".", label=split)
    _finish(ax_loss, "loss", "epoch", "loss")

    names = sorted({name for _, name in curves} - {"loss"})
    colors = _colors()
    drawn: list[tuple] = []  # skip exact repeats (micro P/R/F1 equal accuracy for single-label)
    for name in names:
        for split, style in (("val", "-"), ("train", "--")):
            curve = curves.get((split, name))
            if curve is None or (split, curve) in drawn:
                continue
            color = colors[names.index(name) % len(colors)]
            ax_metric.plot(*curve, style, marker=".", color=color, label=f"{split} {name}")
            drawn.append((split, curve))
    _finish(ax_metric, "metrics", "epoch", "value")

    lr = [(row["step"], row["lr"]) for row in rows if _is_number(row.get("lr"))]
    if lr:
        steps, values = zip(*sorted(set(lr)), strict=True)
        ax_lr.plot(steps, values, color="gray")
    _finish(ax_lr, "learning rate", "step", "lr")
    for ax in (ax_loss, ax_metric, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": keep the outside legends


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> None:
    """The confusion matrix as a PNG: rows = true class, columns = predicted.

    The colour is the row-normalised share (recall along the diagonal); each cell shows its count.
    """
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    n = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(rows, 1)  # (C, C); a class without rows stays 0
    side = min(max(4.0, 0.45 * n + 2.5), 30.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(
        range(n), class_names, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center"
    )
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    if n <= 40:  # beyond that the numbers cannot be read anyway
        size = 10 if n <= 10 else 7 if n <= 20 else 5
        for i in range(n):
            for j in range(n):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(
                    j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=size
                )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_card(
    path: Path,
    *,
    name: str,
    task: str,
    config: dict,
    input_schema: list[dict],
    output_schema: dict,
    metrics: dict,
    num_params: int,
    data_summary: dict,
    stop_reason: str,
    precision: str,
    created_at: str,
    versions: dict,
) -> None:
    """Write the model card (markdown) to `path` (a directory gets `card.md` inside).

    Args:
        config: the resolved config as a dict (`Config.to_dict()`).
        input_schema: one dict per input column: {"name", "type", ...}.
        output_schema: {"name", "task", "classes"?}.
        metrics: {split: MetricSet.compute() result}; only scalars go in the table, plus the
            per-class (per-label for multilabel) table of the test split (val when there is no
            test split).
        data_summary: rows per split, e.g. {"train": 1437, "val": 180, "test": 180}.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "card.md"
    data, train = config.get("data", {}), config.get("train", {})
    model = config.get("model", {})
    optimizer = train.get("optimizer", {})
    classes = output_schema.get("classes")
    target_name = output_schema.get("name", data.get("target", "?"))
    lines = [
        f"# {name}",
        "",
        f"A {task} model (`{model.get('name', 'custom')}`, {num_params:,} parameters) "
        f"predicting `{target_name}`, trained with forgeml on {created_at}.",
        "",
        "## Data",
        "",
    ]
    for key, label in (("source", "Source"), ("val_source", "Validation"), ("test_source", "Test")):
        if data.get(key):
            lines.append(f"- {label}: `{data[key]}`")
    target = f"- Target: `{target_name}` ({task})"
    if classes:
        kind = "labels" if task == "multilabel" else "classes"
        target += f", {len(classes)} {kind}: " + ", ".join(f"`{c}`" for c in classes)
    lines += [target, "", "| split | rows |", "|---|---:|"]
    lines += [f"| {split} | {rows:,} |" for split, rows in _ordered(data_summary)]
    lines += ["", "Input columns:", "", "| column | type | details |", "|---|---|---|"]
    for column in input_schema:
        details = ", ".join(
            f"{k}={_text(v)}" for k, v in column.items() if k not in ("name", "type")
        )
        lines.append(
            f"| {_cell(column.get('name'))} | {column.get('type', '')} | {_cell(details)} |"
        )

    lines += ["", "## Model", "", "```yaml", yaml.safe_dump(model, sort_keys=False).rstrip(), "```"]
    lines += ["", f"Parameters: {num_params:,}", "", "## Training", "", "| setting | value |"]
    lines.append("|---|---|")
    settings = {
        "optimizer": optimizer.get("name"),
        "learning rate": optimizer.get("lr"),
        "weight decay": optimizer.get("weight_decay"),
        "scheduler": train.get("scheduler", {}).get("name"),
        "batch size": train.get("batch_size"),
        "max epochs": train.get("max_epochs"),
        "max steps": train.get("max_steps"),
        "precision": precision,
        "stopped because": stop_reason,
        "seed": config.get("seed"),
    }
    lines += [f"| {key} | {_cell(_text(v))} |" for key, v in settings.items() if v is not None]

    lines += ["", "## Metrics", ""]
    lines += _metrics_table(metrics) or ["No metrics were recorded."]
    per_class_split = next((s for s in ("test", "val") if "per_class" in metrics.get(s, {})), None)
    if per_class_split:
        lines += ["", f"Per class ({per_class_split} split):", ""]
        lines += ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
        for cls, m in metrics[per_class_split]["per_class"].items():
            scores = " | ".join(_fmt(m[k]) for k in ("precision", "recall", "f1"))
            lines.append(f"| {_cell(cls)} | {scores} | {m['support']} |")
    per_label_split = next((s for s in ("test", "val") if "per_label" in metrics.get(s, {})), None)
    if per_label_split:
        # Multilabel: support = rows where the label is true; AUCs are "–" for a label with one
        # class in the targets (undefined, left out of the macro averages).
        lines += ["", f"Per label ({per_label_split} split):", ""]
        lines += [
            "| label | precision | recall | f1 | support | roc_auc | pr_auc |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, m in metrics[per_label_split]["per_label"].items():
            scores = " | ".join(_fmt(m[k]) for k in ("precision", "recall", "f1"))
            aucs = " | ".join(
                _fmt(m[k]) if _is_number(m.get(k)) else "–" for k in ("roc_auc", "pr_auc")
            )
            lines.append(f"| {_cell(label)} | {scores} | {m['support']} | {aucs} |")

    lines += [
        "",
        "## How to use",
        "",
        "`RUN_DIR` is the directory holding this card.",
        "",
        "```bash",
        "forgeml predict RUN_DIR data.csv --output preds.csv",
        "forgeml evaluate RUN_DIR --data FILE   # metrics on other labelled data",
        "```",
        "",
        "```python",
        "import forgeml",
        "",
        'predictor = forgeml.load("RUN_DIR")',
        "predictions = predictor.predict(records)  # records: one {column: value} dict per row",
        "```",
        "",
        "## Versions",
        "",
        "| package | version |",
        "|---|---|",
    ]
    lines += [f"| {pkg} | {_cell(version)} |" for pkg, version in versions.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- helpers


def _plot_loss_by_step(rows: list[dict], path: Path) -> None:
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for split, style in (("train", "--"), ("val", "-")):
        points = [(r["step"], r["metrics"]["loss"]) for r in rows if r["split"] == split]
        if points:
            ax.plot(*zip(*points, strict=True), style, marker=".", label=f"{split} loss")
    _finish(ax, "loss", "step", "cross-entropy (nats / token)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _figure(width: float, height: float) -> Any:
    # Imported here: matplotlib costs ~0.4 s to import, and predicting or serving never plots.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: savefig renders with Agg
    return fig


def _colors() -> list[str]:
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"].by_key()["color"]


def _finish(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes)


def _epoch_curves(rows: list[dict]) -> dict[tuple[str, str], tuple[list, list]]:
    """{(split, metric): (epochs, values)}, averaging the lines of one split within an epoch."""
    sums: dict[tuple[str, str], dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for name, value in scalar_metrics(row.get("metrics") or {}).items():
            sums[(row.get("split", "train"), name)][row.get("epoch", 0)].append(value)
    return {
        key: (sorted(by_epoch), [sum(v) / len(v) for _, v in sorted(by_epoch.items())])
        for key, by_epoch in sums.items()
    }


def _metrics_table(metrics: dict) -> list[str]:
    splits = [split for split, _ in _ordered(metrics)]
    scalars = {split: scalar_metrics(metrics[split] or {}) for split in splits}
    names = list(dict.fromkeys(name for split in splits for name in scalars[split]))
    if not names:
        return []
    lines = ["| metric | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for name in names:
        cells = [_fmt(scalars[split][name]) if name in scalars[split] else "–" for split in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _ordered(by_split: dict) -> list[tuple[str, Any]]:
    """train, val, test first, then any other split in its given order."""
    rank = {split: i for i, split in enumerate(_SPLIT_ORDER)}
    return sorted(by_split.items(), key=lambda item: rank.get(item[0], len(rank)))


def _fmt(value: float) -> str:
    """A metric: 4 decimals, or 4 significant digits when that would print a tiny error as 0."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.4g}"


def _text(value: Any) -> str:
    """A setting or schema value: as short as exact (lr 3e-05, not 0.0000)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
