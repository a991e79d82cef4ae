"""Streaming evaluation metrics on torchmetrics: fed batch by batch, exact, synced across processes.

Classification keeps one confusion-matrix state (num_classes x num_classes counts) and derives
accuracy and every precision/recall/F1 average from it, with scikit-learn's conventions
(`zero_division=0`; macro averages over the classes seen in the targets or the predictions).
Binary also reports ROC AUC and average precision from sigmoid probabilities; those keep every
probability and target (exact, like scikit-learn), so their memory grows with the split.
Regression keeps running sums in float64 (float32 where the device has no float64, e.g. MPS).

`update` never syncs with the host; `compute` syncs the states across processes when
`torch.distributed` is initialised (torchmetrics does it), so every rank gets the global numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from forgeml.data.schema import Task

_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse")


class MetricSet:
    """The metrics of one split, accumulated over batches.

    Args:
        task: "binary", "multiclass" or "regression".
        class_names: one name per class, in class-index order. Default "0", "1", ...; for
            multiclass the count is then taken from the first batch (pass names when running
            distributed, so that a rank without batches still holds the states).
        device: where the states live; `update` expects its tensors there.
    """

    def __init__(
        self, task: Task, class_names: list[str] | None = None, device: str | torch.device = "cpu"
    ) -> None:
        # torchmetrics takes ~2 s to import (it pulls scipy and matplotlib): only pay when evaluating.
        from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection
        from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

        if task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"unknown task {task!r}; expected binary, multiclass or regression")
        if task == "binary":
            class_names = class_names or ["0", "1"]
            if len(class_names) != 2:
                raise ValueError(f"a binary task has 2 classes, got class_names={class_names}")
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be unique, got {class_names}")
        self.task = task
        self.class_names = list(class_names) if class_names is not None else None
        self.device = torch.device(device)
        self._confmat: Any = None  # MulticlassConfusionMatrix, built once the class count is known
        if task == "regression":
            self._dtype = torch.float32 if self.device.type == "mps" else torch.float64
            # r2 = 1 - mse / var(target), var = E[y^2] - E[y]^2. torchmetrics' R2Score snaps
            # rss/tss below an absolute 1e-4 to r2 = 1 or 0, which is wrong for small-scale targets.
            exact = {"nan_strategy": "disable"}  # the NaN check would sync with the host
            self._regression = MetricCollection(
                {
                    "mae": MeanAbsoluteError(),
                    "mse": MeanSquaredError(),
                    "target_mean": MeanMetric(**exact),
                    "target_sq_mean": MeanMetric(**exact),
                },
                compute_groups=False,  # each metric gets its own inputs in update()
            ).to(self.device)
            self._regression.set_dtype(self._dtype)
            return
        if task == "binary":
            # Both keep the same (probability, target) lists: one compute group stores them once.
            self._ranking = MetricCollection(
                {
                    "roc_auc": BinaryAUROC(validate_args=False),
                    "average_precision": BinaryAveragePrecision(validate_args=False),
                },
                compute_groups=[["roc_auc", "average_precision"]],
            ).to(self.device)
        if self.class_names is not None:
            self._build_confmat(len(self.class_names))

    def _build_confmat(self, num_classes: int) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        # validate_args=False: the value checks would sync with the host on every batch.
        self._confmat = MulticlassConfusionMatrix(num_classes, validate_args=False).to(self.device)
        if self.class_names is None:
            self.class_names = [str(i) for i in range(num_classes)]

    def update(self, outputs: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            outputs: raw model outputs (B, out_dim), any float dtype: multiclass logits (B, C),
                binary logit (B, 1), regression value (B, 1).
            target: class index int64 (B,) for classification, float (B,) for regression.
        """
        outputs = outputs.detach().float()  # bf16 -> fp32 before any arithmetic
        target = target.detach()
        if self.task == "regression":
            _check_width(outputs, 1, self.task)
            preds, target = outputs.reshape(-1).to(self._dtype), target.reshape(-1).to(self._dtype)
            for name in ("mae", "mse"):
                self._regression[name].update(preds, target)
            self._regression["target_mean"].update(target)
            self._regression["target_sq_mean"].update(target * target)
            return
        if self.task == "binary":
            _check_width(outputs, 1, self.task)
            probs = torch.sigmoid(outputs.reshape(-1))  # (B,)
            # Probabilities, not logits: torchmetrics would take a batch of logits that all
            # happen to lie in [0, 1] for probabilities.
            self._ranking.update(probs, target)
            preds = (probs > 0.5).long()
        else:
            if self._confmat is None:
                self._build_confmat(outputs.shape[-1])
            _check_width(outputs, len(self.class_names), self.task)
            preds = outputs.argmax(dim=-1)  # (B,)
        self._confmat.update(preds, target)

    def compute(self) -> dict[str, Any]:
        """The metrics of everything seen since the last reset, as plain Python values."""
        if self.task == "regression":
            return self._compute_regression()
        if self._confmat is None:
            raise RuntimeError(
                "MetricSet.compute() was called before any update() and without class_names; "
                "pass class_names or feed at least one batch"
            )
        matrix = self._confmat.compute()  # (C, C) int64: rows = true class, cols = predicted
        cm = matrix.double()
        tp, support, predicted = cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0)
        scores = {
            "precision": _safe_div(tp, predicted),
            "recall": _safe_div(tp, support),
            "f1": _safe_div(2 * tp, support + predicted),  # 2tp / (2tp + fp + fn)
        }
        seen = (support + predicted > 0).double()  # scikit-learn's default labels
        total = support.sum().clamp(min=1)
        result: dict[str, Any] = {"accuracy": float(tp.sum() / total)}
        for name, values in scores.items():
            result[f"{name}_macro"] = float((values * seen).sum() / seen.sum().clamp(min=1))
        for name in scores:
            # Single-label: each false positive is another class's false negative, so micro
            # precision = recall = F1 = accuracy.
            result[f"{name}_micro"] = result["accuracy"]
        for name, values in scores.items():
            result[f"{name}_weighted"] = float((values * support).sum() / total)
        if self.task == "binary":
            result.update(self._compute_ranking(support))
        result["per_class"] = {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(matrix[i].sum()),
            }
            for i, name in enumerate(self.class_names)
        }
        result["confusion_matrix"] = matrix.tolist()
        return result

    def _compute_ranking(self, support: Tensor) -> dict[str, float | None]:
        # Undefined with a single class in the targets (scikit-learn raises or warns, torchmetrics
        # warns and returns 0): report None. `support` is already global, so all ranks agree.
        if bool((support == 0).any()):
            return {"roc_auc": None, "average_precision": None}
        values = self._ranking.compute()
        return {name: float(values[name]) for name in ("roc_auc", "average_precision")}

    def _compute_regression(self) -> dict[str, float | None]:
        values = {name: float(value) for name, value in self._regression.compute().items()}
        mse = values["mse"]
        var = values["target_sq_mean"] - values["target_mean"] ** 2
        if var > 1e-12 * values["target_sq_mean"]:
            r2 = 1.0 - mse / var
        elif math.isfinite(var):  # constant target: scikit-learn's force_finite convention
            r2 = 1.0 if mse == 0 else 0.0
        else:  # no rows
            r2 = math.nan
        result = {"mae": values["mae"], "mse": mse, "rmse": math.sqrt(mse), "r2": r2}
        return {name: value if math.isfinite(value) else None for name, value in result.items()}

    def reset(self) -> None:
        """Forget every batch seen so far."""
        if self.task == "regression":
            self._regression.reset()
            return
        if self._confmat is not None:
            self._confmat.reset()
        if self.task == "binary":
            self._ranking.reset()


def scalar_metrics(result: dict) -> dict[str, float]:
    """The top-level numbers of a `MetricSet.compute()` result (for history lines and progress)."""
    return {
        name: float(value)
        for name, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def primary_metric(task: Task) -> tuple[str, str]:
    """The metric that says how good a model is, and whether higher ("max") or lower ("min") wins."""
    return ("rmse", "min") if task == "regression" else ("accuracy", "max")


def metric_mode(name: str) -> str:
    """Which way is better: "min" for losses and errors (val_loss, test_rmse, ...), else "max"."""
    return "min" if name.lower().endswith(_LOWER_IS_BETTER) else "max"


def _check_width(outputs: Tensor, width: int, task: str) -> None:
    # Shapes are known on the host: checking them costs no sync.
    if outputs.ndim != 2 or outputs.shape[1] != width:
        raise ValueError(
            f"{task} outputs must have shape (batch, {width}), got {tuple(outputs.shape)}; "
            f"check the model's out_dim"
        )


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
