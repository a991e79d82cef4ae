"""Loop overhead: forgeml's `fit` against a plain hand-written PyTorch loop, in one process.

Both loops train the same model from the same seed on the same in-memory tensors, with the same
batch order (`torch.randperm` of a generator seeded with `seed`), AdamW and a constant learning
rate (no warmup), in fp32. Fairness is checked, not assumed: the per-epoch mean train losses
must agree to 1e-5 and the final weights to 1e-6, else the script fails.

    case A  the digits CNN of configs/digits-cnn.yaml, augmentation off, batch 32
    case B  an MLP [128, 64] on 100,000 x 64 generated rows, 10 classes, batch 256

The two loops run in lockstep, epoch by epoch: a forgeml callback runs one epoch of the plain
loop at each forgeml epoch end, so every forgeml epoch is paired with a plain epoch measured
right after it (the machine's noise drifts over seconds; a pair shares it). forgeml's epoch time
runs from the callback's return to the next epoch end, so setup is excluded; the first epoch of
both loops is a warm-up and is dropped. The ratio is the median over all pairs of all repeats.
Each repeat does this twice, for forgeml in fp32 and in bf16 autocast (alternating which goes
first), always against the plain fp32 loop. Threads are pinned to 2 (`torch.set_num_threads`).

    .venv/bin/python bench/overhead.py
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from forgeml.config import OptimizerConfig, TrainConfig, load_config
from forgeml.data.tensors import TensorData
from forgeml.models.mlp import MLPConfig
from forgeml.models.registry import build_model
from forgeml.schema import InputSpec
from forgeml.tasks.table.evaluate import table_steps
from forgeml.tasks.table.loss import build_loss
from forgeml.tasks.table.prepare import prepare
from forgeml.training.loop import fit

THREADS = 2
SEED = 0
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-6


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    data: TensorData
    train: TrainConfig  # fp32, constant lr, no warmup; max_epochs = epochs per run
    repeats: int


class PlainLoop:
    """The reference: what one writes by hand with torch alone, run one epoch per call."""

    def __init__(self, case: Case) -> None:
        opt = case.train.optimizer
        torch.manual_seed(SEED)
        self.model = case.build()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        self.order = torch.Generator().manual_seed(SEED)
        self.data, self.batch_size = case.data, case.train.batch_size
        self.rng_state = torch.get_rng_state()  # this loop's own dropout stream, see `epoch`
        self.losses: list[float] = []  # mean train loss per epoch
        self.times: list[float] = []  # seconds per epoch

    def epoch(self) -> None:
        # Called between two forgeml epochs: swap in this loop's global RNG state so that its
        # dropout draws what forgeml's does, and hand forgeml its own state back afterwards.
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)

        started = time.perf_counter()
        model, optimizer = self.model, self.optimizer
        inputs, target = self.data.inputs, self.data.target
        n, bs = len(target), self.batch_size
        model.train()
        perm = torch.randperm(n, generator=self.order)
        total = 0.0
        for i in range(math.ceil(n / bs)):
            idx = perm[i * bs : (i + 1) * bs]
            x = {k: v[idx] for k, v in inputs.items()}
            loss = F.cross_entropy(model(x), target[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(idx)
        self.losses.append(total / n)
        self.times.append(time.perf_counter() - started)

        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(outer)


class Lockstep:
    """forgeml callback: times each forgeml epoch, then runs one epoch of the plain loop."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.times: list[float] = []  # forgeml seconds per epoch, from the second epoch on
        self.resumed: float | None = None

    def on_epoch_end(self, row: dict) -> None:
        now = time.perf_counter()
        if self.resumed is not None:  # the first epoch has no start stamp: it is the warm-up
            self.times.append(now - self.resumed)
        self.plain.epoch()
        self.resumed = time.perf_counter()


@dataclass
class Pairing:
    forgeml: list[float]  # forgeml epoch times, warm-up dropped
    plain: list[float]  # the plain epoch run right after each of them
    loss_diff: float  # largest per-epoch mean train loss difference
    weight_diff: float  # largest final weight difference


VARIANTS = {
    "fp32": {"precision": "fp32"},  # forgeml's defaults: with the per-step non-finite guard
    "noguard": {"precision": "fp32", "on_nonfinite": "ignore"},  # the loop alone, as plain does
    "bf16": {"precision": "bf16"},
}


def run_lockstep(case: Case, variant: str) -> Pairing:
    plain = PlainLoop(case)
    cfg = case.train.model_copy(update=VARIANTS[variant])
    torch.manual_seed(SEED)
    model = case.build()
    lockstep = Lockstep(plain)
    result = fit(
        model,
        case.data,
        None,
        cfg,
        steps=table_steps("multiclass", build_loss(cfg.loss, "multiclass")),
        seed=SEED,
        quiet=True,
        callbacks=[lockstep],
    )
    losses = [row["metrics"]["loss"] for row in result.history]
    loss_diff = max(abs(a - b) for a, b in zip(losses, plain.losses, strict=True))
    theirs = plain.model.state_dict()
    weight_diff = max(
        (v.double() - theirs[k].double()).abs().max().item() for k, v in model.state_dict().items()
    )
    return Pairing(lockstep.times, plain.times[1:], loss_diff, weight_diff)


def run_case(case: Case) -> dict:
    pairs: dict[str, list[Pairing]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for repeat in range(case.repeats):
        order = names[repeat % 3 :] + names[: repeat % 3]  # rotate which variant runs first
        for variant in order:
            pairs[variant].append(run_lockstep(case, variant))
        for variant in ("fp32", "noguard"):
            run = pairs[variant][-1]
            assert run.loss_diff <= LOSS_TOL, f"epoch losses differ by {run.loss_diff:.2e}"
            assert run.weight_diff <= WEIGHT_TOL, f"final weights differ by {run.weight_diff:.2e}"
        print(
            f"  {case.name} repeat {repeat + 1}/{case.repeats}: forgeml/plain "
            + ", ".join(f"{v} {median_ratio([pairs[v][-1]]):.3f}" for v in names),
            flush=True,
        )

    def median_ms(runs: list[Pairing], side: str) -> float:
        return statistics.median(t for p in runs for t in getattr(p, side)) * 1e3

    per_repeat = [median_ratio([p]) for p in pairs["fp32"]]
    steps = math.ceil(len(case.data) / case.train.batch_size)  # optimizer steps per epoch
    extra_us = statistics.median(
        (f - p) / steps * 1e6
        for run in pairs["fp32"]
        for f, p in zip(run.forgeml, run.plain, strict=True)
    )
    return {
        "case": case.name,
        "runs": f"{case.train.max_epochs - 1} epochs x {case.repeats}",
        "plain_ms": median_ms(pairs["fp32"], "plain"),
        "fp32_ms": median_ms(pairs["fp32"], "forgeml"),
        "bf16_plain_ms": median_ms(pairs["bf16"], "plain"),
        "bf16_ms": median_ms(pairs["bf16"], "forgeml"),
        "fp32_ratio": median_ratio(pairs["fp32"]),
        "fp32_spread": (min(per_repeat), max(per_repeat)),
        "extra_us": extra_us,
        "bf16_ratio": median_ratio(pairs["bf16"]),
        "noguard_ratio": median_ratio(pairs["noguard"]),
        "noguard_spread": (
            min(median_ratio([p]) for p in pairs["noguard"]),
            max(median_ratio([p]) for p in pairs["noguard"]),
        ),
        "loss_diff": max(p.loss_diff for p in pairs["fp32"]),
        "weight_diff": max(p.weight_diff for p in pairs["fp32"]),
    }


def median_ratio(runs: list[Pairing]) -> float:
    """Median of forgeml/plain over every epoch pair of `runs`."""
    return statistics.median(
        f / p for run in runs for f, p in zip(run.forgeml, run.plain, strict=True)
    )


def digits_case() -> Case:
    """Case A: configs/digits-cnn.yaml's model, data and optimizer; no augmentation."""
    cfg = load_config(
        "configs/digits-cnn.yaml",
        [
            "data.image.crop_padding=0",
            "train.scheduler.name=constant",
            "train.scheduler.warmup_ratio=0",
            "train.precision=fp32",
            "train.max_epochs=12",
        ],
    )
    prepared = prepare(cfg, log=lambda _msg: None)
    return Case(
        name="A digits-cnn",
        build=lambda: build_model(cfg.model, prepared.preprocessor.spec),
        data=prepared.data["train"],
        train=cfg.train,
        repeats=6,
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
            batch_size=256, max_epochs=8, precision="fp32", optimizer=OptimizerConfig()
        ),
        repeats=5,
    )


def main() -> None:
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = [run_case(digits_case()), run_case(mlp_case())]
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| case | epoch pairs | plain ms/epoch | forgeml ms/epoch | **forgeml/plain** "
        "(range over repeats) | forgeml extra us/step | max loss diff | max weight diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        low, high = r["fp32_spread"]
        print(
            f"| {r['case']} | {r['runs']} | {r['plain_ms']:.1f} | {r['fp32_ms']:.1f} "
            f"| **{r['fp32_ratio']:.3f}** ({low:.3f}-{high:.3f}) | {r['extra_us']:.0f} "
            f"| {r['loss_diff']:.1e} | {r['weight_diff']:.1e} |"
        )
    print()
    print(
        "| case | forgeml/plain, the loop alone (on_nonfinite=ignore) | with the guard (default) |"
    )
    print("|---|---|---|")
    for r in results:
        low, high = r["noguard_spread"]
        print(
            f"| {r['case']} | **{r['noguard_ratio']:.3f}** ({low:.3f}-{high:.3f}) "
            f"| {r['fp32_ratio']:.3f} |"
        )
    print()
    print("| case | plain fp32 ms/epoch | forgeml bf16 ms/epoch | bf16/plain | bf16/fp32 |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['bf16_plain_ms']:.1f} | {r['bf16_ms']:.1f} "
            f"| {r['bf16_ratio']:.3f} | **{r['bf16_ratio'] / r['fp32_ratio']:.2f}** |"
        )


if __name__ == "__main__":
    main()
