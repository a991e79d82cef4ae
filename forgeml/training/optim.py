"""Optimizers, learning-rate schedules and losses, built by name from the train config."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.config import LossConfig, OptimizerConfig, SchedulerConfig
from forgeml.errors import ConfigError


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over the trainable parameters of `model`.

    With weight decay, only matrices and higher (Linear/conv weights, embeddings) are decayed;
    biases and normalisation gains (1-D) form a second group without decay, as in GPT-2,
    nanoGPT and the Hugging Face Trainer: decaying a LayerNorm gain towards 0 only hurts.
    """
    params: list = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay > 0:
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        if decay and no_decay:
            params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(
    cfg: SchedulerConfig,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-optimizer-step schedule: linear warmup, then constant / step / cosine; or one-cycle.

    None for a constant rate without warmup: nothing to step (and nothing to pay per step).
    """
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    if cfg.name == "constant" and warmup == 0:
        return None
    if cfg.name == "onecycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        # OneCycle has its own warmup phase; default to 30% of the run as in the paper's recipe.
        pct = warmup / total_steps if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=max(total_steps, 2), pct_start=min(pct, 0.99)
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "step":
            return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
        if cfg.name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
            return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_loss(cfg: LossConfig, task: str, class_weights: Tensor | None = None):
    """Returns loss(outputs, target) -> scalar for the task.

    outputs: (B, C) logits (multiclass), (B, K) logits (multilabel) or (B, 1) logit / value;
    target: (B,) int64 (binary, multiclass), (B, K) float32 multi-hot 0./1. (multilabel) or (B,)
    float32 (regression).

    class_weights: multiclass/binary: one weight per class, (C,) / (2,). Multilabel: one
    positive-class weight per label, (K,), torch's `pos_weight` (a label's positive terms count
    that many times, e.g. neg/pos to balance a rare label).

    label_smoothing: multiclass as torch's cross_entropy; multilabel smooths each 0/1 target
    towards 0.5, y * (1 - eps) + 0.5 * eps (a 1 becomes 1 - eps/2, a 0 becomes eps/2); binary
    and regression ignore it.
    """
    if task == "multilabel":
        return _multilabel_loss(cfg.label_smoothing, class_weights)
    if task == "multiclass":
        # The function, not the nn.Module: a few microseconds less per step, same arithmetic.
        return functools.partial(
            F.cross_entropy, weight=class_weights, label_smoothing=cfg.label_smoothing
        )
    if task == "binary":

        def binary(outputs: Tensor, target: Tensor) -> Tensor:
            if outputs.ndim != 2 or outputs.shape[1] != 1:  # shapes are on the host: no sync
                raise ConfigError(
                    f"a binary task needs one logit per row, outputs (batch, 1); the model "
                    f"returned {tuple(outputs.shape)}; make its last layer output 1 (its sigmoid "
                    "is the probability of the positive class)"
                )
            weight = class_weights[target] if class_weights is not None else None
            return F.binary_cross_entropy_with_logits(
                outputs.squeeze(1), target.to(outputs.dtype), weight=weight
            )

        return binary
    if cfg.regression == "huber":
        huber = nn.HuberLoss(delta=cfg.huber_delta)
        return lambda outputs, target: huber(outputs.squeeze(1), target.to(outputs.dtype))
    return lambda outputs, target: F.mse_loss(outputs.squeeze(1), target.to(outputs.dtype))


def _multilabel_loss(smoothing: float, pos_weight: Tensor | None):
    """Mean binary cross-entropy with logits over all B x K (row, label) entries."""
    if pos_weight is not None and pos_weight.ndim != 1:
        raise ValueError(
            f"multilabel class_weights must be one weight per label, shape (K,), "
            f"got {tuple(pos_weight.shape)}"
        )

    def multilabel(outputs: Tensor, target: Tensor) -> Tensor:
        # Shapes are known on the host: checking costs no sync. A (1,) weight would broadcast
        # silently, and torch's own messages name neither the task nor the config key.
        if target.shape != outputs.shape or (
            pos_weight is not None and pos_weight.shape[0] != outputs.shape[-1]
        ):
            weights = None if pos_weight is None else tuple(pos_weight.shape)
            raise ValueError(
                f"multilabel loss: outputs {tuple(outputs.shape)} need (batch, labels) targets of "
                f"the same shape and one class weight per label; got targets "
                f"{tuple(target.shape)}, class_weights {weights}"
            )
        target = target.to(outputs.dtype)
        if smoothing:
            target = target * (1.0 - smoothing) + 0.5 * smoothing
        weight = pos_weight.to(outputs.dtype) if pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(outputs, target, pos_weight=weight)

    return multilabel
