"""The table task's eval step: streaming metrics and the mean loss of a model on a labelled split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from forgeml.distributed import global_mean
from forgeml.evaluation.metrics import MetricSet
from forgeml.inference.batches import forward_batches, this_rank
from forgeml.tasks.base import TaskSteps

LossFn = Callable[[Tensor, Tensor], Tensor]


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    task: str,
    loss_fn: LossFn,
    class_names: list[str] | None = None,
    batch_size: int = 256,
    precision: str = "fp32",
    target_scale: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Streaming metrics and mean loss of `model` on labelled `data` (a `TensorData`).

    `target_scale`: the (mean, std) a regression target was standardised with. The loss stays
    on the standardised scale it is trained on; mae/mse/rmse are reported in the target's units.
    Under torchrun each rank scores its slice and the metric states are reduced over ranks.
    """
    device = next(model.parameters()).device
    data = this_rank(model, data, batch_size=batch_size, precision=precision)
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
    return {"loss": global_mean(loss_sum, count), **metrics.compute()}


def table_steps(
    task: str,
    loss: LossFn,
    *,
    eval_batch: int = 256,
    class_names: list[str] | None = None,
    target_scale: tuple[float, float] | None = None,
    augment: Any = None,
) -> TaskSteps:
    """The table task's steps for `forgeml.training.loop.fit`, also for your own loop:

    fit(model, train, val, cfg, steps=table_steps("multiclass", nn.CrossEntropyLoss()), seed=0)
    """

    settings = {"task": task, "loss_fn": loss, "class_names": class_names}
    settings.update(batch_size=eval_batch, target_scale=target_scale)

    def evaluate_split(model: nn.Module, data: Any, precision: str) -> dict[str, Any]:
        return evaluate(model, data, precision=precision, **settings)

    return TaskSteps(loss=loss, evaluate=evaluate_split, augment=augment)
