"""bf16 autocast against fp32 for one training step of MLPs of growing size, on this CPU.

Measures what `precision: auto` decides on: on a CPU with fast bf16 (AVX512-BF16 / AMX), is a
forward + backward + AdamW step faster in bf16 autocast than in fp32, as a function of the
matmul work of the step (parameters x batch rows)? Medians of 30 steps, alternating fp32/bf16.

    .venv/bin/python bench/precision.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from forgeml.runtime import BF16_MIN_WORK, cpu_has_fast_bf16

STEPS = 30


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters())
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])  # the first steps allocate optimizer state


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, 2 threads, fast bf16 on this CPU: {cpu_has_fast_bf16()}")
    print(f"precision: auto picks bf16 on CPU when params x batch >= {BF16_MIN_WORK:,}\n")
    print("| width | batch | params | params x batch | fp32 ms/step | bf16 ms/step | bf16/fp32 |")
    print("|---|---|---|---|---|---|---|")
    for width in (128, 256, 512, 1024, 2048):
        for batch in (64, 256):
            torch.manual_seed(0)
            model = nn.Sequential(
                nn.Linear(256, width),
                nn.ReLU(),
                nn.Linear(width, width),
                nn.ReLU(),
                nn.Linear(width, 10),
            )
            x, y = torch.randn(batch, 256), torch.randint(0, 10, (batch,))
            fp32 = statistics.median(step_time(model, x, y, False) for _ in range(2))
            bf16 = statistics.median(step_time(model, x, y, True) for _ in range(2))
            params = sum(p.numel() for p in model.parameters())
            print(
                f"| {width} | {batch} | {params:,} | {params * batch:,} | {fp32 * 1e3:.2f} "
                f"| {bf16 * 1e3:.2f} | {bf16 / fp32:.2f} |"
            )


if __name__ == "__main__":
    main()
