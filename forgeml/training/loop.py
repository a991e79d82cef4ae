"""The training loop: one function, top to bottom.

    for each epoch: shuffle -> for each batch: forward -> loss -> backward -> (every
    grad_accum_steps) clip -> step -> schedule -> then evaluate -> converged? -> events

Extension goes through named events on `callbacks` (objects with any of `on_epoch_end(row)`,
`on_eval_end(row)`, `on_train_end(result)`), never through overriding steps of this loop.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from forgeml.config import TrainConfig
from forgeml.data.loader import TensorData
from forgeml.errors import ConfigError
from forgeml.evaluate.metrics import MetricSet, metric_mode, scalar_metrics
from forgeml.training.optim import build_optimizer, build_scheduler
from forgeml.training.progress import TrainingProgress
from forgeml.training.runtime import autocast, resolve_precision

Augment = Callable[[dict[str, Tensor], torch.Generator], dict[str, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # the rows written to history.jsonl
    stop_reason: str  # max_epochs | max_steps | early_stopping | loss_threshold
    epochs: int  # epochs run (the last one may be partial under max_steps)
    steps: int  # optimizer steps taken
    precision: str  # fp32 | bf16, as resolved
    best: dict[str, Any] = field(default_factory=dict)  # early stopping: monitor, value, epoch


def fit(
    model: nn.Module,
    train: TensorData,
    val: TensorData | None,
    cfg: TrainConfig,
    *,
    task: str,
    loss_fn: LossFn,
    seed: int,
    class_names: list[str] | None = None,
    augment: Augment | None = None,
    callbacks: Sequence[Any] = (),
    console: Console | None = None,
    quiet: bool = False,
    target_scale: tuple[float, float] | None = None,
) -> FitResult:
    """Train `model` in place until a convergence rule fires; returns what happened.

    The data order comes from its own generator seeded with `seed` (epoch e's order is the e-th
    `torch.randperm` of it), so a plain PyTorch loop with the same seed sees the same batches.
    `target_scale` is a regression target's (mean, std): see `evaluate`.
    """
    console = console or Console()
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    train, val = train.to(device), (val.to(device) if val is not None else None)
    num_rows, batch_size, accum = len(train), cfg.batch_size, cfg.grad_accum_steps
    batches_per_epoch = math.ceil(num_rows / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = steps_per_epoch * cfg.max_epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(
        cfg.scheduler, optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    order = torch.Generator().manual_seed(seed)  # data order, independent of model init/dropout
    augment_rng = torch.Generator().manual_seed(seed + 1)

    early = cfg.early_stopping
    monitor, mode = _monitor(early, has_val=val is not None)
    best_value, best_state, best_epoch, evals_without_gain = None, None, 0, 0

    progress = TrainingProgress(
        console, max_epochs=cfg.max_epochs, batches_per_epoch=batches_per_epoch, quiet=quiet
    )
    history: list[dict[str, Any]] = []
    step, epoch, stop_reason = 0, 0, "max_epochs"
    try:
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            started = time.perf_counter()
            permutation = torch.randperm(num_rows, generator=order).to(device)
            loss_sum = torch.zeros((), device=device)  # summed on device: no sync per batch
            seen = 0
            for batch in range(batches_per_epoch):
                index = permutation[batch * batch_size : (batch + 1) * batch_size]
                inputs, target = train.batch(index)
                if augment is not None:
                    inputs = augment(inputs, augment_rng)
                with autocast(precision, device):
                    outputs = model(inputs)  # (B, out_dim)
                loss = loss_fn(outputs.float(), target)
                if accum > 1:
                    # Weight each micro-batch by its share of the rows of this optimizer step:
                    # the step then sees the gradient of the mean over all of them, as one big
                    # batch would, also for a short last group or a short last micro-batch.
                    first = batch - batch % accum
                    last = min(first + accum, batches_per_epoch)
                    rows = min(last * batch_size, num_rows) - first * batch_size
                    (loss * (len(index) / rows)).backward()
                else:
                    loss.backward()
                loss_sum += loss.detach() * len(index)
                seen += len(index)
                progress.advance()

                if (batch + 1) % accum and batch + 1 != batches_per_epoch:
                    continue  # accumulate more micro-batches before stepping
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % cfg.log_every_steps == 0:
                    rate = seen / (time.perf_counter() - started)
                    progress.log_step(
                        epoch=epoch, batch=batch + 1, loss=loss.item(), samples_per_s=rate
                    )
                if step >= total_steps:
                    break

            # ---- end of epoch: evaluate, record, check convergence
            elapsed = time.perf_counter() - started
            train_loss = (loss_sum / max(seen, 1)).item()
            lr = optimizer.param_groups[0]["lr"]
            rows = [_row(step, epoch, "train", {"loss": train_loss}, lr, seen / elapsed)]
            if val is not None:
                val_metrics = evaluate(
                    model,
                    val,
                    task=task,
                    loss_fn=loss_fn,
                    class_names=class_names,
                    batch_size=cfg.eval_batch_size or 4 * batch_size,
                    precision=precision,
                    target_scale=target_scale,
                )
                rows.append(_row(step, epoch, "val", scalar_metrics(val_metrics), lr, None))
            history.extend(rows)
            shown = {f"{r['split']}_{k}": v for r in rows for k, v in r["metrics"].items()}
            progress.end_epoch(epoch, _headline(shown), seen / elapsed)
            for row in rows:
                _emit(callbacks, "on_eval_end", row)
            _emit(callbacks, "on_epoch_end", rows[0])

            if monitor is not None:
                if monitor not in shown:
                    raise ConfigError(
                        f"train.early_stopping.monitor={monitor!r} is not a recorded metric; "
                        f"expected one of: {', '.join(sorted(shown))}"
                    )
                value = shown[monitor]
                if _improved(value, best_value, mode, early.min_delta):
                    best_value, best_epoch, evals_without_gain = value, epoch, 0
                    if early.restore_best:
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    evals_without_gain += 1
                    if evals_without_gain >= early.patience:
                        stop_reason = "early_stopping"
                        break
            if cfg.stop_at_loss is not None and train_loss <= cfg.stop_at_loss:
                stop_reason = "loss_threshold"
                break
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
    finally:
        progress.close()

    best: dict[str, Any] = {}
    if monitor is not None and best_value is not None:
        best = {"monitor": monitor, "value": best_value, "epoch": best_epoch}
        if best_state is not None and best_epoch != epoch:
            model.load_state_dict(best_state)  # restore the best weights, as Keras does
            best["restored"] = True
    result = FitResult(history, stop_reason, epoch, step, precision, best)
    _emit(callbacks, "on_train_end", result)
    return result


@torch.no_grad()
def forward_batches(
    model: nn.Module, data: TensorData, *, batch_size: int, precision: str
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Eval-mode outputs batch by batch: yields ((B, out_dim) float32 outputs, (B,) target)."""
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(data), batch_size):
        inputs, target = data.batch(slice(start, start + batch_size))
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        with autocast(precision, device):
            outputs = model(inputs)
        yield outputs.float(), (target.to(device) if target is not None else None)


def evaluate(
    model: nn.Module,
    data: TensorData,
    *,
    task: str,
    loss_fn: LossFn,
    class_names: list[str] | None = None,
    batch_size: int = 256,
    precision: str = "fp32",
    target_scale: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Streaming metrics and mean loss of `model` on labelled `data`.

    `target_scale`: the (mean, std) a regression target was standardised with. The loss stays
    on the standardised scale it is trained on; mae/mse/rmse are reported in the target's units.
    """
    device = next(model.parameters()).device
    metrics = MetricSet(task, class_names=class_names, device=device)
    loss_sum, count = torch.zeros((), device=device), 0
    for outputs, target in forward_batches(model, data, batch_size=batch_size, precision=precision):
        loss_sum += loss_fn(outputs, target) * len(target)
        count += len(target)
        if target_scale is not None:
            mean, std = target_scale
            wide = torch.float32 if device.type == "mps" else torch.float64  # MPS: no float64
            outputs, target = outputs.to(wide) * std + mean, target.to(wide) * std + mean
        metrics.update(outputs, target)
    return {"loss": (loss_sum / max(count, 1)).item(), **metrics.compute()}


# --------------------------------------------------------------------------- helpers


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


HEADLINE = ("loss", "accuracy", "f1_macro", "roc_auc", "rmse", "r2")


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
