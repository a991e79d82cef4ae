"""Quality: configs/digits-cnn.yaml through `forgeml.train`, next to a plain PyTorch reference.

forgeml side: the config as shipped, with `seed` overridden (the seed also picks the 70/10/20
split) and the run directory in a temporary folder; test accuracy from the run's metrics.

Reference side: the same CNN written by hand (conv 32 / conv 64, each with BatchNorm, ReLU and a
2x2 max pool, then a 128-unit head with dropout 0.25), trained on scikit-learn's copy of the same
digits with a stratified 80/20 split for 30 epochs: AdamW (lr 2e-3, weight decay 1e-4), batch 32,
cosine decay per step, the same 1-pixel pad-and-crop augmentation, pixels standardised with the
train mean and std. Its test split is the 20%.

Both run for seeds 0, 1 and 2, alternating; the report gives test accuracy and wall time per
seed and the medians. Threads are pinned to 2 (`torch.set_num_threads`).

    .venv/bin/python bench/quality.py
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from functools import partial

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import forgeml

THREADS = 2
SEEDS = (0, 1, 2)
CONFIG = "configs/digits-cnn.yaml"
TARGET = 0.99  # forgeml's config must reach this test accuracy (median over seeds)

EPOCHS, BATCH_SIZE, LR, WEIGHT_DECAY, CROP_PADDING = 30, 32, 2e-3, 1e-4, 1


def run_forgeml(seed: int, out_dir: str) -> float:
    run = forgeml.train(
        CONFIG, [f"seed={seed}", f"output.dir={out_dir}", "output.overwrite=true"], quiet=True
    )
    precision = json.loads((run.dir / "metrics.json").read_text())["precision"]
    print(f"  forgeml seed {seed}: precision {precision} (train.precision=auto)", flush=True)
    return run.metrics["test"]["accuracy"]


def reference_cnn() -> nn.Module:
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        block(1, 32),  # (B, 32, 4, 4)
        block(32, 64),  # (B, 64, 2, 2)
        nn.Flatten(),  # (B, 256)
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad (B, C, H, W) by `padding` px, then crop each image back at a random offset."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    # Advanced indices around the channel slice put their dims first: (B, H, W, C).
    return padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def run_reference(seed: int) -> float:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, stratify=digits.target, random_state=seed
    )
    x_train = torch.tensor(x_train, dtype=torch.float32)[:, None]  # (N, 1, 8, 8), 0..16
    x_test = torch.tensor(x_test, dtype=torch.float32)[:, None]
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

    torch.manual_seed(seed)
    model = reference_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(y_train) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(y_train), generator=generator)
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            images = random_crop(x_train[idx], CROP_PADDING, generator)
            loss = F.cross_entropy(model(images), y_train[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def main() -> None:
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for seed in SEEDS:
            timed = {}
            runs = {"forgeml": partial(run_forgeml, out_dir=out_dir), "reference": run_reference}
            for name in sorted(runs, reverse=seed % 2 == 1):  # alternate which goes first
                started = time.perf_counter()
                accuracy = runs[name](seed)
                timed[name] = (accuracy, time.perf_counter() - started)
            rows.append((seed, timed))
            print(
                f"  seed {seed}: "
                + "  ".join(f"{n} {a:.4f} in {t:.1f} s" for n, (a, t) in sorted(timed.items())),
                flush=True,
            )

    print()
    print("| seed | forgeml test acc | forgeml wall s | reference test acc | reference wall s |")
    print("|---|---|---|---|---|")
    for seed, timed in rows:
        (fa, ft), (ra, rt) = timed["forgeml"], timed["reference"]
        print(f"| {seed} | {fa:.4f} | {ft:.1f} | {ra:.4f} | {rt:.1f} |")
    med = {
        name: [statistics.median(t[name][i] for _, t in rows) for i in (0, 1)]
        for name in ("forgeml", "reference")
    }
    print(
        f"| **median** | **{med['forgeml'][0]:.4f}** | {med['forgeml'][1]:.1f} "
        f"| **{med['reference'][0]:.4f}** | {med['reference'][1]:.1f} |"
    )
    verdict = "meets" if med["forgeml"][0] >= TARGET else "MISSES"
    print(f"forgeml median test accuracy {med['forgeml'][0]:.4f} {verdict} the {TARGET} target")


if __name__ == "__main__":
    main()
