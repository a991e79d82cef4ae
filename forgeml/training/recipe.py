"""The training recipe, the same for every task: data -> model -> fit -> final metrics -> run dir.

    prepare (the task reads and encodes its data)   -> a data mistake stops here, nothing written
    build the model, the task's steps               -> a model mistake stops here too
    open the run directory (new, or resume)         -> config.yaml and the task's state first
    fit (forgeml/training/loop.py)                  -> history.jsonl and checkpoints as it goes
    final metrics of the kept weights on every split
    save_run: metrics.json, weights, plots, card, forgeml.json last

The recipe knows no task by name: it calls the methods of forgeml/tasks/base.py `Task`. Under
torchrun every rank runs it; only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from forgeml.config import Config
from forgeml.data.splits import held_out
from forgeml.distributed import barrier, is_main
from forgeml.evaluation.report import plot_history
from forgeml.models.registry import UserModule, count_parameters
from forgeml.run_dir import RunDir, read_manifest
from forgeml.training.loop import FitResult, fit
from forgeml.training.progress import summary_table
from forgeml.training.resume import checkpointer_for, open_run
from forgeml.training.strategy import full_state_dict

Log = Callable[[str], None]


@dataclass
class Outcome:
    """What a finished training run produced (forgeml.api wraps it in a `Run`)."""

    dir: Path
    metrics: dict[str, dict[str, Any]]
    result: FitResult


def train_task(
    task: Any,
    cfg: Config,
    *,
    module: nn.Module | None = None,
    console: Console,
    log: Log,
    quiet: bool,
    callbacks: Sequence[Any] = (),
    resume: bool | str | Path | None = None,
) -> Outcome:
    """Train `cfg` as `task` says and write its run directory; see the module docstring."""
    main = is_main()  # only rank 0 writes; every rank trains and evaluates
    prepared = task.prepare(cfg, log=log)
    cfg = prepared.config  # a task may complete the config (a checkpoint's tokenizer file)
    model = task.build_model(prepared, module)
    steps = task.steps(prepared, model, log=log, quiet=quiet)
    # Opened once data and model are known to be good: a mistake must not clear the directory
    # of an earlier run (output.overwrite=true).
    run_dir, checkpoint = open_run(cfg, resume, log, writer=main)
    if main:
        run_dir.write_text("config.yaml", cfg.to_yaml())
        task.save_state(prepared, run_dir.path)
    log(task.describe(prepared, model))
    result = fit(
        model,
        prepared.train,
        prepared.val,
        cfg.train,
        steps=steps,
        seed=cfg.seed,
        callbacks=[HistoryWriter(run_dir), *steps.callbacks, *callbacks] if main else [],
        console=console,
        quiet=quiet,
        # Every rank gets one: under FSDP each writes its own shards; rank 0 commits.
        checkpointer=checkpointer_for(run_dir, cfg, writer=main),
        resume=checkpoint,
    )
    metrics = {
        split: steps.evaluate(model, data, result.precision)
        for split, data in prepared.eval_splits.items()
    }
    record = task.record(prepared, model, result, metrics)
    log(
        f"stopped after {result.epochs} epochs ({result.steps} steps"
        + (f", {record.headline}" if record.headline else "")
        + f"): {result.stop_reason}; precision {result.precision}"
    )
    weights = full_state_dict(model)  # under FSDP a collective gathering the shards on rank 0
    if main:
        custom = "custom" if isinstance(model, UserModule) else None
        save_run(
            run_dir, task, prepared, model, result, metrics, weights=weights, model_name=custom
        )
    barrier()  # no rank leaves before the run directory is complete
    if not quiet:
        title = f"final metrics (held out: {held_out(metrics)})"
        console.print(summary_table(metrics, title=title))
        console.print(f"run directory: {run_dir.path}", highlight=False)
    return Outcome(run_dir.path, metrics, result)


def save_run(
    run_dir: RunDir,
    task: Any,
    prepared: Any,
    model: nn.Module,
    result: FitResult,
    metrics: dict[str, dict[str, Any]],
    *,
    weights: dict[str, torch.Tensor] | None = None,
    model_name: str | None = None,
) -> None:
    """The one run-directory writer: everything after training, forgeml.json last.

    `weights`: the full state_dict to save (gathered from an FSDP model); None: the model's.
    `model_name`: the manifest's "model" when it is not the config's family ("custom").
    """
    cfg, path = prepared.config, run_dir.path
    if not (path / "config.yaml").exists():  # the Keras-like Model saves a run after fit
        run_dir.write_text("config.yaml", cfg.to_yaml())
        task.save_state(prepared, path)
    if not (path / "history.jsonl").exists():
        for row in result.history:
            run_dir.append_history(row)
    record = task.record(prepared, model, result, metrics)
    run_dir.write_json(
        "metrics.json",
        {
            **metrics,
            "stop_reason": result.stop_reason,
            "epochs": result.epochs,
            "steps": result.steps,
            "skipped_steps": result.skipped_steps,
            "precision": result.precision,
            "best": result.best,
            **record.metrics,
        },
    )
    weights = weights if weights is not None else model.state_dict()
    if hasattr(model, "save_to_run"):
        # A pretrained checkpoint keeps its config.json and tokenizer in the run, and a LoRA
        # model set to merge gives merged weights (models/pretrained.py).
        weights = model.save_to_run(path, weights)
    sha = run_dir.save_weights(weights)
    plot_history(result.history, path / "training_curves.png", x_axis=task.history_axis)
    manifest = {
        "name": path.name,
        "task": record.kind,
        "model": model_name or cfg.model.name,
        "num_params": count_parameters(model),
        "weights_sha256": sha,
        "config_sha256": cfg.digest(),
        "stop_reason": result.stop_reason,
        "precision": result.precision,
        "data_summary": record.data_summary,
        **record.manifest,
    }
    task.report(path, prepared, metrics, manifest)
    run_dir.finish(manifest)  # last: from here on the directory is a usable model
    read_manifest(path)


class HistoryWriter:
    """Appends each evaluation row to history.jsonl as it happens (survives a crash)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def on_eval_end(self, row: dict[str, Any]) -> None:
        self.run_dir.append_history(row)
