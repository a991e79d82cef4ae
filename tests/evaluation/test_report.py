"""Plots are real PNGs with data drawn in every panel; the model card holds the facts a reader
needs."""

import math
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from forgeml.evaluation.report import plot_confusion, plot_history, write_card

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A drawn curve of a few points, or a heatmap, covers hundreds to thousands of pixels of a panel
# at 100 dpi; grid lines, ticks and a "nothing logged" note are not data and do not count.
MIN_DATA_PIXELS = 100


def assert_png(path, min_side=200):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert min_side <= width <= 4000 and min_side <= height <= 4000, image.size


@pytest.fixture
def saved(monkeypatch) -> list[Figure]:
    """Every matplotlib figure saved during the test, as it was saved."""
    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def panels(fig: Figure) -> dict[str, object]:
    """The figure's axes by title (a colorbar's axes has none)."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def data_pixels(fig: Figure, ax) -> int:
    """Pixels inside `ax` that change when its data (lines, images, collections) is hidden."""

    if not isinstance(fig.canvas, FigureCanvasAgg):  # pyplot's, once closed, or a bare Figure
        FigureCanvasAgg(fig)

    def render() -> np.ndarray:
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        box = ax.get_window_extent()  # display pixels, origin at the bottom left
        top, bottom = rgba.shape[0] - math.ceil(box.y1), rgba.shape[0] - int(box.y0)
        return rgba[max(top, 0) : bottom, int(box.x0) : math.ceil(box.x1)].copy()

    data = [a for a in (*ax.lines, *ax.images, *ax.collections) if a.get_visible()]
    shown = render()
    for artist in data:
        artist.set_visible(False)
    try:
        hidden = render()
    finally:
        for artist in data:
            artist.set_visible(True)
    return int((shown != hidden).any(axis=-1).sum())


def assert_drawn(fig: Figure, ax, name: str) -> None:
    """`ax` holds data (a line with finite points, or an image) that shows in the picture."""
    points = [np.isfinite(np.asarray(line.get_ydata(), dtype=float)).sum() for line in ax.lines]
    images = [np.isfinite(np.asarray(image.get_array(), dtype=float)).sum() for image in ax.images]
    assert sum(points) + sum(images) > 0, f"panel {name!r} has no data"
    pixels = data_pixels(fig, ax)
    assert pixels >= MIN_DATA_PIXELS, f"panel {name!r} has no data drawn ({pixels} pixels)"


def assert_panels_drawn(fig: Figure, titles: list[str]) -> None:
    found = panels(fig)
    assert sorted(found) == sorted(titles), list(found)
    for title in titles:
        assert_drawn(fig, found[title], title)


def history(with_val: bool) -> list[dict]:
    rows = []
    step = 0
    for epoch in range(1, 5):
        for _ in range(2):  # two train lines per epoch: averaged into one point
            step += 10
            rows.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "split": "train",
                    "metrics": {"loss": 1.0 / epoch, "accuracy": 0.5 + 0.1 * epoch},
                    "lr": 1e-3 * (0.5 ** (epoch - 1)),
                    "throughput": 1000.0,
                }
            )
        if with_val:
            metrics = {"loss": 1.1 / epoch, "accuracy": 0.45 + 0.1 * epoch, "f1_macro": 0.4}
            metrics["roc_auc"] = None  # undefined values are skipped, not plotted
            rows.append({"step": step, "epoch": epoch, "split": "val", "metrics": metrics})
    return rows


@pytest.mark.parametrize("with_val", [True, False])
def test_plot_history_writes_png(tmp_path, with_val, saved):
    path = tmp_path / "history.png"
    plot_history(history(with_val), path)
    assert_png(path)
    [fig] = saved
    assert_panels_drawn(fig, ["loss", "metrics", "learning rate"])
    loss = {line.get_label(): line for line in panels(fig)["loss"].lines}
    assert sorted(loss) == (["train", "val"] if with_val else ["train"])
    assert list(loss["train"].get_xdata()) == [1, 2, 3, 4]  # one point per epoch
    assert list(loss["train"].get_ydata()) == pytest.approx([1.0, 1 / 2, 1 / 3, 1 / 4])
    [lr] = panels(fig)["learning rate"].lines
    assert list(lr.get_xdata()) == list(range(10, 90, 10))  # every logged step


def test_plot_history_empty_and_no_pyplot(tmp_path, saved):
    plot_history([], tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")
    # A valid PNG, but every panel is empty ("nothing logged"): the check above rejects it.
    [fig] = saved
    for title, ax in panels(fig).items():
        with pytest.raises(AssertionError, match=f"panel '{title}' has no data"):
            assert_drawn(fig, ax, title)
    # Plotting must not go through pyplot's global state (torchmetrics may have imported it, but
    # then no figure must be registered with it).
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


@pytest.mark.parametrize("num_classes", [2, 12])
def test_plot_confusion_writes_png(tmp_path, num_classes, saved):
    names = [f"class_{i}" for i in range(num_classes)]
    matrix = [[(5 if i == j else 1) for j in range(num_classes)] for i in range(num_classes)]
    matrix[0] = [0] * num_classes  # a class without rows must not divide by zero
    path = tmp_path / "confusion.png"
    plot_confusion(matrix, names, path)
    assert_png(path)
    [fig] = saved
    assert_panels_drawn(fig, ["confusion matrix"])
    shares = panels(fig)["confusion matrix"].images[0].get_array()
    assert shares[0].tolist() == [0.0] * num_classes  # the class without rows
    assert shares[1, 1] == pytest.approx(5 / (5 + num_classes - 1))  # row-normalised


def test_a_blank_panel_fails_the_check(saved):
    """What the checks above reject: axes with nothing plotted, and data hidden from view."""
    fig = Figure()
    blank, hidden = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    blank.set_title("blank")
    blank.grid(alpha=0.3)
    hidden.set_title("hidden")
    hidden.plot([1, 2, 3], [3, 1, 2], visible=False)
    with pytest.raises(AssertionError, match="panel 'blank' has no data"):
        assert_drawn(fig, blank, "blank")
    with pytest.raises(AssertionError, match=r"panel 'hidden' has no data drawn \(0 pixels\)"):
        assert_drawn(fig, hidden, "hidden")


def test_plot_history_by_step_draws_both_curves(tmp_path, saved):
    rows = [
        {"step": step, "split": split, "metrics": {"loss": 4.0 / step + (split == "val")}}
        for step in (10, 20, 30)
        for split in ("train", "val")
    ]
    plot_history(rows, tmp_path / "history.png", x_axis="step")  # a language model's curves
    assert_png(tmp_path / "history.png")
    [fig] = saved
    [ax] = fig.axes
    assert_drawn(fig, ax, "loss")
    assert sorted(line.get_label() for line in ax.lines) == ["train loss", "val loss"]


def card_args() -> dict:
    per_class = {
        "setosa": {"precision": 1.0, "recall": 0.9, "f1": 0.947368421, "support": 10},
        "versicolor": {"precision": 0.8, "recall": 1.0, "f1": 0.888888889, "support": 8},
    }
    return dict(
        name="iris-mlp",
        task="multiclass",
        config={
            "seed": 0,
            "data": {"source": "data/iris.csv", "target": "species"},
            "model": {"name": "mlp", "hidden_dims": [64, 64], "dropout": 0.1},
            "train": {
                "batch_size": 32,
                "max_epochs": 20,
                "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01},
                "scheduler": {"name": "cosine"},
            },
        },
        input_schema=[
            {"name": "sepal_length", "type": "numeric", "mean": 5.84, "std": 0.83},
            {"name": "colour|hue", "type": "category", "num_categories": 4},
        ],
        output_schema={"name": "species", "task": "multiclass", "classes": list(per_class)},
        metrics={
            "train": {"loss": 0.1, "accuracy": 0.98765432},
            "val": {"loss": 0.2, "accuracy": 0.93333333},
            "test": {
                "loss": 0.25,
                "accuracy": 0.91111111,
                "roc_auc": None,
                "per_class": per_class,
                "confusion_matrix": [[9, 1], [0, 8]],
            },
        },
        num_params=12_345,
        data_summary={"train": 120, "val": 15, "test": 15},
        stop_reason="max_epochs reached",
        precision="bf16",
        created_at="2025-01-02T03:04:05+00:00",
        versions={"forgeml": "0.1.0", "torch": "2.13.0"},
    )


def test_write_card_holds_the_key_facts(tmp_path):
    path = tmp_path / "card.md"
    write_card(path, **card_args())
    card = path.read_text(encoding="utf-8")
    assert card.startswith("# iris-mlp\n")
    for fact in (
        "multiclass",
        "12,345",
        "data/iris.csv",
        "| train | 120 |",
        "`species`",
        "sepal_length",
        "colour\\|hue",  # escaped inside the table
        "hidden_dims",
        "adamw",
        "| learning rate | 0.0003 |",  # :g, not rounded to 4 decimals
        "bf16",
        "max_epochs reached",
        "0.9877",  # train accuracy
        "0.9333",  # val accuracy
        "0.9111",  # test accuracy
        "| setosa | 1.0000 | 0.9000 | 0.9474 | 10 |",
        "versicolor",
        "forgeml predict RUN_DIR data.csv --output preds.csv",
        'forgeml.load("RUN_DIR")',
        "forgeml evaluate RUN_DIR --data FILE",
        "| torch | 2.13.0 |",
    ):
        assert fact in card, fact
    assert "confusion_matrix" not in card and "roc_auc" not in card  # non-scalars/None skipped
    accuracy_row = next(line for line in card.splitlines() if line.startswith("| accuracy |"))
    assert accuracy_row == "| accuracy | 0.9877 | 0.9333 | 0.9111 |"


def test_write_card_into_directory_without_test_split(tmp_path):
    args = card_args()
    args["metrics"] = {"train": args["metrics"]["train"]}
    args["data_summary"] = {"train": 150}
    write_card(tmp_path, **args)
    card = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert "| accuracy | 0.9877 |" in card
    assert "Per class" not in card
