"""The training loop: one function, top to bottom.

    for each epoch: shuffle -> for each micro-batch: forward -> loss -> backward -> (every
    grad_accum_steps) clip -> step -> schedule -> then evaluate -> converged? -> next epoch

`fit` says when things happen; `Trainer` (trainer.py) does them; the policies -- progress,
mid-epoch evaluation, the non-finite guard, early stopping, the loss threshold, checkpoint
cadence, stopping on a signal -- are callbacks on named events (callbacks.py), and so is
anything a task or a user adds (history.jsonl, a language model's samples). The task supplies
its loss and eval step (`steps`); nothing here knows which task runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import Tensor, nn

from forgeml.config import TrainConfig
from forgeml.distributed import rank
from forgeml.training.callbacks import (  # noqa: F401 (Interrupted, NonFiniteError: the loop's errors)
    Interrupted,
    NonFiniteError,
    default_callbacks,
    flatten,
)
from forgeml.training.checkpoint import Checkpointer
from forgeml.training.trainer import Trainer


class Steps(Protocol):
    """The task's part of the loop (forgeml/tasks/base.py `TaskSteps` is one)."""

    loss: Callable[[Tensor, Tensor], Tensor]  # (float32 outputs, target) -> mean loss
    evaluate: Callable[[nn.Module, Any, str], dict[str, Any]]  # (model, data, precision)
    augment: Callable[[dict[str, Tensor], torch.Generator], dict[str, Tensor]] | None
    describe_rate: Callable[[float], str] | None  # samples/s -> more of the log line


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # the rows written to history.jsonl
    stop_reason: str  # max_epochs | max_steps | early_stopping | loss_threshold
    epochs: int  # epochs run (the last one may be partial under max_steps)
    steps: int  # optimizer steps taken
    precision: str  # fp32 | bf16, as resolved
    best: dict[str, Any] = field(default_factory=dict)  # early stopping: monitor, value, epoch
    skipped_steps: int = 0  # on_nonfinite=skip: optimizer steps skipped


def fit(
    model: nn.Module,
    train: Any,
    val: Any | None,
    cfg: TrainConfig,
    *,
    steps: Steps,
    seed: int,
    callbacks: Sequence[Any] = (),
    console: Console | None = None,
    quiet: bool = False,
    checkpointer: Checkpointer | None = None,
    resume: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` in place until a convergence rule fires; returns what happened.

    The data order comes from its own generator seeded with `seed` (epoch e's order is the e-th
    `torch.randperm` of it), so a plain PyTorch loop with the same seed sees the same batches.
    `steps` is the task's part: its loss, its eval step, augmentation and log-line extras. With
    a `checkpointer` the loop writes checkpoints per `cfg.checkpoint`; `resume` (a loaded
    checkpoint) continues exactly where it was written: same batches, RNG draws and weights.
    `callbacks` come after the policies `cfg` asks for (callbacks.py lists the events).

    `train` and `val` are `TensorData` or anything with its `__len__`, `batch(index)` and
    `to(device)` (language models: `forgeml.data.corpus.TokenBlocks`, one row per block).
    """
    policies = default_callbacks(
        cfg, has_val=val is not None, console=console or Console(), quiet=quiet or rank() != 0
    )
    t = Trainer(
        model,
        train,
        val,
        cfg,
        steps=steps,
        seed=seed,
        callbacks=[*policies, *callbacks],
        checkpointer=checkpointer,
    )
    t.setup(resume)
    state = t.state
    try:
        t.emit("on_fit_start", t)
        while state.stop_reason is None and state.epoch <= cfg.max_epochs:
            if state.step >= t.total_steps and state.batch == 0:
                state.stop_reason = "max_steps"  # resumed exactly at the step limit
                break
            t.begin_epoch()
            t.emit("on_train_epoch_start", t)
            for batch in range(state.batch, t.batches_per_epoch):
                if state.step >= t.total_steps:
                    break
                t.emit("on_train_batch_start", t, batch)
                t.forward_backward(batch)
                t.emit("on_train_batch_end", t, batch)
                if not t.is_step_end(batch):
                    continue  # accumulate more micro-batches before stepping
                t.clip_gradients()
                approved = all(v is not False for v in t.emit("on_before_optimizer_step", t))
                t.optimizer_step(approved)  # a refused step drops its gradients
                state.batch = batch + 1
                t.emit("on_train_step_end", t)

            # ---- end of epoch: evaluate, record, check convergence
            rows = t.rows(mid_epoch=False)
            t.record(rows, mid_epoch=False)
            t.emit("on_epoch_end", rows[0])  # the public per-epoch event
            t.improved = False
            t.emit("on_validation_end", t, flatten(rows))  # early stopping, the loss threshold
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                state.stop_reason = state.stop_reason or "max_steps"
            if state.stop_reason is None and state.epoch == cfg.max_epochs:
                state.stop_reason = "max_epochs"
            t.next_epoch()
            t.emit("on_train_epoch_end", t)  # checkpoint cadence, signals
        t.emit("on_fit_end", t)  # early stopping restores the best weights
    finally:
        t.emit("teardown", t)
    result = FitResult(
        state.history,
        state.stop_reason or "max_epochs",
        state.epoch - 1,
        state.step,
        t.precision,
        t.best,
        state.skipped,
    )
    t.emit("on_train_end", result)  # the public end event
    return result
