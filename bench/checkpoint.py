"""Checkpoint cost: write, size and resume of a ~100M-parameter model; steps/s with checkpoints.

Part 1, one big checkpoint. forgeml's MLP (64 -> 7 x 4096 -> 10, 101M parameters) from a config
on generated blob data, trained by `forgeml.training.loop.fit` with forgeml's `Checkpointer`
(AdamW, so model + two moment tensors, plus RNG, data order and loop state). A checkpoint is
written every S optimizer steps (`train.checkpoint.every_steps`); each save is timed by a thin
subclass around `Checkpointer.save` and followed by forgeml's `sha256_file` over the files just
written (the manifest's share of the save). The steps between two saves give the step time of
the same run (the first interval, with the warm-up, is dropped); "save / (500 x step)" is the
cost of checkpointing every 500 steps at this size. References measured in the same run:

    raw write   the same number of bytes written to a file + fsync, into fresh page cache (the
                files are kept until all are written, as a save writes the new checkpoint
                before pruning the old one) and into pages just freed
    anatomy     the phases of a save replayed one by one with the same library calls on the
                same state: safetensors, torch.save, fsync, sha256, deleting the older copy

Resume is timed as forgeml does it: `load_checkpoint` (sha256 of every file against the
manifest, then safetensors + `torch.load(weights_only=True)`), cold (the files evicted from the
page cache with posix_fadvise, as after a reboot) and warm (as right after a crash), and then
`fit(resume=...)` with `max_steps` at the checkpoint's step: building the optimizer and loading
the model, optimizer and RNG state into it, up to the first step it would take.

Part 2, steps/s directly. The real `forgeml.train` (what the CLI runs) on a smaller MLP (64 ->
4 x 1024 -> 10, 3.2M parameters, batch 64), one epoch of exactly STEPS optimizer steps, with
`train.checkpoint.every_steps` null / 500 / 100 and `every_epochs` null in every arm, so no
epoch-end checkpoint is written in any arm. Steps/s is forgeml's own training-phase rate (the
history row's samples_per_s / batch size: from the epoch's first batch to its last step,
including the step checkpoints, excluding data preparation and the final save). Two readings:

    time in saves   within each run: the seconds spent inside `Checkpointer.save` (the class
                    method wrapped with a clock for the run) over the rest of the training
                    phase -- immune to the machine's load drifting between runs
    none/arm - 1    between runs: the steps/s of the run without checkpoints over the run with
                    them, per repeat, median -- what the issue asks, but on a shared machine
                    the drift between two runs is far larger than a 2% effect

Arms run in rotating order within each repeat, after one short discarded warm-up run. The final
train losses must be identical in every arm (checkpointing must not change the math) and every
arm must have made exactly STEPS / every_steps saves.

Threads are pinned to 2 (`torch.set_num_threads`). Files go to a temporary directory on the
same file system as /tmp; it is removed afterwards.

    .venv/bin/python bench/checkpoint.py           # ~10 min on a busy 2-core machine
    .venv/bin/python bench/checkpoint.py --quick   # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import forgeml
from forgeml.config import load_config
from forgeml.models.registry import build_model, count_parameters
from forgeml.run_dir import sha256_file
from forgeml.tasks.table.evaluate import table_steps
from forgeml.tasks.table.loss import build_loss
from forgeml.tasks.table.prepare import prepare
from forgeml.training.checkpoint import Checkpointer, load_checkpoint
from forgeml.training.loop import fit

THREADS = 2
SEED = 0
CHUNK = 64 << 20  # bytes per write() of the raw disk reference


@dataclass
class Scale:
    """What a run measures; `--quick` shrinks every part."""

    big_hidden: list[int]  # part 1 MLP hidden layers
    big_batch: int
    every: int  # part 1: steps between saves
    saves: int  # part 1: saves in the run (the first interval is the warm-up)
    loads: int  # part 1: cold + warm load pairs
    small_hidden: list[int]  # part 2 MLP hidden layers
    small_batch: int
    steps: int  # part 2: optimizer steps in the one epoch
    arms: dict[str, int | None]  # part 2: name -> every_steps
    repeats: int  # part 2


FULL = Scale(
    big_hidden=[4096] * 7,
    big_batch=64,
    every=3,
    saves=5,
    loads=3,
    small_hidden=[1024] * 4,
    small_batch=64,
    steps=1000,
    arms={"none": None, "every 500": 500, "every 100": 100},
    repeats=3,
)
QUICK = Scale(
    big_hidden=[1024] * 2,
    big_batch=64,
    every=2,
    saves=3,
    loads=1,
    small_hidden=[256] * 2,
    small_batch=64,
    steps=100,
    arms={"none": None, "every 50": 50, "every 10": 10},
    repeats=1,
)


def mlp_config(hidden: list[int], batch: int, rows: int, **train: Any) -> dict[str, Any]:
    """A config dict: an MLP on `rows` generated blobs of 64 features, all rows in train."""
    return {
        "seed": SEED,
        "data": {
            "source": f"builtin:blobs?n={rows}&features=64&classes=10",
            "split": {"train": 1.0, "val": 0.0, "test": 0.0},
        },
        "model": {"name": "mlp", "hidden_sizes": hidden},
        "train": {"batch_size": batch, "max_epochs": 1, "precision": "fp32", **train},
    }


# --------------------------------------------------------------------------- disk references


def raw_write(path: Path, nbytes: int, buffer: bytes) -> float:
    """Seconds to write `nbytes` to a new file and fsync it: the disk's share of a save."""
    view = memoryview(buffer)  # slices of a memoryview are not copies
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(view[: min(left, len(view))])
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - started


def evict(paths: list[Path]) -> None:
    """Drop these (clean, fsynced) files from the page cache, so the next read hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - started


def files_of(checkpoint: Path) -> list[Path]:
    return sorted(p for p in checkpoint.iterdir() if p.is_file())


# --------------------------------------------------------------------------- part 1


@dataclass
class Save:
    started: float
    ended: float
    nbytes: int
    sha: float  # sha256_file over the files just written
    resumed: float  # when the loop got control back (after the reference)


class TimedCheckpointer(Checkpointer):
    """forgeml's Checkpointer; each save is timed and followed by a sha256 pass over it."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.saves: list[Save] = []

    def save(self, **kwargs: Any) -> Path:
        started = time.perf_counter()
        path = super().save(**kwargs)
        ended = time.perf_counter()
        files = files_of(path)
        nbytes = sum(p.stat().st_size for p in files)
        t = time.perf_counter()
        for file in files:
            sha256_file(file)
        sha = time.perf_counter() - t
        self.saves.append(Save(started, ended, nbytes, sha, time.perf_counter()))
        return path


def raw_writes(workdir: Path, nbytes: int, count: int) -> tuple[list[float], list[float]]:
    """Write + fsync `nbytes` `count` times: into fresh page cache, then into just-freed pages.

    Fresh: every file is kept until all are written, so each write needs new page-cache pages,
    as a save does (it writes the new checkpoint before pruning the old one). Reused: each file
    is deleted before the next is written, so the kernel hands the same pages back at once.
    On this VM the two differ several-fold (RESULTS.md): fresh pages are what a save pays.
    """
    buffer = os.urandom(CHUNK)
    fresh = [raw_write(workdir / f"raw-{i}.bin", nbytes, buffer) for i in range(count)]
    for i in range(1, count):
        (workdir / f"raw-{i}.bin").unlink()
    reused = []
    for _ in range(count):
        (workdir / "raw-0.bin").unlink()
        reused.append(raw_write(workdir / "raw-0.bin", nbytes, buffer))
    return fresh, reused


@dataclass
class BigResult:
    params: int
    file_sizes: dict[str, int]
    save: list[float]
    sha: list[float]
    raw_fresh: list[float]  # write + fsync of the same bytes into fresh page cache
    raw_reused: list[float]  # the same into pages just freed
    step: list[float]  # seconds per optimizer step, one value per interval between saves
    load_cold: list[float] = field(default_factory=list)
    load_warm: list[float] = field(default_factory=list)
    verify_cold: list[float] = field(default_factory=list)  # sha256 of all files, evicted
    raw_read_cold: list[float] = field(default_factory=list)
    apply: list[float] = field(default_factory=list)  # fit(resume=...) up to the first step
    anatomy: dict[str, list[float]] = field(default_factory=dict)  # phase -> seconds


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_anatomy(
    model: torch.nn.Module, checkpoint: dict[str, Any], where: Path, previous: Path | None
) -> dict[str, float]:
    """The phases of `Checkpointer.save`, one by one, with the library calls it makes.

    Not forgeml's code path (that is timed whole above): a replay of its steps on the same
    state, to show where the time of a save goes.
    """
    where.mkdir(parents=True, exist_ok=True)
    model_file, optim_file = where / "model.safetensors", where / "optim.pt"
    blob = {k: checkpoint[k] for k in ("optimizer", "scheduler", "tensors")}
    phases: dict[str, float] = {}
    t = time.perf_counter()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(model_file))
    phases["safetensors save_file (weights)"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.save(blob, optim_file)
    phases["torch.save (optimizer, RNG)"] = time.perf_counter() - t
    t = time.perf_counter()
    for file in (model_file, optim_file):
        fsync_path(file)
    phases["fsync"] = time.perf_counter() - t
    t = time.perf_counter()
    for file in (model_file, optim_file):
        sha256_file(file)
    phases["sha256 for the manifest"] = time.perf_counter() - t
    t = time.perf_counter()
    if previous is not None:  # as pruning: the older copy goes after the new one is written
        shutil.rmtree(previous)
    phases["delete the previous copy (as pruning does)"] = time.perf_counter() - t
    return phases


def run_big(scale: Scale, workdir: Path) -> BigResult:
    max_steps = scale.every * scale.saves
    cfg = load_config(
        mlp_config(
            scale.big_hidden,
            scale.big_batch,
            rows=scale.big_batch * (max_steps + 1),  # one epoch, never finished
            max_steps=max_steps,
            checkpoint={"every_steps": scale.every, "every_epochs": None},
        )
    )
    prepared = prepare(cfg, log=lambda _msg: None)
    data = prepared.data["train"]
    torch.manual_seed(SEED)
    model = build_model(cfg.model, prepared.preprocessor.spec)
    loss_fn = build_loss(cfg.train.loss, "multiclass")
    params = count_parameters(model)
    print(f"part 1: MLP {scale.big_hidden}, {params:,} parameters", flush=True)

    checkpointer = TimedCheckpointer(workdir / "checkpoints", keep_last=2)
    fit(
        model,
        data,
        None,
        cfg.train,
        steps=table_steps("multiclass", loss_fn),
        seed=SEED,
        quiet=True,
        checkpointer=checkpointer,
    )
    saves = checkpointer.saves
    steps = [(b.started - a.resumed) / scale.every for a, b in zip(saves, saves[1:], strict=False)]
    newest = checkpointer.committed()[0]
    for s in saves:
        print(f"  save {s.nbytes / 1e9:.2f} GB: {s.ended - s.started:.2f} s (sha256 {s.sha:.2f} s)")
    print(f"  step times (s): {', '.join(f'{t:.2f}' for t in steps)}", flush=True)
    fresh, reused = raw_writes(workdir, saves[-1].nbytes, count=3)
    print(
        f"  raw write + fsync of {saves[-1].nbytes / 1e9:.2f} GB: fresh pages "
        f"{', '.join(f'{t:.2f}' for t in fresh)} s; reused pages "
        f"{', '.join(f'{t:.2f}' for t in reused)} s",
        flush=True,
    )
    result = BigResult(
        params=params,
        file_sizes={p.name: p.stat().st_size for p in files_of(newest)},
        save=[s.ended - s.started for s in saves],
        sha=[s.sha for s in saves],
        raw_fresh=fresh,
        raw_reused=reused,
        step=steps,
    )

    # Resume: forgeml's load path, cold and warm, then the loop's own restore.
    files = files_of(newest)
    raw = workdir / "raw-0.bin"  # the last raw reference, as big as a save
    resume_train = cfg.train.model_copy(update={"max_steps": max_steps})
    for repeat in range(scale.loads):
        evict([raw])
        result.raw_read_cold.append(raw_read(raw))
        evict(files)
        t = time.perf_counter()
        for file in files:
            sha256_file(file)
        result.verify_cold.append(time.perf_counter() - t)
        evict(files)
        t = time.perf_counter()
        checkpoint = load_checkpoint(newest)
        result.load_cold.append(time.perf_counter() - t)
        del checkpoint
        t = time.perf_counter()
        checkpoint = load_checkpoint(newest)
        result.load_warm.append(time.perf_counter() - t)
        t = time.perf_counter()
        fit(
            model,
            data,
            None,
            resume_train,
            steps=table_steps("multiclass", loss_fn),
            seed=SEED,
            quiet=True,
            resume=checkpoint,
        )
        result.apply.append(time.perf_counter() - t)
        where = workdir / f"anatomy-{repeat}"
        previous = workdir / f"anatomy-{repeat - 1}" if repeat else None
        for phase, seconds in save_anatomy(model, checkpoint, where, previous).items():
            result.anatomy.setdefault(phase, []).append(seconds)
        del checkpoint
        print(
            f"  load cold {result.load_cold[-1]:.2f} s, warm {result.load_warm[-1]:.2f} s, "
            f"restore in fit {result.apply[-1]:.2f} s, raw cold read {result.raw_read_cold[-1]:.2f} s",
            flush=True,
        )
    return result


# --------------------------------------------------------------------------- part 2


class SaveTimer:
    """Times every `Checkpointer.save` that forgeml.train makes while the context is open.

    forgeml.train builds its own Checkpointer, so the class method is wrapped for the run (and
    restored after it); the wrapper only reads the clock around the real call.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __enter__(self) -> SaveTimer:
        self.original = original = Checkpointer.save
        seconds = self.seconds

        def timed(checkpointer: Checkpointer, **kwargs: Any) -> Path:
            started = time.perf_counter()
            try:
                return original(checkpointer, **kwargs)
            finally:
                seconds.append(time.perf_counter() - started)

        Checkpointer.save = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Checkpointer.save = self.original  # type: ignore[method-assign]


@dataclass
class ArmRun:
    steps_per_s: float  # forgeml's training-phase rate, checkpoints included
    epoch_s: float  # the training phase: steps x batch / samples_per_s
    save_s: float  # time inside Checkpointer.save during it
    saves: int  # Checkpointer.save calls
    wall: float  # the whole forgeml.train call
    loss: float  # final train loss: must not depend on checkpointing
    newest: str | None  # newest committed checkpoint


def run_small(scale: Scale, every: int | None, workdir: Path) -> ArmRun:
    config = mlp_config(
        scale.small_hidden,
        scale.small_batch,
        rows=scale.small_batch * scale.steps,  # exactly `steps` full batches: one epoch
        checkpoint={"every_steps": every, "every_epochs": None},
    )
    config["output"] = {"dir": str(workdir / "runs"), "name": "small", "overwrite": True}
    t = time.perf_counter()
    with SaveTimer() as timer:
        run = forgeml.train(config, quiet=True)
    wall = time.perf_counter() - t
    (row,) = [r for r in run.history if r["split"] == "train"]
    committed = Checkpointer(run.dir / "checkpoints").committed()
    return ArmRun(
        steps_per_s=row["samples_per_s"] / scale.small_batch,
        epoch_s=scale.steps * scale.small_batch / row["samples_per_s"],
        save_s=sum(timer.seconds),
        saves=len(timer.seconds),
        wall=wall,
        loss=row["metrics"]["loss"],
        newest=committed[0].name if committed else None,
    )


def run_arms(scale: Scale, workdir: Path) -> dict[str, list[ArmRun]]:
    names = list(scale.arms)
    runs: dict[str, list[ArmRun]] = {name: [] for name in names}
    print(
        f"part 2: MLP {scale.small_hidden}, batch {scale.small_batch}, {scale.steps} steps, "
        f"arms {names} x {scale.repeats}",
        flush=True,
    )
    # A short discarded run first: the first forgeml.train of a process pays one-time costs.
    run_small(replace(scale, steps=min(scale.steps, 100)), None, workdir)
    for repeat in range(scale.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            run = run_small(scale, scale.arms[name], workdir)
            runs[name].append(run)
            print(
                f"  repeat {repeat + 1}/{scale.repeats} {name}: {run.steps_per_s:.2f} steps/s, "
                f"{run.saves} saves {run.save_s:.2f} s of {run.epoch_s:.1f} s "
                f"(wall {run.wall:.1f} s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    losses = {run.loss for arm in runs.values() for run in arm}
    assert len(losses) == 1, f"final train losses differ between arms: {sorted(losses)}"
    expected = f"step-{scale.steps:08d}"
    for name, every in scale.arms.items():
        want, count = (expected, scale.steps // every) if every else (None, 0)
        assert all(r.newest == want for r in runs[name]), f"{name}: newest checkpoint not {want}"
        assert all(r.saves == count for r in runs[name]), f"{name}: not {count} saves"
    return runs


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def report(scale: Scale, big: BigResult, arms: dict[str, list[ArmRun]]) -> None:
    total = sum(big.file_sizes.values())
    mb = 1e6
    save, raw, sha, step = med(big.save), med(big.raw_fresh), med(big.sha), med(big.step)
    print()
    print(f"### Part 1: one checkpoint of {big.params / 1e6:.1f}M parameters (AdamW)")
    print()
    print("| file | bytes | MB |")
    print("|---|---|---|")
    for name, size in big.file_sizes.items():
        print(f"| {name} | {size:,} | {size / mb:.1f} |")
    ratio = total / (4 * big.params)
    print(f"| **total** | {total:,} | **{total / mb:.1f}** ({ratio:.2f} x fp32 params) |")
    print()
    print("| measured | median s | range s | MB/s |")
    print("|---|---|---|---|")
    rows = [
        (f"**save** (Checkpointer.save, {len(big.save)} saves)", big.save),
        ("raw write + fsync of the same bytes, fresh page cache", big.raw_fresh),
        ("raw write + fsync of the same bytes, just-freed pages", big.raw_reused),
        ("sha256 of the files just written (page cache)", big.sha),
        (f"**load cold** (load_checkpoint, files evicted; {len(big.load_cold)}x)", big.load_cold),
        ("load warm (load_checkpoint, files in page cache)", big.load_warm),
        ("sha256 of the files, evicted (the verification alone)", big.verify_cold),
        ("raw read of the same bytes, evicted", big.raw_read_cold),
        ("restore in fit(resume=...) (optimizer build + load_state_dict)", big.apply),
    ]
    for label, values in rows:
        print(
            f"| {label} | {med(values):.2f} | {spread(values)} | {total / mb / med(values):.0f} |"
        )
    print()
    print("| phase of a save (replayed one by one) | median s | range s |")
    print("|---|---|---|")
    for phase, values in big.anatomy.items():
        print(f"| {phase} | {med(values):.2f} | {spread(values)} |")
    print(f"| sum | {sum(med(v) for v in big.anatomy.values()):.2f} | |")
    print()
    intervals = f"median of {len(big.step)} intervals of {scale.every} steps"
    print("| per 500 steps | value |")
    print("|---|---|")
    print(
        f"| step time, batch {scale.big_batch} ({intervals}) | {step:.2f} s ({spread(big.step)}) |"
    )
    print(f"| 500 steps | {500 * step:.0f} s |")
    print(f"| one save | {save:.2f} s (raw write {raw:.2f} s, sha256 {sha:.2f} s) |")
    print(f"| **cost of every_steps=500** | **{save / (500 * step) * 100:.2f}%** |")
    print()
    print(f"### Part 2: forgeml.train, MLP {scale.small_hidden}, {scale.steps} steps")
    print()
    print(
        "| every_steps | saves | steps/s (median) | range | ms per save | **added by saves** "
        "(median) | range | none/arm - 1 (median) | range |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = arms[next(iter(arms))]
    for name, every in scale.arms.items():
        runs = arms[name]
        rates = [r.steps_per_s for r in runs]
        line = f"| {name} | {runs[0].saves} | {med(rates):.2f} | {spread(rates)} "
        if not every:
            print(line + "| - | - | - | - | - |")
            continue
        per_save = [r.save_s / r.saves * 1e3 for r in runs]
        shares = [r.save_s / (r.epoch_s - r.save_s) * 100 for r in runs]
        costs = [(b.steps_per_s / r.steps_per_s - 1) * 100 for b, r in zip(base, runs, strict=True)]
        print(
            line + f"| {med(per_save):.0f} | **{med(shares):.2f}%** | {spread(shares)}% "
            f"| {med(costs):+.1f}% | {min(costs):+.1f}% to {max(costs):+.1f}% |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (2)")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forgeml-bench-ckpt-") as tmp:
        workdir = Path(tmp)
        big = run_big(scale, workdir / "big")
        shutil.rmtree(workdir / "big")
        print(f"part 1 took {time.perf_counter() - started:.0f} s", flush=True)
        arms = run_arms(scale, workdir / "small")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    report(scale, big, arms)


if __name__ == "__main__":
    main()
