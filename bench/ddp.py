"""DDP on one CPU: 2 processes against 1, same config, same global batch, same data.

Every run is the real CLI in a fresh process, `python -m forgeml train CONFIG --quiet`, with
`--nproc 2` for the DDP arm (forgeml launches torchrun: gloo, each rank takes its half of every
global batch). Arms:

    1 proc x 2 threads   OMP_NUM_THREADS=2 (torch's default here: one thread per core)
    1 proc x 1 thread    OMP_NUM_THREADS=1, a reference: what one rank alone gets
    2 procs x 1 thread   --nproc 2 with OMP_NUM_THREADS unset: torchrun sets it to 1 per rank

The threads each arm actually gets are probed (a process started the same way prints
`torch.get_num_threads()`) and printed. Throughput is forgeml's own training-phase rate: the
history.jsonl train row's samples_per_s (rows over all ranks / rank 0's time from the epoch's
first batch to its last step), so process start-up, torchrun's rendezvous, data preparation,
evaluation and saving are excluded. Per run, the median over epochs after the first (a
warm-up); per arm, the median over repeats. Arms run in rotating order within each repeat. The
wall time of the whole command is reported too: start-up is what a short run pays.

    case mlp-wide   an MLP 64 -> 2048 -> 2048 -> 10 (4.3M parameters) on 16,384 generated rows
                    (overlapping blobs), batch 512 (32 steps/epoch), 4 epochs: compute-heavy steps
    case digits     configs/digits-cnn.yaml with train.max_epochs=8: batch 32 of 8x8 images,
                    40 steps/epoch, small steps

    .venv/bin/python bench/ddp.py           # ~8 min on an idle 2-core machine
    .venv/bin/python bench/ddp.py --quick   # smoke run, ~1.5 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Arm:
    name: str
    nproc: int
    omp: str | None  # OMP_NUM_THREADS to set; None: leave unset (torchrun decides)


ARMS = [
    Arm("1 proc x 2 threads", 1, "2"),
    Arm("1 proc x 1 thread", 1, "1"),
    Arm("2 procs x 1 thread", 2, None),
]


@dataclass
class Case:
    name: str
    config: Path
    overrides: list[str]


@dataclass
class RunResult:
    samples_per_s: float  # median over epochs 2..E
    wall: float  # the whole command
    loss: float  # final epoch's mean train loss


def env_for(arm: Arm) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if arm.omp is not None:
        env["OMP_NUM_THREADS"] = arm.omp
    env["PYTHONUNBUFFERED"] = "1"
    return env


def probe_threads(arm: Arm, workdir: Path) -> str:
    """What `torch.get_num_threads()` is in each process of this arm, started the same way."""
    probe = workdir / "probe_threads.py"
    probe.write_text(
        textwrap.dedent(
            """
            import os, torch
            print(f"rank {os.environ.get('RANK', '0')}: OMP_NUM_THREADS="
                  f"{os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}")
            """
        )
    )
    if arm.nproc > 1:  # as forgeml.training.distributed.launch runs torchrun
        command = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={arm.nproc}",
            str(probe),
        ]
    else:
        command = [PYTHON, str(probe)]
    out = subprocess.run(
        command, env=env_for(arm), capture_output=True, text=True, check=True, cwd=ROOT
    )
    return "; ".join(sorted(line for line in out.stdout.splitlines() if line.startswith("rank")))


def run(case: Case, arm: Arm, workdir: Path) -> RunResult:
    out_dir = workdir / "runs"
    name = f"{case.name}-{arm.nproc}p"
    command = [PYTHON, "-m", "forgeml", "train", str(case.config), "--quiet"]
    command += [*case.overrides, f"output.dir={out_dir}", f"output.name={name}"]
    command += ["output.overwrite=true"]
    if arm.nproc > 1:
        command += ["--nproc", str(arm.nproc)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env_for(arm), capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    history = [json.loads(line) for line in (out_dir / name / "history.jsonl").open()]
    train = [row for row in history if row["split"] == "train"]
    rates = [row["samples_per_s"] for row in train[1:]]  # the first epoch is a warm-up
    return RunResult(statistics.median(rates), wall, train[-1]["metrics"]["loss"])


def run_case(case: Case, repeats: int, workdir: Path) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {arm.name: [] for arm in ARMS}
    for repeat in range(repeats):
        order = ARMS[repeat % len(ARMS) :] + ARMS[: repeat % len(ARMS)]
        for arm in order:
            result = run(case, arm, workdir)
            results[arm.name].append(result)
            print(
                f"  {case.name} repeat {repeat + 1}/{repeats} {arm.name}: "
                f"{result.samples_per_s:,.0f} samples/s (wall {result.wall:.1f} s, "
                f"final train loss {result.loss:.6f})",
                flush=True,
            )
    return results


def mlp_config(workdir: Path, rows: int, epochs: int) -> Case:
    config = {
        "seed": 0,
        "data": {
            "source": f"builtin:blobs?n={rows}&features=64&classes=10&std=20",
            "split": {"train": 1.0, "val": 0.0, "test": 0.0},
        },
        "model": {"name": "mlp", "hidden_sizes": [2048, 2048]},
        "train": {"batch_size": 512, "max_epochs": epochs, "precision": "fp32"},
    }
    path = workdir / "mlp-wide.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Case("mlp-wide", path, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forgeml-bench-ddp-") as tmp:
        workdir = Path(tmp)
        threads = {arm.name: probe_threads(arm, workdir) for arm in ARMS}
        for name, text in threads.items():
            print(f"{name}: {text}", flush=True)
        cases = [
            mlp_config(workdir, rows=4096 if args.quick else 16384, epochs=2 if args.quick else 4),
            Case(
                "digits",
                ROOT / "configs" / "digits-cnn.yaml",
                [f"train.max_epochs={3 if args.quick else 8}"],
            ),
        ]
        results = {case.name: run_case(case, repeats, workdir) for case in cases}
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    print()
    print("| arm | threads per process (probed) |")
    print("|---|---|")
    for name, text in threads.items():
        print(f"| {name} | {text} |")
    print()
    print(
        "| case | arm | samples/s (median) | range | **vs 1 proc x 2 threads** | "
        "vs 1 proc x 1 thread | wall s (median) | final train loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case, arms in results.items():
        base2 = [r.samples_per_s for r in arms[ARMS[0].name]]
        base1 = [r.samples_per_s for r in arms[ARMS[1].name]]
        for arm in ARMS:
            rates = [r.samples_per_s for r in arms[arm.name]]
            # Ratios per repeat (the arms of one repeat ran back to back), then the median.
            vs2 = statistics.median(a / b for a, b in zip(rates, base2, strict=True))
            vs1 = statistics.median(a / b for a, b in zip(rates, base1, strict=True))
            print(
                f"| {case} | {arm.name} | {statistics.median(rates):,.0f} "
                f"| {min(rates):,.0f}-{max(rates):,.0f} | **{vs2:.2f}x** | {vs1:.2f}x "
                f"| {statistics.median(r.wall for r in arms[arm.name]):.1f} "
                f"| {statistics.median(r.loss for r in arms[arm.name]):.6f} |"
            )


if __name__ == "__main__":
    main()
