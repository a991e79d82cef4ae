"""What the user sees while training: a live rich bar on a terminal, plain log lines otherwise.

Kept out of the loop so the loop stays about training. Nothing here touches tensors: the loop
hands over Python floats only at logging points, so progress never adds a host sync per step.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


HEADLINE_EVAL = ("loss", "perplexity", "accuracy", "f1_macro", "rmse")


class TrainingProgress:
    """Live progress for one fit: epochs x steps, loss, samples/s and ETA."""

    def __init__(
        self,
        console: Console,
        *,
        max_epochs: int,
        batches_per_epoch: int,
        quiet: bool = False,
        total: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        self.console = console
        # Runs that stop by step count inside the first epoch (language models: one "epoch" is
        # every block start) count steps in the plain log line, not batches of an epoch.
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.batches_per_epoch = batches_per_epoch
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self._bar: Progress | None = None
        self._task = None
        self._started = time.perf_counter()
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[max_epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[metric]}"),
                TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train",
                total=total or max_epochs * batches_per_epoch,
                epoch=1,
                max_epochs=max_epochs,
                loss="-",
                metric="",
                speed="-",
            )

    def advance(self, batches: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, batches)

    def log_step(
        self,
        *,
        epoch: int,
        batch: int,
        loss: float,
        samples_per_s: float,
        extra: str = "",
        step: int | None = None,
    ) -> None:
        """Called every `log_every_steps` optimizer steps with already-synced floats; `extra`
        is appended to the plain line (language models: tokens/s and MFU)."""
        if self._bar is not None:
            speed = f"{samples_per_s:,.0f} samples/s" + (f" {extra}" if extra else "")
            self._bar.update(self._task, epoch=epoch, loss=_fmt(loss), speed=speed)
        elif not self.quiet:
            where = f"epoch {epoch}/{self.max_epochs} batch {batch}/{self.batches_per_epoch}"
            if self.max_steps is not None and step is not None:
                where = f"step {step}/{self.max_steps}"
            self.console.print(
                f"{where} loss {_fmt(loss)} {samples_per_s:,.0f} samples/s"
                + (f" {extra}" if extra else ""),
                highlight=False,
            )

    def end_epoch(self, epoch: int, metrics: dict[str, float], samples_per_s: float) -> None:
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        if self._bar is not None:
            completed = epoch * self.batches_per_epoch
            self._bar.update(
                self._task,
                completed=completed,
                epoch=min(epoch + 1, self.max_epochs),
                loss=_fmt(metrics.get("train_loss")),
                metric=shown,
                speed=f"{samples_per_s:,.0f} samples/s",
            )
        if not self.quiet:
            elapsed = time.perf_counter() - self._started
            line = f"epoch {epoch}/{self.max_epochs}  {shown}  {samples_per_s:,.0f} samples/s  {elapsed:.1f}s"
            if self._bar is not None:
                self._bar.console.print(line, highlight=False)
            else:
                self.console.print(line, highlight=False)

    def log_eval(self, step: int, rows: list[dict]) -> None:
        """A mid-epoch evaluation (`train.eval_every_steps`): one line."""
        if self.quiet:
            return
        shown = "  ".join(
            f"{r['split']}_{k} {_fmt(v)}"
            for r in rows
            for k, v in r["metrics"].items()
            if k in HEADLINE_EVAL
        )
        line = f"step {step}  {shown}"
        (self._bar.console if self._bar is not None else self.console).print(line, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


SUMMARY = (
    "loss",
    "perplexity",  # language models
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "f1_weighted",
    "roc_auc",
    "average_precision",
    "subset_accuracy",  # multilabel
    "hamming_loss",
    "f1_micro",
    "f1_samples",
    "roc_auc_macro",
    "pr_auc_macro",
    "mae",
    "mse",
    "rmse",
    "r2",
)


def summary_table(metrics: dict[str, dict], title: str = "final metrics") -> Table:
    """Splits as columns, the headline scalar metrics as rows (metrics.json has them all)."""
    splits = [s for s in ("train", "val", "test") if s in metrics]
    names: list[str] = []
    for split in splits:
        for key, value in metrics[split].items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in names:
                names.append(key)
    names = [n for n in SUMMARY if n in names]
    table = Table(title=title)
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    for name in names:
        row = [name]
        for split in splits:
            value = metrics[split].get(name)
            row.append(f"{value:.4f}" if isinstance(value, int | float) else "-")
        table.add_row(*row)
    return table
