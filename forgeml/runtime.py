"""Device, precision and seeding: decided once per run and reported."""

from __future__ import annotations

import contextlib
import os
import random
from functools import cache

import numpy as np
import torch


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU does bf16 matmul in hardware (AMX or AVX512-BF16).

    Without those, bf16 autocast on a CPU is emulated and slower than fp32, so `auto` keeps fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# bf16 autocast pays off once the matmuls are big enough to hide the per-step casts of the
# weights: measured on an AVX512-BF16 CPU, a step with parameters x rows below ~2^24 ran up to
# 1.7x slower in bf16, above it up to 1.9x faster (bench/precision.py, bench/RESULTS.md).
BF16_MIN_WORK = 2**24


def resolve_precision(
    requested: str, device: torch.device, *, num_params: int | None = None, batch_size: int = 1
) -> str:
    """'auto' -> 'bf16' where the hardware has fast bf16 and the model is big enough to gain.

    Explicit choices pass through. `num_params` x `batch_size` estimates the matmul work of one
    step; without `num_params` only the hardware decides.
    """
    if requested != "auto":
        return requested
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = cpu_has_fast_bf16()
    if not fast:
        return "fp32"
    if device.type != "cuda" and num_params is not None and num_params * batch_size < BF16_MIN_WORK:
        return "fp32"
    return "bf16"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass; a no-op context in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Set both ways: a deterministic run must not leave the mode on for later runs in-process.
    # Only on a change: the setter imports torch._dynamo, ~1.5 s of every CLI start.
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        # cuBLAS needs this to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
