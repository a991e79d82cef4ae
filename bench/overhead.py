"""Loop overhead: forgeml's `fit` against a plain hand-written PyTorch loop, in one process.

Both loops train the same model from the same seed on the same in-memory tensors, with the same
batch order (`torch.randperm` of a generator seeded with `seed`), AdamW and a constant learning
rate, in fp32. Fairness is checked, not assumed: the per-epoch mean train losses must agree to
1e-5 and the final weights to 1e-6, else the script fails.

    case A  the digits CNN of configs/digits-cnn.yaml, augmentation off, batch 32
    case B  an MLP [128, 64] on 100,000 x 64 generated rows, 10 classes, batch 256

Each repeat runs plain fp32, forgeml fp32 and forgeml bf16 (autocast) back to back, rotating
their order from one repeat to the next. An epoch's time is the gap between two consecutive
epoch ends, so setup is excluded; the first epoch of every run is a warm-up and is dropped.
Per repeat the ratio is median(forgeml epoch) / median(plain epoch); the report gives the
median over repeats. Threads are pinned to 2 (`torch.set_num_threads`).

    .venv/bin/python bench/overhead.py
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from forgeml.api import prepare
from forgeml.config import OptimizerConfig, TrainConfig, load_config
from forgeml.data.loader import TensorData
from forgeml.data.schema import InputSpec
from forgeml.models.mlp import MLPConfig
from forgeml.models.registry import build_model
from forgeml.training.loop import fit
from forgeml.training.optim import build_loss

THREADS = 2
SEED = 0
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-6
VARIANTS = ("plain", "forgeml", "forgeml-bf16")


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    data: TensorData
    train: TrainConfig  # fp32, constant lr, no warmup; max_epochs = epochs per run
    repeats: int


@dataclass
class Run:
    losses: list[float]  # mean train loss per epoch
    epoch_times: list[float]  # seconds, warm-up epoch dropped
    state: dict[str, torch.Tensor] = field(repr=False)


class EpochTimer:
    """forgeml callback: the time at each epoch end."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_epoch_end(self, row: dict) -> None:
        self.stamps.append(time.perf_counter())


def gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def plain_fit(case: Case) -> Run:
    """The reference: what one writes by hand with torch alone."""
    cfg, opt = case.train, case.train.optimizer
    torch.manual_seed(SEED)
    model = case.build()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
    )
    order = torch.Generator().manual_seed(SEED)
    inputs, target = case.data.inputs, case.data.target
    n, bs = len(target), cfg.batch_size
    losses, stamps = [], []
    for _ in range(cfg.max_epochs):
        model.train()
        perm = torch.randperm(n, generator=order)
        total = 0.0
        for i in range(math.ceil(n / bs)):
            idx = perm[i * bs : (i + 1) * bs]
            x = {k: v[idx] for k, v in inputs.items()}
            loss = F.cross_entropy(model(x), target[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(idx)
        losses.append(total / n)
        stamps.append(time.perf_counter())
    return Run(losses, gaps(stamps), model.state_dict())


def forgeml_fit(case: Case, precision: str) -> Run:
    cfg = case.train.model_copy(update={"precision": precision})
    torch.manual_seed(SEED)
    model = case.build()
    timer = EpochTimer()
    result = fit(
        model,
        case.data,
        None,
        cfg,
        task="multiclass",
        loss_fn=build_loss(cfg.loss, "multiclass"),
        seed=SEED,
        quiet=True,
        callbacks=[timer],
    )
    losses = [row["metrics"]["loss"] for row in result.history]
    return Run(losses, gaps(timer.stamps), model.state_dict())


def check_fair(plain: Run, forgeml: Run) -> tuple[float, float]:
    """Largest loss and weight differences; raises if the two loops did not do the same work."""
    loss_diff = max(abs(a - b) for a, b in zip(plain.losses, forgeml.losses, strict=True))
    weight_diff = max(
        (plain.state[k].double() - forgeml.state[k].double()).abs().max().item()
        for k in plain.state
    )
    assert loss_diff <= LOSS_TOL, f"epoch losses differ by {loss_diff:.2e} > {LOSS_TOL}"
    assert weight_diff <= WEIGHT_TOL, f"final weights differ by {weight_diff:.2e} > {WEIGHT_TOL}"
    return loss_diff, weight_diff


def run_case(case: Case) -> dict:
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[str, list[float]] = {"forgeml/plain": [], "bf16/fp32": []}
    loss_diff = weight_diff = 0.0
    for repeat in range(case.repeats):
        shift = repeat % len(VARIANTS)
        runs: dict[str, Run] = {}
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            if variant == "plain":
                runs[variant] = plain_fit(case)
            else:
                runs[variant] = forgeml_fit(case, "bf16" if variant.endswith("bf16") else "fp32")
        losses, weights = check_fair(runs["plain"], runs["forgeml"])
        loss_diff, weight_diff = max(loss_diff, losses), max(weight_diff, weights)
        median = {v: statistics.median(r.epoch_times) for v, r in runs.items()}
        for variant, run in runs.items():
            times[variant].extend(run.epoch_times)
        ratios["forgeml/plain"].append(median["forgeml"] / median["plain"])
        ratios["bf16/fp32"].append(median["forgeml-bf16"] / median["forgeml"])
        print(
            f"  {case.name} repeat {repeat + 1}/{case.repeats}: "
            + "  ".join(f"{v} {median[v] * 1e3:.1f} ms" for v in VARIANTS)
            + f"  forgeml/plain {ratios['forgeml/plain'][-1]:.3f}",
            flush=True,
        )
    plain_losses = runs["plain"].losses
    return {
        "case": case.name,
        "epochs": case.train.max_epochs,
        "repeats": case.repeats,
        "median_ms": {v: statistics.median(t) * 1e3 for v, t in times.items()},
        "ratio": {k: statistics.median(r) for k, r in ratios.items()},
        "ratio_range": {k: (min(r), max(r)) for k, r in ratios.items()},
        "loss_diff": loss_diff,
        "weight_diff": weight_diff,
        "losses": (plain_losses[0], plain_losses[-1]),
    }


def digits_case() -> Case:
    """Case A: configs/digits-cnn.yaml's model, data and optimizer; no augmentation."""
    cfg = load_config(
        "configs/digits-cnn.yaml",
        [
            "data.image.crop_padding=0",
            "train.scheduler.name=constant",
            "train.scheduler.warmup_ratio=0",
            "train.precision=fp32",
            "train.max_epochs=8",
        ],
    )
    prepared = prepare(cfg, log=lambda _msg: None)
    return Case(
        name="A digits-cnn",
        build=lambda: build_model(cfg.model, prepared.preprocessor.spec),
        data=prepared.data["train"],
        train=cfg.train,
        repeats=7,
    )


def mlp_case() -> Case:
    """Case B: an MLP on generated rows whose class is the argmax of a fixed linear map."""
    generator = torch.Generator().manual_seed(SEED)
    features = torch.randn(100_000, 64, generator=generator)  # (N, 64)
    target = (features @ torch.randn(64, 10, generator=generator)).argmax(1)  # (N,)
    spec = InputSpec(
        num_numeric=64, category_sizes=(), image_shape=None, out_dim=10, task="multiclass"
    )
    return Case(
        name="B mlp-100k",
        build=lambda: build_model(MLPConfig(hidden_sizes=[128, 64]), spec),
        data=TensorData({"numeric": features}, target),
        train=TrainConfig(
            batch_size=256, max_epochs=4, precision="fp32", optimizer=OptimizerConfig()
        ),
        repeats=5,
    )


def main() -> None:
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results = [run_case(digits_case()), run_case(mlp_case())]
    print()
    print(
        "| case | epochs x repeats | plain ms/epoch | forgeml ms/epoch | forgeml/plain "
        "| max loss diff | max weight diff | forgeml bf16 ms/epoch | bf16/fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ms, ratio, spread = r["median_ms"], r["ratio"], r["ratio_range"]
        low, high = spread["forgeml/plain"]
        print(
            f"| {r['case']} | ({r['epochs']} - 1 warm-up) x {r['repeats']} "
            f"| {ms['plain']:.1f} | {ms['forgeml']:.1f} "
            f"| **{ratio['forgeml/plain']:.3f}** ({low:.3f}-{high:.3f}) "
            f"| {r['loss_diff']:.1e} | {r['weight_diff']:.1e} "
            f"| {ms['forgeml-bf16']:.1f} | {ratio['bf16/fp32']:.2f} |"
        )
    for r in results:
        first, last = r["losses"]
        print(f"{r['case']}: train loss {first:.4f} (epoch 1) -> {last:.4f} (last epoch)")


if __name__ == "__main__":
    main()
