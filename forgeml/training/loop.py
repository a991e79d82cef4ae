"""The training loop: one function, top to bottom.

    for each epoch: shuffle -> for each batch: forward -> loss -> backward -> (every
    grad_accum_steps) clip -> step -> schedule -> then evaluate -> converged? -> events

Extension goes through named events on `callbacks` (objects with any of `on_epoch_end(row)`,
`on_eval_end(row)`, `on_train_end(result)`), never through overriding steps of this loop.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import Tensor, nn

from forgeml.config import TrainConfig
from forgeml.distributed import (
    all_gather,
    all_reduce_max,
    all_reduce_sum,
    global_mean,
    is_sharded,
    world_size,
)
from forgeml.distributed import rank as dist_rank
from forgeml.errors import ConfigError, ForgeError
from forgeml.evaluation.metrics import metric_mode, scalar_metrics
from forgeml.run_dir import load_state
from forgeml.runtime import autocast, resolve_precision
from forgeml.training.checkpoint import Checkpointer, capture_rng, restore_rng
from forgeml.training.optim import build_optimizer, build_scheduler
from forgeml.training.progress import TrainingProgress
from forgeml.training.strategy import gradient_sync, load_sharded, plain, wrap


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


class Interrupted(ForgeError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report


class NonFiniteError(ForgeError):
    """A non-finite loss or gradient under on_nonfinite=stop (or too many under skip)."""


@dataclass
class LoopState:
    """Where the loop is: everything besides model/optimizer/RNG a checkpoint must hold."""

    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps taken
    seen: int = 0  # rows seen in this epoch
    skipped: int = 0  # optimizer steps skipped for non-finite values
    stop_reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    evals_without_gain: int = 0


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
    `target_scale` is a regression target's (mean, std): see `evaluate`. With a `checkpointer`
    the loop writes checkpoints per `cfg.checkpoint`; `resume` (a loaded checkpoint) continues
    exactly where it was written: same batches, same RNG draws, same weights.
    `steps` is the task's part: its loss, its eval step, augmentation and log-line extras.

    `train` and `val` are `TensorData` or anything with its `__len__`, `batch(index)` and
    `to(device)` (language models: `forgeml.data.corpus.TokenBlocks`, one row per block).
    """
    console = console or Console()
    device = next(model.parameters()).device
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    precision = resolve_precision(
        cfg.precision, device, num_params=num_params, batch_size=cfg.batch_size
    )
    train, val = train.to(device), (val.to(device) if val is not None else None)
    num_rows, batch_size, accum = len(train), cfg.batch_size, cfg.grad_accum_steps
    world, rank = world_size(), dist_rank()
    batches_per_epoch = math.ceil(num_rows / batch_size)
    if world > 1 and 0 < num_rows % batch_size < world:
        batches_per_epoch -= (
            1  # a last global batch smaller than the world: not every rank gets a row
        )
    usable_rows = min(num_rows, batches_per_epoch * batch_size)
    quiet = quiet or rank != 0  # only rank 0 talks
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = steps_per_epoch * cfg.max_epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    if resume is not None and resume["model"] is not None:
        _load_strict(model, resume["model"])  # DDP then starts every rank from these weights
    # DDP wraps `model`; FSDP shards it in place, so the optimizer is built after this.
    net = wrap(model, cfg.strategy)
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(
        cfg.scheduler, optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    params = [p for p in model.parameters() if p.requires_grad]
    # Buffers (BatchNorm running statistics) change in the forward pass, before the non-finite
    # check: a copy from the start of each optimizer step lets a refused step undo them too.
    buffers = list(model.buffers()) if cfg.on_nonfinite != "ignore" else []
    buffers_before = [b.detach().clone() for b in buffers]
    order = torch.Generator().manual_seed(seed)  # data order, independent of model init/dropout
    augment_rng = torch.Generator().manual_seed(seed + 1)
    early = cfg.early_stopping
    monitor, mode = _monitor(early, has_val=val is not None)
    state, best_state = LoopState(), None
    loss_sum = torch.zeros((), device=device)  # summed on device: no sync per batch
    epoch_order = order.get_state()  # generator state before this epoch's randperm
    if resume is not None:
        best_state = resume["best_model"]
        if resume["sharded"] is not None:
            best_state = load_sharded(
                resume["sharded"],
                model,
                optimizer,
                with_best=resume["trainer"].get("sharded_best", False),
            )
        else:
            optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        state = LoopState(**resume["trainer"]["loop"])
        tensors = resume["tensors"]
        epoch_order = tensors["epoch_order"]
        augment_rng.set_state(tensors["augment_rng"])
        loss_sum, torch_rng = tensors["loss_sum"].to(device), tensors["torch_rng"]
        if "rank_seen" in tensors:  # written by a torchrun job: each rank takes its own part
            loss_sum, state.seen, torch_rng = _own_part(tensors, loss_sum, state.seen, torch_rng)
        restore_rng({**resume["trainer"]["rng"], "torch": torch_rng, "cuda": tensors["cuda_rng"]})
        if best_state is None and state.batch == 0 and state.best_epoch == state.epoch - 1:
            best_state = copy.deepcopy(model.state_dict())  # the checkpoint's weights are best
        if state.stop_reason in ("max_epochs", "max_steps"):
            state.stop_reason = None  # the limits may have been raised for this resume

    def save_checkpoint(is_best: bool = False) -> Path | None:
        if checkpointer is None:
            return None
        rng = capture_rng()
        # At an epoch end whose evaluation was the best, the model weights are the best ones.
        current_is_best = state.batch == 0 and state.best_epoch == state.epoch - 1
        best = best_state if best_state is not None and not current_is_best else None
        tensors = {
            "epoch_order": epoch_order,
            "augment_rng": augment_rng.get_state(),
            "loss_sum": loss_sum.detach().cpu(),
            "torch_rng": rng["torch"],
            "cuda_rng": rng["cuda"],
        }
        if world > 1:  # what differs per rank: its rows' loss sum and count, its RNG stream
            tensors["rank_loss_sum"] = all_gather(loss_sum.detach().double().cpu())
            tensors["rank_seen"] = all_gather(torch.tensor(state.seen))
            tensors["rank_torch_rng"] = all_gather(rng["torch"])
        return checkpointer.save(
            step=state.step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            trainer={
                "loop": asdict(state),
                "rng": {k: rng[k] for k in ("python", "numpy")},
                "sharded_best": best is not None and is_sharded(model),
            },
            tensors=tensors,
            best_model=best,
            is_best=is_best,
        )

    progress = TrainingProgress(
        console,
        max_epochs=cfg.max_epochs,
        batches_per_epoch=batches_per_epoch,
        quiet=quiet,
        total=min(cfg.max_epochs * batches_per_epoch, total_steps * accum),
        max_steps=total_steps if total_steps < steps_per_epoch else None,
    )

    def evaluate_val() -> dict[str, Any]:
        return steps.evaluate(model, val, precision)

    every_steps = cfg.checkpoint.every_steps if checkpointer else None
    every_epochs = cfg.checkpoint.every_epochs if checkpointer else None
    signals = _SignalFlag()
    try:
        while state.stop_reason is None and state.epoch <= cfg.max_epochs:
            if state.step >= total_steps and state.batch == 0:
                state.stop_reason = "max_steps"  # resumed exactly at the step limit
                break
            model.train()
            started = time.perf_counter()
            order.set_state(epoch_order)
            permutation = torch.randperm(num_rows, generator=order).to(device)
            group_loss = torch.zeros((), device=device)  # this optimizer step's summed loss
            group_rows = 0
            window_rows, window_start = 0, started  # for the speed in the periodic log line
            for batch in range(state.batch, batches_per_epoch):
                if state.step >= total_steps:
                    break
                index = permutation[batch * batch_size : (batch + 1) * batch_size]  # global
                local = index[rank::world] if world > 1 else index  # this rank's rows of it
                inputs, target = train.batch(local)
                if steps.augment is not None:
                    inputs = steps.augment(inputs, augment_rng)
                stepping = (batch + 1) % accum == 0 or batch + 1 == batches_per_epoch
                if buffers and batch % accum == 0:  # the first micro-batch of a step
                    torch._foreach_copy_(buffers_before, buffers)
                # Weight each micro-batch by its share of the rows of this optimizer step (over
                # all ranks): the step then sees the gradient of the mean over all of them, as
                # one big batch on one process would, also for short last batches.
                first = batch - batch % accum
                last = min(first + accum, batches_per_epoch)
                scale = (
                    len(local) * world / (min(last * batch_size, usable_rows) - first * batch_size)
                )
                with gradient_sync(net, stepping):
                    with autocast(precision, device):
                        outputs = net(inputs)  # (B, out_dim)
                    loss = steps.loss(outputs.float(), target)
                    (loss * scale if scale != 1.0 else loss).backward()
                group_loss.add_(loss.detach(), alpha=len(local))
                group_rows += len(local)
                progress.advance()

                if not stepping:
                    continue  # accumulate more micro-batches before stepping
                # A NaN must never reach the weights: one scalar check per optimizer step, of the
                # loss and the global gradient norm. A finite loss can still have non-finite
                # gradients (sqrt or norm of an exact zero, overflow in backward), so the norm
                # is always checked; clipping computes it anyway.
                if cfg.grad_clip is not None:
                    grad_norm = plain(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                elif cfg.on_nonfinite != "ignore":
                    grad_norm = plain(
                        nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                    )
                if cfg.on_nonfinite != "ignore":
                    health = group_loss + grad_norm  # non-finite if either is
                    if world > 1:
                        # The norm is global (gradients are all-reduced), the loss is this
                        # rank's: sum it over ranks, so every rank skips or stops together.
                        health = all_reduce_sum(health.clone())
                if cfg.on_nonfinite != "ignore" and not bool(torch.isfinite(health)):
                    if buffers:
                        torch._foreach_copy_(buffers, buffers_before)
                    _nonfinite(
                        cfg,
                        state,
                        epoch=state.epoch,
                        batch=batch,
                        total_steps=total_steps,
                        checkpointer=checkpointer,
                    )
                    state.skipped += 1  # the refused gradients are dropped just below
                else:
                    optimizer.step()
                    loss_sum.add_(group_loss)
                    state.seen += group_rows
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                group_loss.zero_()
                window_rows += group_rows * world
                group_rows = 0
                state.step += 1
                state.batch = batch + 1
                if state.step % cfg.log_every_steps == 0:
                    now = time.perf_counter()
                    rate = window_rows / max(now - window_start, 1e-9)  # since the last log line
                    window_rows, window_start = 0, now
                    progress.log_step(
                        epoch=state.epoch,
                        batch=batch + 1,
                        loss=loss.item(),
                        samples_per_s=rate,
                        extra=steps.describe_rate(rate) if steps.describe_rate else "",
                        step=state.step,
                    )
                if (
                    cfg.eval_every_steps
                    and val is not None
                    and state.step % cfg.eval_every_steps == 0
                    and batch + 1 < batches_per_epoch  # the epoch end evaluates anyway
                    and state.step < total_steps
                ):
                    # Mid-epoch evaluation: recorded and reported, not used for early stopping.
                    lr = optimizer.param_groups[0]["lr"]
                    so_far = {"loss": global_mean(loss_sum, state.seen)}
                    rows = [
                        _row(state.step, state.epoch, "train", so_far, lr, None),
                        _row(
                            state.step, state.epoch, "val", scalar_metrics(evaluate_val()), lr, None
                        ),
                    ]
                    state.history.extend(rows)
                    progress.log_eval(state.step, rows)
                    for row in rows:
                        _emit(callbacks, "on_eval_end", row)
                    model.train()  # evaluate (and a sample callback) left it in eval mode
                    window_rows, window_start = 0, time.perf_counter()
                if every_steps and state.step % every_steps == 0:
                    save_checkpoint()
                if caught := signals.agreed():
                    raise _interrupted(caught, state, save_checkpoint())

            # ---- end of epoch: evaluate, record, check convergence
            epoch = state.epoch
            elapsed = max(time.perf_counter() - started, 1e-9)
            train_loss = global_mean(loss_sum, state.seen)
            lr = optimizer.param_groups[0]["lr"]
            rate = state.seen * world / elapsed  # rows/s over all ranks (shards are equal)
            rows = [_row(state.step, epoch, "train", {"loss": train_loss}, lr, rate)]
            if val is not None:
                val_metrics = evaluate_val()
                rows.append(_row(state.step, epoch, "val", scalar_metrics(val_metrics), lr, None))
            state.history.extend(rows)
            shown = {f"{r['split']}_{k}": v for r in rows for k, v in r["metrics"].items()}
            progress.end_epoch(epoch, _headline(shown), rate)
            for row in rows:
                _emit(callbacks, "on_eval_end", row)
            _emit(callbacks, "on_epoch_end", rows[0])

            improved = False
            if monitor is not None:
                if monitor not in shown:
                    raise ConfigError(
                        f"train.early_stopping.monitor={monitor!r} is not a recorded metric; "
                        f"expected one of: {', '.join(sorted(shown))}"
                    )
                value = shown[monitor]
                if _improved(value, state.best_value, mode, early.min_delta):
                    state.best_value, state.best_epoch, state.evals_without_gain = value, epoch, 0
                    improved = True
                    if early.restore_best:
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    state.evals_without_gain += 1
                    if state.evals_without_gain >= early.patience:
                        state.stop_reason = "early_stopping"
            if cfg.stop_at_loss is not None and train_loss <= cfg.stop_at_loss:
                state.stop_reason = state.stop_reason or "loss_threshold"
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                state.stop_reason = state.stop_reason or "max_steps"
            if state.stop_reason is None and epoch == cfg.max_epochs:
                state.stop_reason = "max_epochs"
            # Move to the next epoch before saving, so a resume starts there.
            state.epoch, state.batch, state.seen = epoch + 1, 0, 0
            loss_sum = torch.zeros((), device=device)
            epoch_order = order.get_state()
            if every_epochs and (epoch % every_epochs == 0 or state.stop_reason):
                save_checkpoint(is_best=improved)
            if caught := signals.agreed():
                raise _interrupted(caught, state, save_checkpoint())
    finally:
        signals.restore()
        progress.close()

    epochs = state.epoch - 1
    best: dict[str, Any] = {}
    if monitor is not None and state.best_value is not None:
        best = {"monitor": monitor, "value": state.best_value, "epoch": state.best_epoch}
        if best_state is not None and state.best_epoch != epochs:
            _load_strict(model, best_state)  # restore the best weights, as Keras does
            best["restored"] = True
    result = FitResult(
        state.history,
        state.stop_reason or "max_epochs",
        epochs,
        state.step,
        precision,
        best,
        state.skipped,
    )
    _emit(callbacks, "on_train_end", result)
    return result


# --------------------------------------------------------------------------- helpers


class _SignalFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops.

    A second signal while the first is handled falls back to the default behaviour.
    """

    def __init__(self) -> None:
        self.caught: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.caught is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.caught = signum

    def agreed(self) -> int | None:
        """The signal to stop for, the same on every rank: one rank must not leave a collective
        the others are in (torchrun signals all ranks, but they see it at different steps)."""
        if world_size() == 1:
            return self.caught
        return all_reduce_max(self.caught or 0) or None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _interrupted(signum: int, state: LoopState, checkpoint: Path | None) -> Interrupted:
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


def _nonfinite(
    cfg: TrainConfig,
    state: LoopState,
    *,
    epoch: int,
    batch: int,
    total_steps: int,
    checkpointer: Checkpointer | None,
) -> None:
    """Raise under on_nonfinite=stop, or when skipping has gone past its allowed fraction."""
    where = f"step {state.step + 1} (epoch {epoch}, batch {batch + 1})"
    last = checkpointer.committed()[0] if checkpointer and checkpointer.committed() else None
    last_text = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    if cfg.on_nonfinite == "stop":
        raise NonFiniteError(
            f"non-finite loss or gradient at {where}; {last_text}; lower train.optimizer.lr, "
            "set train.grad_clip, check the data for extreme values, or set "
            "train.on_nonfinite=skip"
        )
    allowed = cfg.max_skipped_fraction * total_steps
    if state.skipped + 1 > allowed:
        raise NonFiniteError(
            f"non-finite loss or gradient at {where}: {state.skipped + 1} of {total_steps} "
            f"steps skipped, more than train.max_skipped_fraction={cfg.max_skipped_fraction}; "
            f"{last_text}; lower train.optimizer.lr or set train.grad_clip"
        )


def _monitor(early: Any, *, has_val: bool) -> tuple[str | None, str]:
    if early is None:
        return None, "min"
    monitor = early.monitor
    if monitor.startswith("val_") and not has_val:
        raise ConfigError(
            f"train.early_stopping.monitor={monitor!r} needs a validation split, but there is "
            "none; set data.split.val > 0, give data.val_source, or monitor 'train_loss'"
        )
    if not monitor.startswith(("val_", "train_")):
        raise ConfigError(
            f"train.early_stopping.monitor={monitor!r} must start with 'val_' or 'train_', "
            "e.g. val_loss or val_accuracy"
        )
    mode = early.mode if early.mode != "auto" else metric_mode(monitor.split("_", 1)[1])
    return monitor, mode


HEADLINE = ("loss", "perplexity", "accuracy", "f1_macro", "roc_auc", "f1_micro", "rmse", "r2")


def _own_part(
    tensors: dict[str, Tensor], loss_sum: Tensor, seen: int, torch_rng: Tensor
) -> tuple[Tensor, int, Tensor]:
    """This rank's loss sum, row count and RNG state from a checkpoint of a torchrun job.

    With another number of ranks than the job that wrote it, rank 0 takes the sums (the epoch's
    train loss stays right) and the other ranks start from zero and rank 0's RNG."""
    world, rank = world_size(), dist_rank()
    if len(tensors["rank_seen"]) == world:
        return (
            tensors["rank_loss_sum"][rank].to(loss_sum),
            int(tensors["rank_seen"][rank]),
            tensors["rank_torch_rng"][rank].clone(),  # its own storage: set_rng_state needs it
        )
    if rank == 0:
        total = tensors["rank_loss_sum"].sum().to(loss_sum)
        return total, int(tensors["rank_seen"].sum()), torch_rng
    return torch.zeros_like(loss_sum), 0, torch_rng


def _load_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """load_state_dict, strict except for tied aliases a checkpoint stores once."""
    missing, unexpected = load_state(model, state)
    if missing or unexpected:
        raise ForgeError(
            f"the checkpoint does not fit the model (missing: {missing[:5]}, unexpected: "
            f"{unexpected[:5]}); the model config or code changed since it was written"
        )


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    """The few numbers worth a glance per epoch; history.jsonl keeps them all."""
    return {k: v for k, v in metrics.items() if k.split("_", 1)[1] in HEADLINE}


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _row(step: int, epoch: int, split: str, metrics: dict, lr: float, rate: float | None) -> dict:
    row = {"step": step, "epoch": epoch, "split": split, "metrics": metrics, "lr": lr}
    if rate is not None:
        row["samples_per_s"] = rate
    return row


def _emit(callbacks: Sequence[Any], event: str, payload: Any) -> None:
    for callback in callbacks:
        handler = getattr(callback, event, None)
        if handler is not None:
            handler(payload)
