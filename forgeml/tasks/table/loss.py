"""The table task's losses, by target kind: cross-entropy, binary and multi-label BCE, MSE/Huber."""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.config import LossConfig
from forgeml.errors import ConfigError


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
