"""The loop's policies, as callbacks on a few named events (Keras' and Lightning's hooks).

Events, in the order a fit meets them (each gets the `Trainer`, trainer.py):

    on_fit_start                      before the first step (after a resume's state is restored)
    on_train_epoch_start              the epoch's data order is drawn
    on_train_batch_start(batch)       before each micro-batch's forward
    on_train_batch_end(batch)         after its backward
    on_before_optimizer_step -> bool  the gradients are complete; False refuses this step
    on_train_step_end                 after an optimizer step: a point a resume can start from
    on_evaluated(rows, mid_epoch)     after an evaluation's history rows are recorded
    on_validation_end(shown)          after the epoch-end evaluation: convergence rules decide
    on_train_epoch_end                the next epoch is set up: a point a resume can start from
    on_fit_end                        the loop has ended by one of its rules
    teardown                          always last, also after an error or an interruption

Your own callbacks (forgeml.train(callbacks=[...])) may define any of these, and the simpler
public events `on_eval_end(row)` (each history row), `on_epoch_end(row)` (the epoch's train row)
and `on_train_end(result)`; the two kinds are told apart by their names.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from typing import Any

import torch
from rich.console import Console
from torch import nn

from forgeml.distributed import all_reduce_max, all_reduce_sum, world_size
from forgeml.errors import ConfigError, ForgeError
from forgeml.evaluation.metrics import metric_mode
from forgeml.training.progress import TrainingProgress
from forgeml.training.strategy import plain
from forgeml.training.trainer import Trainer, load_strict

HEADLINE = ("loss", "perplexity", "accuracy", "f1_macro", "roc_auc", "f1_micro", "rmse", "r2")


class Interrupted(ForgeError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report


class NonFiniteError(ForgeError):
    """A non-finite loss or gradient under on_nonfinite=stop (or too many under skip)."""


class Progress:
    """The live bar (or plain lines), the periodic log line with samples/s, epoch lines."""

    def __init__(self, console: Console, *, quiet: bool) -> None:
        self.console, self.quiet = console, quiet

    def on_fit_start(self, t: Trainer) -> None:
        cfg = t.cfg
        self.bar = TrainingProgress(
            self.console,
            max_epochs=cfg.max_epochs,
            batches_per_epoch=t.batches_per_epoch,
            quiet=self.quiet,
            total=min(cfg.max_epochs * t.batches_per_epoch, t.total_steps * cfg.grad_accum_steps),
            max_steps=t.total_steps if t.total_steps < t.steps_per_epoch else None,
        )
        self.window_rows, self.window_start = 0, time.perf_counter()

    def on_train_epoch_start(self, t: Trainer) -> None:
        self.window_rows, self.window_start = 0, t.epoch_started

    def on_train_batch_end(self, t: Trainer, batch: int) -> None:
        self.bar.advance()

    def on_train_step_end(self, t: Trainer) -> None:
        self.window_rows += t.step_rows
        if t.state.step % t.cfg.log_every_steps:
            return
        now = time.perf_counter()
        rate = self.window_rows / max(now - self.window_start, 1e-9)  # since the last line
        self.window_rows, self.window_start = 0, now
        describe = t.steps.describe_rate
        self.bar.log_step(
            epoch=t.state.epoch,
            batch=t.state.batch,
            loss=t.last_loss.item(),
            samples_per_s=rate,
            extra=describe(rate) if describe else "",
            step=t.state.step,
        )

    def on_evaluated(self, t: Trainer, rows: list[dict], mid_epoch: bool) -> None:
        if mid_epoch:
            self.bar.log_eval(t.state.step, rows)
            self.window_rows, self.window_start = 0, time.perf_counter()
            return
        shown = flatten(rows)
        headline = {k: v for k, v in shown.items() if k.split("_", 1)[1] in HEADLINE}
        self.bar.end_epoch(t.state.epoch, headline, rows[0]["samples_per_s"])

    def teardown(self, t: Trainer) -> None:
        if hasattr(self, "bar"):
            self.bar.close()


class MidEpochEvaluation:
    """`train.eval_every_steps`: evaluate on the validation split inside an epoch too.

    Recorded and reported, not used for early stopping (it looks at epoch ends only)."""

    def on_train_step_end(self, t: Trainer) -> None:
        every, state = t.cfg.eval_every_steps, t.state
        if (
            every
            and t.val_data is not None
            and state.step % every == 0
            and state.batch < t.batches_per_epoch  # the epoch end evaluates anyway
            and state.step < t.total_steps
        ):
            t.record(t.rows(mid_epoch=True), mid_epoch=True)
            t.model.train()  # evaluation (and a sample callback) left it in eval mode


class NonFiniteGuard:
    """A NaN must never reach the weights: one scalar check per optimizer step, of the loss and
    the global gradient norm (`train.on_nonfinite`: stop, or skip within a budget).

    A finite loss can still have non-finite gradients (sqrt or norm of an exact zero, overflow
    in backward), so the norm is always checked; clipping computes it anyway. Buffers
    (BatchNorm running statistics) change in the forward pass, before the check: a copy from
    the start of each optimizer step lets a refused step undo them too.
    """

    def on_fit_start(self, t: Trainer) -> None:
        self.buffers = list(t.model.buffers())
        self.before = [b.detach().clone() for b in self.buffers]

    def on_train_batch_start(self, t: Trainer, batch: int) -> None:
        if self.buffers and batch % t.cfg.grad_accum_steps == 0:  # a step's first micro-batch
            torch._foreach_copy_(self.before, self.buffers)

    def on_before_optimizer_step(self, t: Trainer) -> bool:
        norm = t.grad_norm
        if norm is None:
            grads = [p.grad for p in t.params if p.grad is not None]
            norm = t.grad_norm = plain(nn.utils.get_total_norm(grads))
        health = t.group_loss + norm  # non-finite if either is
        if t.world > 1:
            # The norm is global (gradients are all-reduced), the loss is this rank's: sum it
            # over ranks, so every rank skips or stops together.
            health = all_reduce_sum(health.clone())
        if bool(health.isfinite()):
            return True
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.before)
        self._refuse(t)
        return False

    def _refuse(self, t: Trainer) -> None:
        """Raise under on_nonfinite=stop, or when skipping has gone past its allowed fraction."""
        cfg, state = t.cfg, t.state
        where = f"step {state.step + 1} (epoch {state.epoch}, batch {t.batch + 1})"
        committed = t.checkpointer.committed() if t.checkpointer else []
        last = "no checkpoint was written yet"
        if committed:
            last = f"the last good checkpoint is {committed[0]}"
        if cfg.on_nonfinite == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradient at {where}; {last}; lower train.optimizer.lr, "
                "set train.grad_clip, check the data for extreme values, or set "
                "train.on_nonfinite=skip"
            )
        if state.skipped + 1 > cfg.max_skipped_fraction * t.total_steps:
            raise NonFiniteError(
                f"non-finite loss or gradient at {where}: {state.skipped + 1} of "
                f"{t.total_steps} steps skipped, more than train.max_skipped_fraction="
                f"{cfg.max_skipped_fraction}; {last}; lower train.optimizer.lr or set "
                "train.grad_clip"
            )


class EarlyStopping:
    """Stop once the monitored metric has not improved for `patience` epoch-end evaluations,
    and restore the best weights at the end (as Keras' `restore_best_weights`)."""

    def __init__(self, cfg: Any, *, has_val: bool) -> None:
        self.cfg, self.monitor = cfg, cfg.monitor
        if self.monitor.startswith("val_") and not has_val:
            raise ConfigError(
                f"train.early_stopping.monitor={self.monitor!r} needs a validation split, but "
                "there is none; set data.split.val > 0, give data.val_source, or monitor "
                "'train_loss'"
            )
        if not self.monitor.startswith(("val_", "train_")):
            raise ConfigError(
                f"train.early_stopping.monitor={self.monitor!r} must start with 'val_' or "
                "'train_', e.g. val_loss or val_accuracy"
            )
        name = self.monitor.split("_", 1)[1]
        self.mode = cfg.mode if cfg.mode != "auto" else metric_mode(name)

    def on_validation_end(self, t: Trainer, shown: dict[str, float]) -> None:
        if self.monitor not in shown:
            raise ConfigError(
                f"train.early_stopping.monitor={self.monitor!r} is not a recorded metric; "
                f"expected one of: {', '.join(sorted(shown))}"
            )
        state, value, delta = t.state, shown[self.monitor], self.cfg.min_delta
        best = state.best_value
        t.improved = best is None or (
            value < best - delta if self.mode == "min" else value > best + delta
        )
        if t.improved:
            state.best_value, state.best_epoch, state.evals_without_gain = value, state.epoch, 0
            if self.cfg.restore_best:
                t.best_state = copy.deepcopy(t.model.state_dict())
            return
        state.evals_without_gain += 1
        if state.evals_without_gain >= self.cfg.patience:
            state.stop_reason = "early_stopping"

    def on_fit_end(self, t: Trainer) -> None:
        state = t.state
        if state.best_value is None:
            return
        t.best = {"monitor": self.monitor, "value": state.best_value, "epoch": state.best_epoch}
        if t.best_state is not None and state.best_epoch != state.epoch - 1:
            load_strict(t.model, t.best_state)  # restore the best weights, as Keras does
            t.best["restored"] = True


class LossThreshold:
    """`train.stop_at_loss`: stop once the epoch's mean training loss is at or below it."""

    def on_validation_end(self, t: Trainer, shown: dict[str, float]) -> None:
        if shown["train_loss"] <= t.cfg.stop_at_loss:
            t.state.stop_reason = t.state.stop_reason or "loss_threshold"


class CheckpointCadence:
    """`train.checkpoint`: a checkpoint every N steps and/or every N epochs (and at the end)."""

    def on_train_step_end(self, t: Trainer) -> None:
        every = t.cfg.checkpoint.every_steps
        if every and t.state.step % every == 0:
            t.save_checkpoint()

    def on_train_epoch_end(self, t: Trainer) -> None:
        every, epoch = t.cfg.checkpoint.every_epochs, t.state.epoch - 1
        if every and (epoch % every == 0 or t.state.stop_reason):
            t.save_checkpoint(is_best=t.improved)


class StopOnSignal:
    """SIGINT/SIGTERM set a flag; at the next step or epoch end every rank checkpoints and the
    fit ends with `Interrupted`. A second signal while the first is handled falls back to the
    default behaviour."""

    def on_fit_start(self, t: Trainer) -> None:
        self.caught: int | None = None
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.caught is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.caught = signum

    def on_train_step_end(self, t: Trainer) -> None:
        # The same decision on every rank: one rank must not leave a collective the others are
        # in (torchrun signals all ranks, but they see it at different steps).
        caught = self.caught if world_size() == 1 else (all_reduce_max(self.caught or 0) or None)
        if caught:
            raise interrupted(caught, t)

    on_train_epoch_end = on_train_step_end

    def teardown(self, t: Trainer) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def interrupted(signum: int, t: Trainer) -> Interrupted:
    state, checkpoint = t.state, t.save_checkpoint()
    name = signal.Signals(signum).name
    where = f"step {state.step} (epoch {state.epoch}, batch {state.batch})"
    if checkpoint is None:
        return Interrupted(
            f"stopped by {name} after {where}; no checkpoint was written "
            "(checkpoints are off); train again to start over",
            signum,
        )
    return Interrupted(
        f"stopped by {name} after {where}; checkpoint written to {checkpoint}; "
        "continue with: forgeml train CONFIG --resume",
        signum,
    )


def default_callbacks(cfg: Any, *, has_val: bool, console: Console, quiet: bool) -> list[Any]:
    """The policies `train.*` asks for, in the order they act on each event."""
    callbacks: list[Any] = [Progress(console, quiet=quiet), MidEpochEvaluation()]
    if cfg.on_nonfinite != "ignore":
        callbacks.append(NonFiniteGuard())
    if cfg.early_stopping is not None:
        callbacks.append(EarlyStopping(cfg.early_stopping, has_val=has_val))
    if cfg.stop_at_loss is not None:
        callbacks.append(LossThreshold())
    return [*callbacks, CheckpointCadence(), StopOnSignal()]


def flatten(rows: list[dict]) -> dict[str, float]:
    """{"train_loss": ..., "val_accuracy": ...} of one evaluation's history rows."""
    return {f"{r['split']}_{k}": v for r in rows for k, v in r["metrics"].items()}
