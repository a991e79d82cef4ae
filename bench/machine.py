"""What a benchmark ran on, and the timing helpers the small benchmarks share.

Timings are only comparable within one run on one machine, so each of these benchmarks reports
forgeml's time as a ratio to a reference doing the same work in the same run, and says where it
ran: the CPU as lscpu names it, the cores, torch and numpy, the load before and after.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import torch


def cpu_name() -> str:
    """lscpu's "Model name" (falls back to /proc/cpuinfo, then to platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False).returncode
        return out.stdout.strip() + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe(threads: int, load_before: float) -> str:
    """One line for the results: CPU, cores, versions, threads, date, commit, load."""
    return (
        f"CPU `{cpu_name()}` ({os.cpu_count()} CPUs), Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}, {threads} torch thread(s); "
        f"{datetime.now(UTC):%Y-%m-%d}, commit `{git_commit()}`; "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


def time_pairs(
    forgeml: Callable[[], object], reference: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds of `forgeml()` and of `reference()`, `repeats` times each, after one untimed call
    of each; the two alternate and which goes first alternates too, so a change of load during
    the run hits both alike."""
    forgeml()
    reference()
    ours: list[float] = []
    theirs: list[float] = []
    for repeat in range(repeats):
        order = [(forgeml, ours), (reference, theirs)]
        for fn, into in order if repeat % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            fn()
            into.append(time.perf_counter() - started)
    return ours, theirs


def summary(ours: list[float], theirs: list[float]) -> dict[str, float]:
    """Medians of both, and the median and range of the per-repeat ratios ours / theirs."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {
        "ours": statistics.median(ours),
        "theirs": statistics.median(theirs),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
