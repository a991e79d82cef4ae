"""MetricSet against scikit-learn, fed in uneven batches."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from forgeml.evaluation.metrics import MetricSet, metric_mode, primary_metric, scalar_metrics

TOL = 1e-6
BATCHES = [1, 37, 100, 2, 63]  # uneven, sums to 203
N = sum(BATCHES)


def feed(metric_set: MetricSet, outputs: torch.Tensor, target: torch.Tensor) -> dict:
    for idx in torch.split(torch.arange(len(target)), BATCHES):
        metric_set.update(outputs[idx], target[idx])
    return metric_set.compute()


def assert_classification_matches(result: dict, y: np.ndarray, pred: np.ndarray, names: list[str]):
    labels = list(range(len(names)))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert result[f"precision_{average}"] == pytest.approx(p, abs=TOL), average
        assert result[f"recall_{average}"] == pytest.approx(r, abs=TOL), average
        assert result[f"f1_{average}"] == pytest.approx(f, abs=TOL), average
    p, r, f, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    assert list(result["per_class"]) == names
    for i, name in enumerate(names):
        row = result["per_class"][name]
        assert row["precision"] == pytest.approx(p[i], abs=TOL)
        assert row["recall"] == pytest.approx(r[i], abs=TOL)
        assert row["f1"] == pytest.approx(f[i], abs=TOL)
        assert row["support"] == support[i] and isinstance(row["support"], int)
    assert result["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()


@pytest.fixture
def multiclass_data():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (N,), generator=g)
    logits = torch.randn(N, 5, generator=g) + 1.5 * torch.nn.functional.one_hot(target, 5)
    logits[:, 3] -= 100.0  # class 3 is never predicted: its precision is 0 by convention
    return logits, target


@pytest.fixture
def binary_data():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 2, (N,), generator=g)
    logits = torch.randn(N, 1, generator=g) + target[:, None].float()
    return logits, target


def test_multiclass_matches_sklearn(multiclass_data):
    logits, target = multiclass_data
    names = ["ant", "bee", "cat", "dog", "eel"]
    result = feed(MetricSet("multiclass", names), logits, target)
    pred = logits.argmax(1).numpy()
    assert 3 not in pred and 3 in target.numpy()
    assert_classification_matches(result, target.numpy(), pred, names)
    assert "roc_auc" not in result
    assert result["precision_micro"] == pytest.approx(result["accuracy"], abs=TOL)


def test_multiclass_class_absent_everywhere():
    # A class neither in the targets nor predicted: scikit-learn's macro average leaves it out.
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (N,), generator=g)  # class 4 never occurs
    logits = torch.randn(N, 5, generator=g)
    logits[:, 4] -= 100.0
    result = feed(MetricSet("multiclass"), logits, target)
    assert list(result["per_class"]) == ["0", "1", "2", "3", "4"]  # default names, from the width
    assert_classification_matches(result, target.numpy(), logits.argmax(1).numpy(), list("01234"))


def test_binary_matches_sklearn(binary_data):
    logits, target = binary_data
    result = feed(MetricSet("binary", ["neg", "pos"]), logits, target)
    prob = torch.sigmoid(logits[:, 0]).numpy()
    y = target.numpy()
    # scikit-learn conventions over both classes (not just the positive one)
    assert_classification_matches(result, y, (prob > 0.5).astype(int), ["neg", "pos"])
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=TOL)
    assert result["average_precision"] == pytest.approx(
        skm.average_precision_score(y, prob), abs=TOL
    )
    # pr_auc: the name multilabel uses (pr_auc_macro, per_label pr_auc); the same number.
    assert result["pr_auc"] == result["average_precision"]


def test_binary_batch_of_logits_within_unit_interval():
    # torchmetrics reads a batch whose values all lie in [0, 1] as probabilities; mixed with a
    # batch it does squash, that would reorder the scores. MetricSet passes probabilities.
    metric_set = MetricSet("binary")
    metric_set.update(torch.tensor([[0.3], [0.6]]), torch.tensor([1, 0]))
    metric_set.update(torch.tensor([[-0.5], [2.0]]), torch.tensor([0, 1]))
    result = metric_set.compute()
    prob = torch.sigmoid(torch.tensor([0.3, 0.6, -0.5, 2.0])).numpy()
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score([1, 0, 0, 1], prob), abs=TOL)
    assert result["roc_auc"] == pytest.approx(0.75)
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]


def feed_once(task: str, outputs: torch.Tensor, target: torch.Tensor) -> dict:
    metric_set = MetricSet(task)
    metric_set.update(outputs, target)
    return metric_set.compute()


def test_regression_matches_sklearn():
    g = torch.Generator().manual_seed(3)
    target = torch.randn(N, generator=g) * 3.0 + 10.0
    outputs = target[:, None] + torch.randn(N, 1, generator=g)
    result = feed(MetricSet("regression"), outputs, target)
    y, p = target.double().numpy(), outputs[:, 0].double().numpy()
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(y, p), abs=TOL)
    assert result["mse"] == pytest.approx(skm.mean_squared_error(y, p), abs=TOL)
    assert result["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)), abs=TOL)
    assert result["r2"] == pytest.approx(skm.r2_score(y, p), abs=TOL)


def test_regression_r2_small_scale_and_constant_target():
    # Tiny targets: torchmetrics' R2Score would snap r2 to 1 here (rss < 1e-4 absolute).
    g = torch.Generator().manual_seed(4)
    target = torch.randn(50, generator=g) * 1e-3
    outputs = torch.zeros(50, 1)  # always predicts ~the mean: r2 near 0, not 1
    result = feed_once("regression", outputs, target)
    assert result["r2"] == pytest.approx(skm.r2_score(target.double(), outputs[:, 0]), abs=TOL)
    constant = torch.full((10,), 2.5)
    assert feed_once("regression", constant[:, None], constant)["r2"] == 1.0
    assert feed_once("regression", torch.zeros(10, 1), constant)["r2"] == 0.0


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_streaming_equals_one_batch_and_reset(task, multiclass_data, binary_data):
    outputs, target = {
        "multiclass": multiclass_data,
        "binary": binary_data,
        "regression": (multiclass_data[0][:, :1], multiclass_data[0][:, 1]),
    }[task]
    streamed = MetricSet(task)
    result = feed(streamed, outputs, target)
    assert _close(result, feed_once(task, outputs, target))
    streamed.reset()
    streamed.update(outputs[:50], target[:50])
    assert _close(streamed.compute(), feed_once(task, outputs[:50], target[:50]))


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return abs(a - b) <= TOL
    return a == b


def test_bf16_outputs(multiclass_data):
    logits, target = multiclass_data
    names = list("abcde")
    result = feed(MetricSet("multiclass", names), logits.bfloat16(), target)
    pred = logits.bfloat16().float().argmax(1).numpy()
    assert_classification_matches(result, target.numpy(), pred, names)
    outputs, y = logits[:, :1], target.float()
    half = feed_once("regression", outputs.bfloat16(), y)
    full = feed_once("regression", outputs, y)
    # The metrics of the bf16 outputs are computed exactly (in float64), not in bf16 ...
    rounded = outputs.bfloat16().double().numpy()[:, 0]
    assert half["mae"] == pytest.approx(skm.mean_absolute_error(y, rounded), abs=TOL)
    assert half["mse"] == pytest.approx(skm.mean_squared_error(y, rounded), abs=TOL)
    assert half["r2"] == pytest.approx(skm.r2_score(y, rounded), abs=TOL)
    # ... so they differ from fp32 only by bf16's rounding of each output, at most 2^-9 of it:
    # MAE by at most 2^-9 x mean |output|, RMSE by at most 2^-9 x RMS(output).
    x = outputs.double()
    assert abs(half["mae"] - full["mae"]) <= 2**-9 * float(x.abs().mean())
    assert abs(half["rmse"] - full["rmse"]) <= 2**-9 * float(x.square().mean().sqrt())
    assert half["mae"] != full["mae"]  # the rounding did happen: these are bf16 numbers


def test_roc_auc_none_with_one_class_and_no_warning(binary_data):
    logits, _ = binary_data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = feed(MetricSet("binary"), logits, torch.ones(N, dtype=torch.long))
    assert result["roc_auc"] is None and result["average_precision"] is None
    assert result["pr_auc"] is None
    assert result["per_class"]["0"]["support"] == 0


def test_result_is_plain_python(binary_data):
    import json

    result = feed(MetricSet("binary"), *binary_data)
    assert json.loads(json.dumps(result)) == result


def test_wrong_width_is_reported():
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        MetricSet("multiclass", ["a", "b", "c"]).update(torch.zeros(4, 5), torch.zeros(4).long())
    with pytest.raises(ValueError, match="2 classes"):
        MetricSet("binary", ["a", "b", "c"])
    with pytest.raises(ValueError, match="multilabel"):
        MetricSet("ranking")


def test_scalar_metrics_primary_metric_and_mode(multiclass_data):
    result = feed(MetricSet("multiclass"), *multiclass_data)
    scalars = scalar_metrics({**result, "roc_auc": None})
    assert "per_class" not in scalars and "confusion_matrix" not in scalars
    assert "roc_auc" not in scalars
    assert scalars["accuracy"] == result["accuracy"]
    assert all(isinstance(v, float) for v in scalars.values())
    assert primary_metric("multiclass") == ("accuracy", "max")
    assert primary_metric("binary") == ("accuracy", "max")
    assert primary_metric("regression") == ("rmse", "min")
    assert primary_metric("multilabel") == ("f1_micro", "max")
    for name in ("loss", "val_loss", "mae", "test_mse", "val_rmse", "val_hamming_loss"):
        assert metric_mode(name) == "min", name
    for name in ("accuracy", "val_f1_macro", "r2", "roc_auc", "pr_auc", "subset_accuracy"):
        assert metric_mode(name) == "max", name
