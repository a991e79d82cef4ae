"""Multilabel MetricSet against scikit-learn, fed in several batch splits."""

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from forgeml.evaluation.metrics import MetricSet, metric_mode, primary_metric, scalar_metrics

TOL = 1e-6
N = 203
NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]
SPLITS = [[1, 37, 100, 2, 63], [N], [50, 50, 50, 50, 3]]


def feed(metric_set: MetricSet, outputs: torch.Tensor, target: torch.Tensor, sizes) -> dict:
    for idx in torch.split(torch.arange(len(target)), sizes):
        metric_set.update(outputs[idx], target[idx])
    return metric_set.compute()


def make_data(corner: str = "always_true"):
    """(N, 6) logits and float multi-hot targets with the corners scikit-learn has a rule for.

    always_true: label eel is true on every row (no negatives: one-class AUC).
    empty_rows: the first 10 rows have no true and no predicted label (row F1 0).
    """
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(N, len(NAMES), generator=g) < 0.3).float()
    target[:, 3] = 0.0  # dog: never true -> recall 0/0, one-class AUC (left out of the macro)
    logits = torch.randn(N, len(NAMES), generator=g) + 2.0 * target - 1.0
    logits[:, 5] -= 100.0  # fox: never predicted -> precision 0/0
    if corner == "always_true":
        target[:, 4] = 1.0
    else:
        target[:10] = 0.0
        logits[:10] -= 100.0
    logits[:, 0] = torch.round(logits[:, 0])  # ties in the scores: exact curves must handle them
    return logits, target


@pytest.fixture
def data():
    return make_data()


@pytest.mark.parametrize("corner", ["always_true", "empty_rows"])
def test_multilabel_matches_sklearn_for_each_batch_split(corner):
    logits, target = make_data(corner)
    prob = torch.sigmoid(logits).numpy()
    y = target.numpy().astype(int)
    pred = (prob > 0.5).astype(int)
    assert pred[:, 5].sum() == 0 and y[:, 3].sum() == 0
    if corner == "always_true":
        assert y[:, 4].min() == 1
        valid = [0, 1, 2, 5]  # labels with both classes in the targets
    else:
        assert ((y.sum(1) == 0) & (pred.sum(1) == 0)).sum() >= 10
        valid = [0, 1, 2, 4, 5]
    for sizes in SPLITS:
        r = feed(MetricSet("multilabel", NAMES), logits, target, sizes)
        assert r["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
        assert r["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred), abs=TOL)
        per_label_acc = [skm.accuracy_score(y[:, k], pred[:, k]) for k in range(len(NAMES))]
        assert r["accuracy"] == pytest.approx(np.mean(per_label_acc), abs=TOL)
        assert r["accuracy"] == pytest.approx(1.0 - r["hamming_loss"], abs=TOL)
        for average in ("micro", "macro"):
            p, rc, f, _ = skm.precision_recall_fscore_support(
                y, pred, average=average, zero_division=0
            )
            assert r[f"precision_{average}"] == pytest.approx(p, abs=TOL), average
            assert r[f"recall_{average}"] == pytest.approx(rc, abs=TOL), average
            assert r[f"f1_{average}"] == pytest.approx(f, abs=TOL), average
        _, _, f_samples, _ = skm.precision_recall_fscore_support(
            y, pred, average="samples", zero_division=0
        )
        assert r["f1_samples"] == pytest.approx(f_samples, abs=TOL)
        assert r["roc_auc_macro"] == pytest.approx(
            skm.roc_auc_score(y[:, valid], prob[:, valid], average="macro"), abs=TOL
        )
        assert r["pr_auc_macro"] == pytest.approx(
            skm.average_precision_score(y[:, valid], prob[:, valid], average="macro"), abs=TOL
        )
        p, rc, f, support = skm.precision_recall_fscore_support(
            y, pred, average=None, zero_division=0
        )
        assert list(r["per_label"]) == NAMES
        for k, name in enumerate(NAMES):
            row = r["per_label"][name]
            assert row["precision"] == pytest.approx(p[k], abs=TOL), name
            assert row["recall"] == pytest.approx(rc[k], abs=TOL), name
            assert row["f1"] == pytest.approx(f[k], abs=TOL), name
            assert row["support"] == support[k] and isinstance(row["support"], int), name
            if k in valid:
                assert row["roc_auc"] == pytest.approx(
                    skm.roc_auc_score(y[:, k], prob[:, k]), abs=TOL
                )
                assert row["pr_auc"] == pytest.approx(
                    skm.average_precision_score(y[:, k], prob[:, k]), abs=TOL
                )
            else:  # one class in the targets: undefined, and not in the macro averages
                assert row["roc_auc"] is None and row["pr_auc"] is None, name
        assert "confusion_matrix" not in r and "per_class" not in r


def test_f1_samples_and_zero_division_by_hand():
    # Rows: exact hit; neither true nor predicted (F1 0, but an exact match); half right; missed.
    target = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    predicted = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0]])
    metric_set = MetricSet("multilabel", ["a", "b", "c"])
    metric_set.update(predicted * 20.0 - 10.0, target)
    r = metric_set.compute()
    assert r["subset_accuracy"] == pytest.approx(2 / 4)
    assert r["f1_samples"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert r["hamming_loss"] == pytest.approx(3 / 12)
    assert r["precision_micro"] == pytest.approx(2 / 3) and r["recall_micro"] == pytest.approx(
        2 / 4
    )
    # c: never true, predicted once -> precision 0, recall 0/0 = 0; it still counts in the macro.
    assert r["per_label"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "roc_auc": None,
        "pr_auc": None,
    }
    assert r["precision_macro"] == pytest.approx((1 + 1 + 0) / 3)


def test_no_label_with_both_classes_gives_none_without_warnings(data):
    logits, _ = data
    target = torch.zeros(N, len(NAMES))
    target[:, 1] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = feed(MetricSet("multilabel", NAMES), logits, target, SPLITS[0])
    assert r["roc_auc_macro"] is None and r["pr_auc_macro"] is None
    assert all(row["roc_auc"] is None for row in r["per_label"].values())
    scalars = scalar_metrics(r)
    assert "roc_auc_macro" not in scalars and "per_label" not in scalars


def test_one_class_labels_raise_no_warning(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = feed(MetricSet("multilabel", NAMES), *data, SPLITS[0])
    assert r["roc_auc_macro"] is not None


def test_streaming_equals_one_batch_and_reset(data):
    logits, target = data
    metric_set = MetricSet("multilabel")  # names from the first batch's width
    streamed = feed(metric_set, logits, target, SPLITS[0])
    assert list(streamed["per_label"]) == ["0", "1", "2", "3", "4", "5"]
    one = feed(MetricSet("multilabel"), logits, target, [N])
    assert _close(streamed, one)
    metric_set.reset()
    metric_set.update(logits[:50], target[:50])
    assert _close(
        metric_set.compute(), feed(MetricSet("multilabel"), logits[:50], target[:50], [50])
    )


def test_int_targets_and_bf16_outputs(data):
    logits, target = data
    reference = feed(MetricSet("multilabel", NAMES), logits, target, SPLITS[0])
    assert _close(feed(MetricSet("multilabel", NAMES), logits, target.long(), SPLITS[0]), reference)
    r = feed(MetricSet("multilabel", NAMES), logits.bfloat16(), target, SPLITS[0])
    pred = (torch.sigmoid(logits.bfloat16().float()) > 0.5).numpy()
    assert r["f1_micro"] == pytest.approx(skm.f1_score(target.numpy(), pred, average="micro"))


# torchmetrics warns that compute() comes before any update(): that is the point here.
@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_no_rows_and_shape_errors():
    r = MetricSet("multilabel", ["a", "b"]).compute()  # a rank without batches
    assert r["subset_accuracy"] == 0.0 and r["hamming_loss"] == 0.0 and r["f1_samples"] == 0.0
    assert r["roc_auc_macro"] is None and r["per_label"]["a"]["support"] == 0
    with pytest.raises(RuntimeError, match="class_names"):
        MetricSet("multilabel").compute()
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        MetricSet("multilabel", ["a", "b"]).update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="outputs' shape"):
        MetricSet("multilabel", ["a", "b"]).update(torch.zeros(4, 2), torch.zeros(4).long())


def test_result_is_plain_python_and_scalars(data):
    r = feed(MetricSet("multilabel", NAMES), *data, SPLITS[0])
    assert json.loads(json.dumps(r)) == r
    scalars = scalar_metrics(r)
    assert set(scalars) == {
        "subset_accuracy",
        "accuracy",
        "hamming_loss",
        "precision_micro",
        "precision_macro",
        "recall_micro",
        "recall_macro",
        "f1_micro",
        "f1_macro",
        "f1_samples",
        "roc_auc_macro",
        "pr_auc_macro",
    }
    assert all(isinstance(v, float) for v in scalars.values())
    assert primary_metric("multilabel") == ("f1_micro", "max")
    assert metric_mode("hamming_loss") == "min" and metric_mode("val_hamming_loss") == "min"
    for name in ("subset_accuracy", "val_f1_samples", "roc_auc_macro", "test_pr_auc_macro"):
        assert metric_mode(name) == "max", name


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return abs(a - b) <= TOL
    return a == b
