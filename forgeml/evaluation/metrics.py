"""Streaming evaluation metrics on torchmetrics: fed batch by batch, exact, synced across processes.

Classification keeps one confusion-matrix state (num_classes x num_classes counts) and derives
accuracy and every precision/recall/F1 average from it, with scikit-learn's conventions
(`zero_division=0`; macro averages over the classes seen in the targets or the predictions).
Binary also reports ROC AUC and average precision (`pr_auc`, also under its older name
`average_precision`) from sigmoid probabilities; those keep every probability and target (exact,
like scikit-learn), so their memory grows with the split.
Multilabel (K independent yes/no labels, threshold 0.5 on each sigmoid probability) keeps per-label
tp/fp/tn/fn counts, the count of exactly right rows and the sum of per-row F1, and for ROC AUC and
average precision every (N, K) probability and target, like binary. scikit-learn's multilabel
conventions: macro averages over all K labels (a label never true nor predicted scores 0), a row
with no true and no predicted label has F1 0. ROC AUC and average precision are undefined for a
label with one class in the targets (scikit-learn gives nan or a warning): such a label gets None
in `per_label` and is left out of `roc_auc_macro` / `pr_auc_macro` (None when no label qualifies).
Regression keeps running sums in float64 (float32 where the device has no float64, e.g. MPS).

`update` never syncs with the host; `compute` syncs the states across processes when
`torch.distributed` is initialised (torchmetrics does it), so every rank gets the global numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from forgeml.schema import Task

_LOWER_IS_BETTER = ("loss", "hamming_loss", "mae", "mse", "rmse")


class MetricSet:
    """The metrics of one split, accumulated over batches.

    Args:
        task: "binary", "multiclass", "multilabel" or "regression".
        class_names: one name per class (multilabel: per label), in index order. Default "0",
            "1", ...; for multiclass and multilabel the count is then taken from the first batch
            (pass names when running distributed, so that a rank without batches still holds the
            states).
        device: where the states live; `update` expects its tensors there.
    """

    def __init__(
        self, task: Task, class_names: list[str] | None = None, device: str | torch.device = "cpu"
    ) -> None:
        # torchmetrics takes ~2 s to import (it pulls scipy and matplotlib): only pay when evaluating.
        from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection
        from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

        if task not in ("binary", "multiclass", "multilabel", "regression"):
            raise ValueError(
                f"unknown task {task!r}; expected binary, multiclass, multilabel or regression"
            )
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
        self._dtype = torch.float32 if self.device.type == "mps" else torch.float64
        if task == "multilabel":
            self._stats: Any = None  # built once the label count is known, see _build_multilabel
            if self.class_names is not None:
                self._build_multilabel(len(self.class_names))
            return
        if task == "regression":
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
            self._prime_ranking()
        if self.class_names is not None:
            self._build_confmat(len(self.class_names))

    def _build_confmat(self, num_classes: int) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        # validate_args=False: the value checks would sync with the host on every batch.
        self._confmat = MulticlassConfusionMatrix(num_classes, validate_args=False).to(self.device)
        if self.class_names is None:
            self.class_names = [str(i) for i in range(num_classes)]

    def _build_multilabel(self, num_labels: int) -> None:
        from torchmetrics import MetricCollection, SumMetric
        from torchmetrics.classification import (
            MultilabelAUROC,
            MultilabelAveragePrecision,
            MultilabelStatScores,
        )

        if self.class_names is None:
            self.class_names = [str(i) for i in range(num_labels)]
        # Per-label tp, fp, tn, fn (K,) int64 counts. Fed 0/1 predictions, not probabilities:
        # the threshold is ours (prob > 0.5, as binary). validate_args=False: no host syncs.
        self._stats = MultilabelStatScores(num_labels, average=None, validate_args=False)
        self._stats.to(self.device)
        exact = {"nan_strategy": "disable"}  # the NaN check would sync with the host
        # Rows predicted exactly right, and the sum of per-row F1 (f1_samples = sum / rows).
        self._row_sums = MetricCollection(
            {"exact": SumMetric(**exact), "f1_sum": SumMetric(**exact)}, compute_groups=False
        ).to(self.device)
        self._row_sums.set_dtype(self._dtype)
        # Both keep the same (N, K) probability and target lists: one compute group stores them
        # once, 5 bytes per row and label (float32 probability, uint8 target). thresholds=None:
        # exact curves, like scikit-learn.
        ranking = {"thresholds": None, "average": None, "validate_args": False}
        self._ranking = MetricCollection(
            {
                "roc_auc": MultilabelAUROC(num_labels, **ranking),
                "pr_auc": MultilabelAveragePrecision(num_labels, **ranking),
            },
            compute_groups=[["roc_auc", "pr_auc"]],
        ).to(self.device)
        self._prime_ranking()

    def _prime_ranking(self) -> None:
        # An empty batch, (0,) binary or (0, K) multilabel, so that the probability and target
        # lists are never empty: torchmetrics syncs an empty list state as a 1-D float tensor,
        # which does not match the other ranks' (n,) / (n, K) integer targets, and a rank
        # without batches would break the all_gather.
        if self.task == "binary":
            shape, target_dtype = (0,), torch.long
        else:
            shape, target_dtype = (0, len(self.class_names)), torch.uint8
        self._ranking.update(
            torch.empty(shape, device=self.device),
            torch.empty(shape, dtype=target_dtype, device=self.device),
        )

    def update(self, outputs: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            outputs: raw model outputs (B, out_dim), any float dtype: multiclass logits (B, C),
                binary logit (B, 1), multilabel logits (B, K), regression value (B, 1).
            target: class index int64 (B,) for binary/multiclass, multi-hot (B, K) 0./1. (any
                dtype) for multilabel, float (B,) for regression.
        """
        outputs = outputs.detach().float()  # bf16 -> fp32 before any arithmetic
        target = target.detach()
        if self.task == "multilabel":
            self._update_multilabel(outputs, target)
            return
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

    def _update_multilabel(self, outputs: Tensor, target: Tensor) -> None:
        if self._stats is None:
            self._build_multilabel(outputs.shape[-1])
        _check_width(outputs, len(self.class_names), self.task)
        if target.shape != outputs.shape:
            raise ValueError(
                f"multilabel targets must have the outputs' shape {tuple(outputs.shape)} "
                f"(one 0/1 per label), got {tuple(target.shape)}"
            )
        probs = torch.sigmoid(outputs)  # (B, K)
        preds = probs > 0.5  # (B, K) bool
        truth = target > 0.5  # (B, K) bool; multi-hot 0./1. floats or ints
        self._stats.update(preds.long(), truth.long())
        # Probabilities, not logits (see binary). uint8 targets: a quarter of int64's memory;
        # torchmetrics compares them with 1 before counting.
        self._ranking.update(probs, truth.to(torch.uint8))
        # Per row: exactly right?, and F1 = 2|true & predicted| / (|true| + |predicted|), 0 for a
        # row with neither (scikit-learn's zero_division=0).
        hits = (preds & truth).sum(dim=1).to(self._dtype)  # (B,)
        sizes = (preds.sum(dim=1) + truth.sum(dim=1)).to(self._dtype)  # (B,)
        row_f1 = torch.where(sizes > 0, 2 * hits / sizes.clamp(min=1), torch.zeros_like(hits))
        self._row_sums["exact"].update((preds == truth).all(dim=1).to(self._dtype))
        self._row_sums["f1_sum"].update(row_f1)

    def compute(self) -> dict[str, Any]:
        """The metrics of everything seen since the last reset, as plain Python values."""
        if self.task == "regression":
            return self._compute_regression()
        if self.task == "multilabel":
            return self._compute_multilabel()
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
            # `pr_auc` is the name multilabel uses too; `average_precision` stays for the code
            # and the metrics.json readers that know binary by it.
            result["pr_auc"] = result["average_precision"]
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

    def _compute_multilabel(self) -> dict[str, Any]:
        if self._stats is None:
            raise RuntimeError(
                "MetricSet.compute() was called before any update() and without class_names; "
                "pass class_names or feed at least one batch"
            )
        stats = self._stats.compute().reshape(-1, 5).double()  # (K, 5): tp, fp, tn, fn, support
        tp, fp, tn, fn, _ = stats.unbind(dim=1)  # each (K,)
        num_labels = len(self.class_names)
        rows = float(tp[0] + fp[0] + tn[0] + fn[0])  # every label sees every row
        sums = {name: float(value) for name, value in self._row_sums.compute().items()}
        scores = {
            "precision": _safe_div(tp, tp + fp),
            "recall": _safe_div(tp, tp + fn),
            "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        }
        errors = float((fp + fn).sum())
        result: dict[str, Any] = {
            # Exact match ratio: rows whose K predictions are all right (scikit-learn's
            # accuracy_score on multilabel targets).
            "subset_accuracy": sums["exact"] / max(rows, 1.0),
            # Mean over labels of each label's accuracy (tp + tn) / rows, = 1 - hamming_loss.
            # Not the multiclass notion: negatives dominate it when labels are sparse.
            "accuracy": float(((tp + tn) / rows).mean()) if rows else 0.0,
            # Share of the rows x labels decisions that are wrong.
            "hamming_loss": errors / max(rows * num_labels, 1.0),
        }
        micro = {
            "precision": _safe_ratio(tp.sum(), (tp + fp).sum()),
            "recall": _safe_ratio(tp.sum(), (tp + fn).sum()),
            "f1": _safe_ratio(2 * tp.sum(), (2 * tp + fp + fn).sum()),
        }
        for name, values in scores.items():
            result[f"{name}_micro"] = micro[name]
            result[f"{name}_macro"] = float(values.mean())  # over all K labels, as scikit-learn
        result["f1_samples"] = sums["f1_sum"] / max(rows, 1.0)
        ranked = self._compute_multilabel_ranking(positives=tp + fn, negatives=fp + tn)
        for name, values in ranked.items():
            defined = [v for v in values if v is not None]
            result[f"{name}_macro"] = sum(defined) / len(defined) if defined else None
        result["per_label"] = {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(tp[i] + fn[i]),  # rows where the label is true
                "roc_auc": ranked["roc_auc"][i],
                "pr_auc": ranked["pr_auc"][i],
            }
            for i, name in enumerate(self.class_names)
        }
        return result

    def _compute_multilabel_ranking(
        self, *, positives: Tensor, negatives: Tensor
    ) -> dict[str, list[float | None]]:
        """Per-label ROC AUC and average precision; None for a label with one class in the targets.

        The counts are already global, so every rank takes the same branch (compute() syncs).
        """
        defined = ((positives > 0) & (negatives > 0)).tolist()  # K bools
        if not any(defined):
            return {"roc_auc": [None] * len(defined), "pr_auc": [None] * len(defined)}
        with warnings.catch_warnings():
            # torchmetrics warns about the one-class labels, whose values are dropped below.
            warnings.simplefilter("ignore")
            values = self._ranking.compute()
        return {
            name: [
                float(v) if ok else None
                for v, ok in zip(values[name].reshape(-1).tolist(), defined, strict=True)
            ]
            for name in ("roc_auc", "pr_auc")
        }

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
        if self.task == "multilabel":
            if self._stats is not None:
                for metric in (self._stats, self._row_sums, self._ranking):
                    metric.reset()
                self._prime_ranking()
            return
        if self._confmat is not None:
            self._confmat.reset()
        if self.task == "binary":
            self._ranking.reset()
            self._prime_ranking()


def scalar_metrics(result: dict) -> dict[str, float]:
    """The top-level numbers of a `MetricSet.compute()` result (for history lines and progress).

    Drops what is not a number: per_class / per_label dicts, confusion_matrix lists, and None
    (an undefined AUC)."""
    return {
        name: float(value)
        for name, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def primary_metric(task: Task) -> tuple[str, str]:
    """The metric that says how good a model is, and whether higher ("max") or lower ("min") wins.

    Multilabel: micro F1, since its mean per-label `accuracy` is mostly the easy negatives."""
    if task == "regression":
        return ("rmse", "min")
    return ("f1_micro", "max") if task == "multilabel" else ("accuracy", "max")


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


def _safe_ratio(num: Tensor, den: Tensor) -> float:
    """float(num / den) of two scalars, 0 where den == 0 (scikit-learn's zero_division=0)."""
    return float(num / den) if float(den) > 0 else 0.0


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
