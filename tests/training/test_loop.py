"""`forgeml.training.loop.fit` on in-memory `TensorData`: stop rules, accumulation, clipping,
seeding, precision, events and losses. Every run is a few hundred rows through a tiny network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import forgeml
from forgeml.config import LossConfig, TrainConfig
from forgeml.data.tensors import TensorData
from forgeml.errors import ConfigError
from forgeml.inference.batches import forward_batches
from forgeml.models.registry import UserModule
from forgeml.tasks.table.evaluate import evaluate, table_steps
from forgeml.tasks.table.loss import build_loss
from forgeml.training.loop import FitResult, fit


def blobs(n: int = 120, features: int = 4, classes: int = 3, seed: int = 0) -> TensorData:
    """Well separated Gaussian blobs: (n, features) float32 and (n,) int64 labels.

    The centers are fixed; `seed` draws other points around them (a validation set).
    """
    centers = 4.0 * torch.eye(classes, features)  # (classes, features), 5.7 apart
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = centers[labels] + torch.randn(n, features, generator=gen)
    return TensorData({"numeric": x}, labels)


def mlp(seed: int = 0, features: int = 4, classes: int = 3, hidden: int = 16) -> UserModule:
    """No dropout, no batchnorm: its gradients depend only on the rows of a batch."""
    torch.manual_seed(seed)
    return UserModule(
        nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    )


def train_config(**options: Any) -> TrainConfig:
    options.setdefault("precision", "fp32")
    options.setdefault("optimizer", {"name": "adam", "lr": 0.01})
    return TrainConfig.model_validate(options)


def run(
    model: nn.Module,
    train: TensorData,
    val: TensorData | None,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    loss_fn: Any = None,
    callbacks: Any = (),
) -> FitResult:
    return fit(
        model,
        train,
        val,
        cfg,
        steps=table_steps("multiclass", loss_fn or nn.CrossEntropyLoss()),
        seed=seed,
        callbacks=callbacks,
        quiet=True,
    )


def rows(result: FitResult, split: str, key: str = "loss") -> list[float]:
    return [r["metrics"][key] for r in result.history if r["split"] == split]


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


class StepCounter:
    """Counts optimizer steps and training-mode forward passes (micro-batches)."""

    def __init__(self, model: nn.Module) -> None:
        self.steps = 0
        self.micro_batches = 0
        self._handles = [
            register_optimizer_step_post_hook(self._on_step),
            model.register_forward_hook(self._on_forward),
        ]

    def _on_step(self, *_args: Any) -> None:
        self.steps += 1

    def _on_forward(self, module: nn.Module, *_args: Any) -> None:
        if module.training:
            self.micro_batches += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


# --------------------------------------------------------------------------- stop rules


def test_max_epochs_stops_and_records_every_epoch() -> None:
    train, val = blobs(120), blobs(60, seed=1)
    result = run(mlp(), train, val, train_config(batch_size=32, max_epochs=3))
    assert result.stop_reason == "max_epochs"
    assert result.epochs == 3
    assert result.steps == 3 * 4  # ceil(120 / 32) = 4 batches per epoch
    assert [(r["epoch"], r["split"]) for r in result.history] == [
        (1, "train"),
        (1, "val"),
        (2, "train"),
        (2, "val"),
        (3, "train"),
        (3, "val"),
    ]
    assert [r["step"] for r in result.history] == [4, 4, 8, 8, 12, 12]
    assert result.precision == "fp32"
    losses = rows(result, "train")
    assert losses[-1] < 0.5 * losses[0]  # the loss falls
    assert rows(result, "val", "accuracy")[-1] >= 0.95
    assert result.best == {}  # no early stopping configured


@pytest.mark.parametrize(("accum", "epochs"), [(1, 2), (2, 3)])
def test_max_steps_takes_exactly_that_many_optimizer_steps(accum: int, epochs: int) -> None:
    model = mlp()
    counter = StepCounter(model)
    try:
        # 100 rows in batches of 10: 10 micro-batches per epoch, 10 / accum optimizer steps.
        cfg = train_config(batch_size=10, max_epochs=50, max_steps=13, grad_accum_steps=accum)
        result = run(model, blobs(100), None, cfg)
    finally:
        counter.close()
    assert result.stop_reason == "max_steps"
    assert result.steps == 13 and counter.steps == 13
    assert counter.micro_batches == 13 * accum  # no forward pass is wasted after the last step
    assert result.epochs == epochs  # the last epoch is partial
    assert result.history[-1]["step"] == 13 and result.history[-1]["epoch"] == epochs


def test_max_steps_on_an_epoch_boundary() -> None:
    cfg = train_config(batch_size=10, max_epochs=5, max_steps=20)
    result = run(mlp(), blobs(100), None, cfg)
    assert (result.steps, result.epochs) == (20, 2)
    assert result.stop_reason == "max_steps"


def flipped_blobs(n: int, flip_within: float, gen: torch.Generator) -> TensorData:
    """1-D points, label x > 0; labels of |x| < flip_within flipped (noise the model can't fit)."""
    x = torch.rand(n, 1, generator=gen) * 6 - 3  # (n, 1)
    labels = (x[:, 0] > 0).long()
    if flip_within:
        labels = torch.where(x[:, 0].abs() < flip_within, 1 - labels, labels)
    return TensorData({"numeric": x}, labels)


def overfitting_setup() -> tuple[nn.Module, TensorData, TensorData]:
    """Val loss falls for a couple of epochs, then rises as the model grows over-confident."""
    gen = torch.Generator().manual_seed(0)
    train, val = flipped_blobs(200, 0.0, gen), flipped_blobs(100, 1.0, gen)
    torch.manual_seed(0)
    return UserModule(nn.Linear(1, 2)), train, val


def early_config(**early: Any) -> TrainConfig:
    return train_config(
        batch_size=20,
        max_epochs=30,
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.0},
        early_stopping={"patience": 3, **early},
    )


def test_early_stopping_respects_patience_and_restores_the_best_weights() -> None:
    model, train, val = overfitting_setup()
    result = run(model, train, val, early_config())
    val_losses = rows(result, "val")
    best_epoch = val_losses.index(min(val_losses)) + 1
    assert result.stop_reason == "early_stopping"
    assert 1 < best_epoch < result.epochs  # it improved, then got worse: a real test of restore
    assert result.epochs == best_epoch + 3  # exactly `patience` epochs without improvement
    assert result.best == {
        "monitor": "val_loss",
        "value": min(val_losses),
        "epoch": best_epoch,
        "restored": True,
    }
    # The weights in the model are the best epoch's: evaluating them gives the best val loss.
    final = evaluate(model, val, task="multiclass", loss_fn=nn.CrossEntropyLoss())
    assert final["loss"] == pytest.approx(min(val_losses), abs=1e-6)
    assert final["loss"] < val_losses[-1]


def test_early_stopping_without_restore_keeps_the_last_weights() -> None:
    model, train, val = overfitting_setup()
    result = run(model, train, val, early_config(restore_best=False))
    assert result.stop_reason == "early_stopping"
    assert "restored" not in result.best
    final = evaluate(model, val, task="multiclass", loss_fn=nn.CrossEntropyLoss())
    assert final["loss"] == pytest.approx(rows(result, "val")[-1], abs=1e-6)


def test_early_stopping_min_delta_and_max_mode() -> None:
    # An improvement must beat min_delta: with a huge one, only the first epoch counts as one.
    model, train, val = overfitting_setup()
    result = run(model, train, val, early_config(min_delta=10.0, patience=2))
    assert (result.stop_reason, result.epochs, result.best["epoch"]) == ("early_stopping", 3, 1)

    # Monitoring accuracy (max mode, inferred) on easy blobs: it saturates at 1.0 and stops.
    result = run(
        mlp(),
        blobs(120),
        blobs(60, seed=1),
        train_config(
            batch_size=16,
            max_epochs=40,
            early_stopping={"monitor": "val_accuracy", "patience": 2},
        ),
    )
    assert result.stop_reason == "early_stopping"
    assert result.best["value"] == max(rows(result, "val", "accuracy")) == 1.0
    assert result.epochs == result.best["epoch"] + 2


def test_early_stopping_monitor_errors() -> None:
    cfg = train_config(max_epochs=2, early_stopping={"monitor": "val_loss"})
    with pytest.raises(ConfigError, match="needs a validation split"):
        run(mlp(), blobs(60), None, cfg)
    cfg = train_config(max_epochs=2, early_stopping={"monitor": "val_nonsense"})
    with pytest.raises(ConfigError, match="val_nonsense.*expected one of:.*val_accuracy"):
        run(mlp(), blobs(60), blobs(30, seed=1), cfg)
    cfg = train_config(max_epochs=2, early_stopping={"monitor": "loss"})
    with pytest.raises(ConfigError, match="must start with 'val_' or 'train_'"):
        run(mlp(), blobs(60), blobs(30, seed=1), cfg)


def test_early_stopping_on_train_loss_without_val() -> None:
    cfg = train_config(max_epochs=3, early_stopping={"monitor": "train_loss"})
    result = run(mlp(), blobs(60), None, cfg)
    assert result.stop_reason == "max_epochs"  # the train loss keeps improving
    assert result.best["monitor"] == "train_loss" and result.best["epoch"] == 3


def test_loss_threshold_stops_at_the_first_epoch_below_it() -> None:
    cfg = train_config(batch_size=16, max_epochs=100, stop_at_loss=0.3)
    result = run(mlp(), blobs(120), None, cfg)
    losses = rows(result, "train")
    assert result.stop_reason == "loss_threshold"
    assert result.epochs == len(losses) < 100
    assert losses[-1] <= 0.3
    assert all(loss > 0.3 for loss in losses[:-1])


# --------------------------------------------------------------------------- the step


@pytest.mark.parametrize("num_rows", [80, 90])  # 90: the last step has one 10-row micro-batch
def test_gradient_accumulation_matches_a_larger_batch(num_rows: int) -> None:
    data = blobs(num_rows)
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    small, large = mlp(), mlp()
    a = run(
        small,
        data,
        None,
        train_config(batch_size=10, grad_accum_steps=2, max_epochs=3, optimizer=optimizer),
    )
    b = run(
        large,
        data,
        None,
        train_config(batch_size=20, grad_accum_steps=1, max_epochs=3, optimizer=optimizer),
    )
    assert a.steps == b.steps == 3 * -(-num_rows // 20)
    assert max_difference(weights(small), weights(large)) < 1e-6
    assert rows(a, "train") == pytest.approx(rows(b, "train"), abs=1e-6)
    assert max_difference(weights(small), weights(mlp())) > 1e-2  # it did train


def test_grad_clip_limits_the_update() -> None:
    data = blobs(64)
    sgd = {"name": "sgd", "lr": 1.0, "momentum": 0.0}
    before = weights(mlp())

    def update_norm(clip: float | None) -> float:
        model = mlp()
        run(
            model,
            data,
            None,
            train_config(batch_size=64, max_steps=1, grad_clip=clip, optimizer=sgd),
        )
        after = weights(model)
        return torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before)).item()

    unclipped = update_norm(None)
    clipped = update_norm(0.01)
    assert unclipped > 0.1  # plain SGD with lr 1 moves by the whole gradient norm
    assert clipped == pytest.approx(0.01, rel=1e-3)  # lr 1 x gradient clipped to norm 0.01


def test_same_seed_same_weights_different_seed_different() -> None:
    data, cfg = blobs(100), train_config(batch_size=16, max_epochs=2)
    first, second, third = mlp(), mlp(), mlp()
    run(first, data, None, cfg, seed=5)
    run(second, data, None, cfg, seed=5)
    run(third, data, None, cfg, seed=6)  # same init, another data order
    assert all(torch.equal(v, weights(second)[k]) for k, v in weights(first).items())
    assert max_difference(weights(first), weights(third)) > 1e-4


class DtypeProbe(nn.Module):
    """Records the dtype its first layer computes in (bf16 under autocast)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(4, 16), nn.Linear(16, 3)
        self.seen: set[torch.dtype] = set()

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.first(x)
        self.seen.add(hidden.dtype)
        return self.second(torch.tanh(hidden))


def test_bf16_trains_and_is_recorded() -> None:
    probe = DtypeProbe()
    result = run(
        UserModule(probe),
        blobs(120),
        blobs(60, seed=1),
        train_config(batch_size=16, max_epochs=4, precision="bf16"),
    )
    assert result.precision == "bf16"
    assert probe.seen == {torch.bfloat16}  # the forward ran under bf16 autocast
    losses = rows(result, "train")
    assert losses[-1] < 0.5 * losses[0]
    assert rows(result, "val", "accuracy")[-1] >= 0.9
    assert all(p.dtype == torch.float32 for p in probe.parameters())  # weights stay fp32


def test_fp32_forward_is_fp32() -> None:
    probe = DtypeProbe()
    assert run(UserModule(probe), blobs(30), None, train_config(max_epochs=1)).precision == "fp32"
    assert probe.seen == {torch.float32}


@pytest.fixture
def restore_determinism() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_deterministic_runs_repeat_exactly(tmp_path: Path, restore_determinism: None) -> None:
    def train(name: str) -> forgeml.Run:
        return forgeml.train(
            {
                "data": {"source": "builtin:blobs?n=150&features=3&classes=3"},
                "model": {"name": "mlp", "hidden_sizes": [16], "dropout": 0.2},
                "train": {
                    "max_epochs": 3,
                    "batch_size": 16,
                    "optimizer": {"lr": 0.01},
                    "deterministic": True,
                },
                "output": {"dir": str(tmp_path), "name": name},
            },
            quiet=True,
        )

    first = train("a")
    assert torch.are_deterministic_algorithms_enabled()
    second = train("b")
    # Identical numbers everywhere but in the measured throughput.
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in first.history]
    assert strip == [{k: v for k, v in r.items() if k != "samples_per_s"} for r in second.history]
    assert first.metrics == second.metrics
    a = (first.dir / "model.safetensors").read_bytes()
    assert a == (second.dir / "model.safetensors").read_bytes()
    assert first.metrics["test"]["accuracy"] >= 0.9


# --------------------------------------------------------------------------- events


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_eval_end(self, row: dict) -> None:
        self.events.append(("eval", (row["epoch"], row["split"])))

    def on_epoch_end(self, row: dict) -> None:
        self.events.append(("epoch", (row["epoch"], row["split"])))

    def on_train_end(self, result: FitResult) -> None:
        self.events.append(("train_end", result))


class OnlyTrainEnd:
    def __init__(self) -> None:
        self.results: list[FitResult] = []

    def on_train_end(self, result: FitResult) -> None:
        self.results.append(result)


def test_callbacks_receive_the_named_events_in_order() -> None:
    recorder, partial = Recorder(), OnlyTrainEnd()
    cfg = train_config(batch_size=32, max_epochs=2)
    result = run(mlp(), blobs(64), blobs(30, seed=1), cfg, callbacks=[recorder, partial])
    assert recorder.events[:-1] == [
        ("eval", (1, "train")),
        ("eval", (1, "val")),
        ("epoch", (1, "train")),
        ("eval", (2, "train")),
        ("eval", (2, "val")),
        ("epoch", (2, "train")),
    ]
    assert recorder.events[-1] == ("train_end", result)
    assert partial.results == [result]  # an object with only some handlers is fine


def test_callbacks_see_the_early_stopping_result() -> None:
    model, train, val = overfitting_setup()
    partial = OnlyTrainEnd()
    result = run(model, train, val, early_config(), callbacks=[partial])
    assert partial.results[0].stop_reason == "early_stopping" and partial.results[0] is result


# --------------------------------------------------------------------------- losses


def outputs_of(model: nn.Module, data: TensorData) -> Tensor:
    return torch.cat(
        [out for out, _ in forward_batches(model, data, batch_size=1000, precision="fp32")]
    )


def test_label_smoothing_and_class_weights_in_evaluation() -> None:
    model, data = mlp(), blobs(90)
    run(model, data, None, train_config(max_epochs=2))
    logits = outputs_of(model, data)  # (N, 3)
    target = data.target
    class_weights = torch.tensor([0.5, 2.0, 1.0])

    def loss_with(cfg: LossConfig, w: Tensor | None = None) -> float:
        loss_fn = build_loss(cfg, "multiclass", w)
        return evaluate(model, data, task="multiclass", loss_fn=loss_fn, batch_size=1000)["loss"]

    plain = loss_with(LossConfig())
    smooth = loss_with(LossConfig(label_smoothing=0.1))
    weighted = loss_with(LossConfig(), class_weights)
    assert plain == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert smooth == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.1).item(), rel=1e-5
    )
    assert weighted == pytest.approx(
        F.cross_entropy(logits, target, weight=class_weights).item(), rel=1e-5
    )
    assert smooth > plain  # smoothing punishes the confident, correct predictions of blobs
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_label_smoothing_in_training_changes_the_recorded_loss() -> None:
    data = blobs(90)
    plain_model, smooth_model = mlp(), mlp()
    plain = run(plain_model, data, None, train_config(max_epochs=3))
    smoothing = build_loss(LossConfig(label_smoothing=0.2), "multiclass")
    smooth = run(smooth_model, data, None, train_config(max_epochs=3), loss_fn=smoothing)
    # The first batch is identical, so losses part only by smoothing; it keeps a floor > 0.
    assert rows(smooth, "train")[0] > rows(plain, "train")[0]
    floor = -(0.8 + 0.2 / 3) * torch.log(torch.tensor(0.8 + 0.2 / 3)) - (0.2 / 3) * 2 * torch.log(
        torch.tensor(0.2 / 3)
    )
    assert rows(smooth, "train")[-1] > floor.item() - 1e-4  # the minimum of smoothed CE
    assert rows(plain, "train")[-1] < rows(smooth, "train")[-1]
