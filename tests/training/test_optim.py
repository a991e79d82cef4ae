"""Optimizers, learning-rate schedules and losses, built by name from the train config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgeml.config import LossConfig, OptimizerConfig, SchedulerConfig
from forgeml.tasks.table.loss import build_loss
from forgeml.training.optim import build_optimizer, build_scheduler


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def lr_trace(cfg: SchedulerConfig, *, lr: float, total_steps: int, steps_per_epoch: int):
    """The lr each optimizer step uses, then the lr after the last step."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = build_scheduler(
        cfg, optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    used = []
    for _ in range(total_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:  # constant without warmup: no scheduler at all
            scheduler.step()
    return used, optimizer.param_groups[0]["lr"]


# --------------------------------------------------------------------------- optimizers


def test_sgd_gets_the_config_hyper_parameters() -> None:
    cfg = OptimizerConfig(name="sgd", lr=0.3, momentum=0.8, nesterov=True, weight_decay=0.01)
    optimizer = build_optimizer(cfg, tiny_model())
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.3
    assert group["momentum"] == 0.8
    assert group["nesterov"] is True
    assert group["weight_decay"] == 0.01


def test_sgd_without_momentum_turns_nesterov_off() -> None:
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, nesterov=True)
    optimizer = build_optimizer(cfg, tiny_model())  # torch rejects nesterov without momentum
    assert optimizer.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize(
    ("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_adam_family_gets_the_config_hyper_parameters(name: str, cls: type) -> None:
    cfg = OptimizerConfig(name=name, lr=0.02, weight_decay=0.05, betas=(0.8, 0.95), eps=1e-6)
    optimizer = build_optimizer(cfg, tiny_model())
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.02
    assert tuple(group["betas"]) == (0.8, 0.95)
    assert group["eps"] == 1e-6
    assert group["weight_decay"] == 0.05


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_skips_biases_and_norm_gains(name: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = build_optimizer(OptimizerConfig(name=name, weight_decay=0.1), model)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(plain["params"]) == 4  # two biases, the LayerNorm weight and bias
    without = build_optimizer(OptimizerConfig(name=name, weight_decay=0.0), model)
    assert len(without.param_groups) == 1


def test_frozen_parameters_are_not_optimized() -> None:
    model = tiny_model()
    model[0].requires_grad_(False)
    optimizer = build_optimizer(OptimizerConfig(), model)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model[1].parameters()}


# --------------------------------------------------------------------------- schedules


def test_constant_schedule() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    assert build_scheduler(SchedulerConfig(), optimizer, total_steps=20, steps_per_epoch=5) is None
    used, last = lr_trace(SchedulerConfig(), lr=0.1, total_steps=20, steps_per_epoch=5)
    assert used == [0.1] * 20 and last == 0.1


@pytest.mark.parametrize("warmup", [{"warmup_steps": 10}, {"warmup_ratio": 0.1}])
def test_warmup_is_linear(warmup: dict) -> None:
    cfg = SchedulerConfig(name="constant", **warmup)
    used, _ = lr_trace(cfg, lr=2.0, total_steps=100, steps_per_epoch=10)
    # The first step already moves (lr/10), the 10th uses the full lr; equal increments between.
    assert used[:10] == pytest.approx([2.0 * (i + 1) / 10 for i in range(10)])
    assert used[10:] == pytest.approx([2.0] * 90)


def test_cosine_reaches_min_lr_ratio_at_the_end() -> None:
    cfg = SchedulerConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    used, last = lr_trace(cfg, lr=1.0, total_steps=110, steps_per_epoch=11)
    assert used[9] == pytest.approx(1.0)  # end of warmup: the peak
    assert used[10] == pytest.approx(1.0)  # cosine starts at the peak
    decay = used[10:]
    assert all(b <= a + 1e-12 for a, b in zip(decay, decay[1:], strict=False))  # never rises
    assert used[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: the midpoint of peak and floor
    assert last == pytest.approx(0.1)  # after the final step: exactly the floor
    assert min(decay) >= 0.1 - 1e-12  # the floor holds for the whole decay


def test_cosine_without_warmup_or_floor_ends_at_zero() -> None:
    used, last = lr_trace(SchedulerConfig(name="cosine"), lr=0.5, total_steps=40, steps_per_epoch=4)
    assert used[0] == pytest.approx(0.5)
    assert used[20] == pytest.approx(0.25)
    assert last == pytest.approx(0.0, abs=1e-12)


def test_step_decays_by_gamma_every_step_epochs() -> None:
    cfg = SchedulerConfig(name="step", step_epochs=2, gamma=0.5)
    used, _ = lr_trace(cfg, lr=0.8, total_steps=60, steps_per_epoch=10)
    # Epochs 1-2 (steps 0..19) at 0.8, epochs 3-4 at 0.4, epochs 5-6 at 0.2.
    assert used[:20] == pytest.approx([0.8] * 20)
    assert used[20:40] == pytest.approx([0.4] * 20)
    assert used[40:60] == pytest.approx([0.2] * 20)


def test_onecycle_peaks_at_lr() -> None:
    cfg = SchedulerConfig(name="onecycle")
    used, last = lr_trace(cfg, lr=0.5, total_steps=100, steps_per_epoch=10)
    peak = max(used)
    assert peak == pytest.approx(0.5, rel=1e-6)
    assert 25 <= used.index(peak) <= 35  # 30% of the run warms up by default
    assert used[0] == pytest.approx(0.5 / 25)  # torch's default div_factor
    assert last < 0.5 / 25  # anneals below the start
    rising = used[: used.index(peak) + 1]
    assert all(b >= a for a, b in zip(rising, rising[1:], strict=False))


def test_onecycle_uses_warmup_as_its_rising_phase() -> None:
    cfg = SchedulerConfig(name="onecycle", warmup_steps=10)
    used, _ = lr_trace(cfg, lr=1.0, total_steps=100, steps_per_epoch=10)
    assert 8 <= used.index(max(used)) <= 11
    assert max(used) == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------- losses


def logits_and_labels(num_classes: int = 4, batch: int = 16):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, num_classes, generator=gen) * 2
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    return logits, target


def test_multiclass_loss_is_cross_entropy() -> None:
    logits, target = logits_and_labels()
    loss = build_loss(LossConfig(), "multiclass")(logits, target)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_label_smoothing_changes_the_loss_as_torch_does() -> None:
    logits, target = logits_and_labels()
    plain = build_loss(LossConfig(), "multiclass")(logits, target).item()
    smooth = build_loss(LossConfig(label_smoothing=0.2), "multiclass")(logits, target).item()
    expected = F.cross_entropy(logits, target, label_smoothing=0.2).item()
    assert smooth == pytest.approx(expected, rel=1e-6)
    # By hand: (1 - eps) * NLL + eps * mean over classes of -log p.
    log_p = F.log_softmax(logits, dim=1)
    by_hand = (0.8 * -log_p[torch.arange(16), target] + 0.2 * -log_p.mean(dim=1)).mean().item()
    assert smooth == pytest.approx(by_hand, rel=1e-5)
    assert smooth != pytest.approx(plain, rel=1e-3)


def test_class_weights_change_the_loss_as_torch_does() -> None:
    logits, target = logits_and_labels()
    weights = torch.tensor([1.0, 4.0, 0.5, 2.0])
    loss = build_loss(LossConfig(label_smoothing=0.1), "multiclass", weights)(logits, target)
    expected = F.cross_entropy(logits, target, weight=weights, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # A weighted mean: sum_i w[y_i] * nll_i / sum_i w[y_i].
    nll = F.cross_entropy(logits, target, reduction="none")
    unsmoothed = build_loss(LossConfig(), "multiclass", weights)(logits, target).item()
    assert unsmoothed == pytest.approx(
        ((weights[target] * nll).sum() / weights[target].sum()).item(), rel=1e-6
    )


def test_binary_loss_takes_one_logit_per_row() -> None:
    gen = torch.Generator().manual_seed(1)
    outputs = torch.randn(12, 1, generator=gen)  # (B, 1)
    target = torch.randint(0, 2, (12,), generator=gen)  # (B,) int64 class index
    loss = build_loss(LossConfig(), "binary")(outputs, target)
    expected = F.binary_cross_entropy_with_logits(outputs[:, 0], target.float())
    assert loss.shape == () and loss.item() == pytest.approx(expected.item(), rel=1e-6)

    weights = torch.tensor([1.0, 3.0])
    weighted = build_loss(LossConfig(), "binary", weights)(outputs, target)
    per_row = F.binary_cross_entropy_with_logits(outputs[:, 0], target.float(), reduction="none")
    assert weighted.item() == pytest.approx((weights[target] * per_row).mean().item(), rel=1e-6)


def test_regression_losses() -> None:
    gen = torch.Generator().manual_seed(2)
    outputs = torch.randn(10, 1, generator=gen) * 3  # (B, 1)
    target = torch.randn(10, generator=gen)  # (B,)
    mse = build_loss(LossConfig(), "regression")(outputs, target)
    assert mse.shape == ()
    assert mse.item() == pytest.approx(((outputs[:, 0] - target) ** 2).mean().item(), rel=1e-6)

    huber = build_loss(LossConfig(regression="huber", huber_delta=0.5), "regression")
    expected = F.huber_loss(outputs[:, 0], target, delta=0.5)
    assert huber(outputs, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # Huber is quadratic inside delta, linear outside: it punishes the big misses less than MSE.
    assert huber(outputs, target).item() < mse.item()
    small = torch.tensor([[0.1]])
    assert huber(small, torch.zeros(1)).item() == pytest.approx(0.5 * 0.01)
    big = torch.tensor([[3.0]])
    assert huber(big, torch.zeros(1)).item() == pytest.approx(0.5 * (3.0 - 0.25))
    assert not math.isnan(huber(outputs, target).item())


def multi_hot(batch: int = 16, labels: int = 5):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(batch, labels, generator=gen) * 2  # (B, K)
    target = (torch.rand(batch, labels, generator=gen) < 0.3).float()  # (B, K) 0./1.
    target[:, 4] = 0.0  # a label with no positives: pos_weight has no term to scale there
    return logits, target


def bce_by_hand(logits, target, pos_weight=None):
    """Mean over all B x K entries of -(w_k y log s + (1 - y) log(1 - s)), s = sigmoid."""
    w = torch.ones(logits.shape[1]) if pos_weight is None else pos_weight
    log_s, log_1_s = F.logsigmoid(logits), F.logsigmoid(-logits)
    return -(w * target * log_s + (1 - target) * log_1_s).mean()


def test_multilabel_loss_is_mean_bce_over_all_entries() -> None:
    logits, target = multi_hot()
    loss = build_loss(LossConfig(), "multilabel")(logits, target)
    assert loss.shape == ()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(bce_by_hand(logits, target).item(), rel=1e-5)


def test_multilabel_class_weights_are_pos_weight() -> None:
    logits, target = multi_hot()
    weights = torch.tensor([1.0, 4.0, 0.5, 2.0, 10.0])  # (K,): one positive weight per label
    loss = build_loss(LossConfig(), "multilabel", weights)(logits, target)
    expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(bce_by_hand(logits, target, weights).item(), rel=1e-5)
    # Only positive entries are scaled: a label without positives is unaffected by its weight.
    other = weights.clone()
    other[4] = 1.0
    same = build_loss(LossConfig(), "multilabel", other)(logits, target)
    assert same.item() == pytest.approx(loss.item(), rel=1e-6)


def test_multilabel_label_smoothing_moves_targets_towards_half() -> None:
    logits, target = multi_hot()
    weights = torch.tensor([1.0, 4.0, 0.5, 2.0, 3.0])
    loss = build_loss(LossConfig(label_smoothing=0.2), "multilabel", weights)(logits, target)
    smoothed = target * 0.8 + 0.1  # a 1 becomes 0.9, a 0 becomes 0.1
    expected = F.binary_cross_entropy_with_logits(logits, smoothed, pos_weight=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(bce_by_hand(logits, smoothed, weights).item(), rel=1e-5)
    plain = build_loss(LossConfig(), "multilabel", weights)(logits, target)
    assert loss.item() != pytest.approx(plain.item(), rel=1e-3)


def test_multilabel_loss_rejects_wrong_shapes() -> None:
    logits, target = multi_hot()
    loss = build_loss(LossConfig(), "multilabel", torch.ones(3))
    with pytest.raises(ValueError, match="one class weight per label"):
        loss(logits, target)
    with pytest.raises(ValueError, match="targets"):
        build_loss(LossConfig(), "multilabel")(logits, target[:, 0])
    with pytest.raises(ValueError, match="one weight per label"):
        build_loss(LossConfig(), "multilabel", torch.ones(2, 5))


def test_multilabel_loss_has_gradients() -> None:
    logits, target = multi_hot()
    logits.requires_grad_(True)
    build_loss(LossConfig(label_smoothing=0.1), "multilabel", torch.full((5,), 2.0))(
        logits, target
    ).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
