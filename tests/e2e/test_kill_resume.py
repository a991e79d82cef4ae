"""Training you can trust, through the real CLI: a run killed at any point and resumed ends
byte-identical to a run that was never interrupted, and nothing already learned is lost.

Every case is a chain of real `python -m forgeml train` subprocesses (fp32, one thread each):
killed by SIGKILL from outside after a step checkpoint appears, killed from inside at an exact
point (right before an epoch-end checkpoint, half-way through writing one, right after one is
committed), stopped by SIGTERM/SIGINT; then `--resume`. The final `model.safetensors` must equal
the reference run's bytes, `metrics.json` must be equal, and `history.jsonl` must hold the same
rows (throughput aside).

Two small runs make every random draw count: the digits CNN with dropout, random crops and
flips and a cosine schedule, and a tabular MLP with dropout and a constant rate. The chains run
concurrently (a few processes at a time; each pays seconds of torch import); each test checks
one chain's outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml

TIMEOUT_S = 240
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SLOTS = threading.BoundedSemaphore(3)  # subprocesses at once on a 2-core machine

IMG = {
    "seed": 0,
    "data": {
        "source": "builtin:digits",
        "split": {"train": 0.7, "val": 0.1, "test": 0.2},
        "image": {"crop_padding": 1, "flip": True},
    },
    "model": {"name": "cnn", "channels": [4, 8], "head_hidden": [16], "head_dropout": 0.25},
    "train": {
        "batch_size": 64,
        "max_epochs": 3,
        "precision": "fp32",
        "optimizer": {"name": "adamw", "lr": 0.005},
        "scheduler": {"name": "cosine", "warmup_ratio": 0.1},
        "checkpoint": {"every_steps": 7},
    },
}
IMG_STEPS_PER_EPOCH = 20  # 1,257 training rows in batches of 64
TAB = {
    "seed": 1,
    "data": {"source": "builtin:tabular?n=300"},
    "model": {"name": "mlp", "hidden_sizes": [16], "dropout": 0.3},
    "train": {
        "batch_size": 32,
        "max_epochs": 2,
        "precision": "fp32",
        "optimizer": {"name": "adam", "lr": 0.01},
        "scheduler": {"name": "constant"},
        "checkpoint": {"every_steps": 3},
    },
}
TAB_STEPS_PER_EPOCH = 8  # 240 training rows in batches of 32
NAN = {
    "data": {"source": "builtin:blobs?n=200&features=4"},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "train": {
        "batch_size": 32,
        "max_epochs": 2,
        "precision": "fp32",
        # The first step makes the weights ~1e30; the second step's logits overflow.
        "optimizer": {"name": "sgd", "lr": 1.0e30, "momentum": 0.0},
        "checkpoint": {"every_steps": 1},
    },
}

# `python -c DRIVER PHASE STEP train ...`: the real CLI in-process, SIGKILLed at an exact point
# of the checkpoint of optimizer step STEP: "before" it is written (the epoch's evaluation rows
# are already in history.jsonl), "during" its write (optim.pt half written, nothing committed),
# or "after" its commit.
DRIVER = """
import io, os, signal, sys, time
import torch
from forgeml.cli import main
from forgeml.training import checkpoint

phase, step = sys.argv[1], int(sys.argv[2])
real_save, real_torch_save = checkpoint.Checkpointer.save, torch.save

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)

def half_then_die(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_torch_save(obj, buffer)
    with open(f, "wb") as out:
        out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    die()

def save(self, **kwargs):
    if kwargs["step"] == step:
        if phase == "before":
            die()
        if phase == "during":
            torch.save = half_then_die
    path = real_save(self, **kwargs)
    if kwargs["step"] == step and phase == "after":
        die()
    return path

checkpoint.Checkpointer.save = save
sys.exit(main(sys.argv[3:]))
"""


# --------------------------------------------------------------------------- running


@dataclass
class Done:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Done:
        assert self.returncode == 0, self.describe()
        return self

    def describe(self) -> str:
        return (
            f"{' '.join(self.args)} exited {self.returncode}\n"
            f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"
        )


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "forgeml", *args]


def run(cwd: Path, *args: str) -> Done:
    with SLOTS:
        proc = subprocess.run(
            command(list(args)),
            cwd=cwd,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    return Done(list(args), proc.returncode, proc.stdout, proc.stderr)


def run_killed(cwd: Path, phase: str, step: int, *args: str) -> Done:
    """The CLI SIGKILLed by DRIVER at `phase` of step `step`'s checkpoint."""
    with SLOTS:
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, phase, str(step), *args],
            cwd=cwd,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    return Done([phase, str(step), *args], proc.returncode, proc.stdout, proc.stderr)


def run_signalled(cwd: Path, sig: int, checkpoint: Path, *args: str) -> Done:
    """Start the CLI, wait until `checkpoint` is committed, then send `sig` from outside."""
    with SLOTS:
        proc = subprocess.Popen(
            command(list(args)),
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not checkpoint.is_dir() and proc.poll() is None:
                assert time.monotonic() < deadline, f"{checkpoint} never appeared"
                time.sleep(0.005)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Done(list(args), proc.returncode, stdout, stderr)


def workdir(root: Path, name: str, config: dict[str, Any], stem: str) -> Path:
    cwd = root / name
    cwd.mkdir()
    (cwd / f"{stem}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return cwd


def copy_workdir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def checkpoints(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def history(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in lines]


# --------------------------------------------------------------------------- the chains


@dataclass
class Outcome:
    """What a chain of runs left behind, for one test to check."""

    run_dir: Path  # the run directory of the final (resumed) run
    done: list[Done] = field(default_factory=list)  # every CLI call, in order
    seen: dict[str, Any] = field(default_factory=dict)  # observations between the calls


def img_reference(root: Path) -> Outcome:
    cwd = workdir(root, "img-reference", IMG, "img")
    return Outcome(cwd / "runs" / "img", [run(cwd, "train", "img.yaml", "--quiet").check()])


def img_sigkill_mid_epoch(root: Path) -> Outcome:
    cwd = workdir(root, "img-sigkill", IMG, "img")
    run_dir = cwd / "runs" / "img"
    killed = run_signalled(
        cwd, signal.SIGKILL, step_dir(run_dir, 7), "train", "img.yaml", "--quiet"
    )
    seen = {"checkpoints": checkpoints(run_dir), "finished": (run_dir / "forgeml.json").exists()}
    resumed = run(cwd, "train", "img.yaml", "--quiet", "--resume").check()
    return Outcome(run_dir, [killed, resumed], seen)


def img_kill_before_epoch_end_checkpoint(root: Path) -> Outcome:
    cwd = workdir(root, "img-epoch-end", IMG, "img")
    run_dir = cwd / "runs" / "img"
    end_of_2 = 2 * IMG_STEPS_PER_EPOCH
    killed = run_killed(cwd, "before", end_of_2, "train", "img.yaml", "--quiet")
    seen = {"checkpoints": checkpoints(run_dir), "history": history(run_dir)}
    resumed = run(cwd, "train", "img.yaml", "--quiet", "--resume").check()
    return Outcome(run_dir, [killed, resumed], seen)


def img_kill_during_checkpoint_write(root: Path) -> Outcome:
    cwd = workdir(root, "img-mid-write", IMG, "img")
    run_dir = cwd / "runs" / "img"
    killed = run_killed(cwd, "during", 28, "train", "img.yaml", "--quiet")
    tmp = run_dir / "checkpoints" / ".tmp-step-00000028"
    seen = {
        "checkpoints": checkpoints(run_dir),
        "tmp_files": sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else None,
    }
    resumed = run(cwd, "train", "img.yaml", "--quiet", "--resume").check()
    seen["left_after_resume"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    return Outcome(run_dir, [killed, resumed], seen)


def img_kill_after_epoch_end_commit(root: Path) -> Outcome:
    """Killed right after epoch 1's checkpoint is committed; copies of the directory are then
    resumed as they are and with that newest checkpoint damaged."""
    cwd = workdir(root, "img-after-commit", IMG, "img")
    killed = run_killed(cwd, "after", IMG_STEPS_PER_EPOCH, "train", "img.yaml", "--quiet")
    return Outcome(cwd / "runs" / "img", [killed], {"checkpoints": checkpoints(cwd / "runs/img")})


def img_resume_damaged(root: Path, killed: Future, damage: str) -> Outcome:
    source = killed.result()
    assert source.done[0].returncode == -signal.SIGKILL, source.done[0].describe()
    cwd = copy_workdir(source.run_dir.parents[1], root / f"img-damaged-{damage}")
    run_dir = cwd / "runs" / "img"
    newest = step_dir(run_dir, IMG_STEPS_PER_EPOCH)
    if damage == "truncated-weights":
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no-manifest":
        (newest / "manifest.json").unlink()
    # --quiet hides progress, not a skipped checkpoint; without it the resume also says which
    # checkpoint it continues from.
    quiet = ["--quiet"] if damage == "truncated-weights" else []
    resumed = run(cwd, "train", "img.yaml", *quiet, "--resume").check()
    return Outcome(run_dir, [resumed])


def img_sigterm(root: Path) -> Outcome:
    cwd = workdir(root, "img-sigterm", IMG, "img")
    run_dir = cwd / "runs" / "img"
    stopped = run_signalled(
        cwd, signal.SIGTERM, step_dir(run_dir, 7), "train", "img.yaml", "--quiet"
    )
    seen = {"checkpoints": checkpoints(run_dir)}
    resumed = run(cwd, "train", "img.yaml", "--quiet", "--resume").check()
    return Outcome(run_dir, [stopped, resumed], seen)


def img_sigint(root: Path) -> Outcome:
    """SIGINT, then a resume from the checkpoint named in the message, given by path."""
    cwd = workdir(root, "img-sigint", IMG, "img")
    run_dir = cwd / "runs" / "img"
    stopped = run_signalled(
        cwd, signal.SIGINT, step_dir(run_dir, 7), "train", "img.yaml", "--quiet"
    )
    named = stopped.stderr.split("checkpoint written to ")[-1].split(";")[0]
    seen = {"checkpoints": checkpoints(run_dir), "named": named}
    resumed = run(cwd, "train", "img.yaml", "--quiet", "--resume", named).check()
    return Outcome(run_dir, [stopped, resumed], seen)


def tab_reference(root: Path) -> Outcome:
    """The uninterrupted run with max_epochs raised to 4."""
    cwd = workdir(root, "tab-reference", TAB, "tab")
    done = run(cwd, "train", "tab.yaml", "--quiet", "train.max_epochs=4").check()
    return Outcome(cwd / "runs" / "tab", [done])


def tab_interrupted(root: Path) -> Outcome:
    """A max_epochs=2 run killed after the checkpoint of step 12 (mid-epoch 2)."""
    cwd = workdir(root, "tab-interrupted", TAB, "tab")
    killed = run_killed(cwd, "after", 12, "train", "tab.yaml", "--quiet")
    return Outcome(cwd / "runs" / "tab", [killed], {"checkpoints": checkpoints(cwd / "runs/tab")})


def tab_follow_up(root: Path, interrupted: Future, name: str, *calls: list[str]) -> Outcome:
    """Run `calls` in order on a copy of the interrupted tabular run."""
    source = interrupted.result()
    assert source.done[0].returncode == -signal.SIGKILL, source.done[0].describe()
    cwd = copy_workdir(source.run_dir.parents[1], root / f"tab-{name}")
    run_dir = cwd / "runs" / "tab"
    (run_dir / "marker.txt").write_text("left by the interrupted run")
    outcome = Outcome(run_dir)
    for args in calls:
        outcome.done.append(run(cwd, *args))
        outcome.seen[f"after {len(outcome.done)}"] = {
            "checkpoints": checkpoints(run_dir),
            "marker": (run_dir / "marker.txt").exists(),
            "finished": (run_dir / "forgeml.json").exists(),
        }
    return outcome


def nan_cli(root: Path) -> Outcome:
    cwd = workdir(root, "nan", NAN, "nan")
    done = run(cwd, "train", "nan.yaml", "--quiet")
    return Outcome(cwd / "runs" / "nan", [done])


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    root = tmp_path_factory.mktemp("kill-resume")
    with ThreadPoolExecutor(max_workers=16) as pool:
        started: dict[str, Future] = {}

        def start(name: str, fn: Callable[..., Outcome], *args: Any) -> None:
            started[name] = pool.submit(fn, root, *args)

        # Longest chains first: the semaphore admits processes in about this order.
        start("img_kill_after_commit", img_kill_after_epoch_end_commit)
        start("tab_interrupted", tab_interrupted)
        start("img_sigkill", img_sigkill_mid_epoch)
        start("img_epoch_end", img_kill_before_epoch_end_checkpoint)
        start("img_mid_write", img_kill_during_checkpoint_write)
        start("img_sigterm", img_sigterm)
        start("img_sigint", img_sigint)
        start("img_reference", img_reference)
        start("tab_reference", tab_reference)
        killed, interrupted = started["img_kill_after_commit"], started["tab_interrupted"]
        for damage in ("none", "truncated-weights", "no-manifest"):
            start(f"img_damaged_{damage}", img_resume_damaged, killed, damage)
        tab = ["train", "tab.yaml", "--quiet"]
        start(
            "tab_new_run",
            tab_follow_up,
            interrupted,
            "new-run",
            tab,
            ["train", "tab.yaml", "output.overwrite=true", "train.max_epochs=4"],
        )
        start(
            "tab_changed",
            tab_follow_up,
            interrupted,
            "changed",
            [*tab, "--resume", "train.optimizer.lr=0.05"],
            [*tab, "--resume", "train.max_epochs=4"],
        )
        start("nan_cli", nan_cli)
        yield started


# --------------------------------------------------------------------------- checks


def assert_same_run(got: Path, want: Path) -> None:
    """Byte-identical weights, equal metrics.json, the same history rows."""
    assert (got / "forgeml.json").is_file(), f"{got} is not a finished run"
    weights = (got / "model.safetensors").read_bytes()
    assert weights == (want / "model.safetensors").read_bytes(), f"{got}: weights differ"
    assert json.loads((got / "metrics.json").read_text()) == json.loads(
        (want / "metrics.json").read_text()
    )
    assert history(got) == history(want)
    got_config, want_config = (yaml.safe_load((d / "config.yaml").read_text()) for d in (got, want))
    for config in (got_config, want_config):
        del config["output"]["overwrite"]  # set to start over on an interrupted run
    assert got_config == want_config
    assert not list((got / "checkpoints").glob(".tmp-*"))


@pytest.fixture(scope="module")
def img_ref(chains: dict[str, Future]) -> Path:
    ref = chains["img_reference"].result().run_dir
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["steps"] == 3 * IMG_STEPS_PER_EPOCH and metrics["precision"] == "fp32"
    assert len(history(ref)) == 3 * 2  # train and val rows per epoch
    return ref


@pytest.fixture(scope="module")
def tab_ref(chains: dict[str, Future]) -> Path:
    ref = chains["tab_reference"].result().run_dir
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["steps"] == 4 * TAB_STEPS_PER_EPOCH and metrics["epochs"] == 4
    return ref


def test_sigkill_mid_epoch_then_resume_is_byte_identical(chains, img_ref) -> None:
    outcome = chains["img_sigkill"].result()
    killed, resumed = outcome.done
    assert killed.returncode == -signal.SIGKILL, killed.describe()
    assert not outcome.seen["finished"]
    assert any(name.startswith("step-") for name in outcome.seen["checkpoints"])
    assert_same_run(outcome.run_dir, img_ref)


def test_kill_at_epoch_end_before_its_checkpoint_drops_the_unsaved_rows(chains, img_ref) -> None:
    outcome = chains["img_epoch_end"].result()
    killed, resumed = outcome.done
    assert killed.returncode == -signal.SIGKILL, killed.describe()
    # Epoch 2 was evaluated and logged, but its checkpoint never written: the resume continues
    # from step 35 and rewrites history.jsonl from the checkpoint, so no row appears twice.
    assert outcome.seen["checkpoints"] == ["step-00000028", "step-00000035"]
    assert [row["epoch"] for row in outcome.seen["history"]] == [1, 1, 2, 2]
    assert_same_run(outcome.run_dir, img_ref)


def test_kill_during_a_checkpoint_write_leaves_the_committed_ones(chains, img_ref) -> None:
    outcome = chains["img_mid_write"].result()
    killed, resumed = outcome.done
    assert killed.returncode == -signal.SIGKILL, killed.describe()
    assert outcome.seen["checkpoints"] == [".tmp-step-00000028", "step-00000020", "step-00000021"]
    assert outcome.seen["tmp_files"] == ["model.safetensors", "optim.pt"]  # optim.pt half
    assert ".tmp-step-00000028" not in outcome.seen["left_after_resume"]
    assert_same_run(outcome.run_dir, img_ref)


def test_kill_right_after_an_epoch_end_commit(chains, img_ref) -> None:
    killed = chains["img_kill_after_commit"].result()
    assert killed.seen["checkpoints"] == ["step-00000014", "step-00000020"]
    outcome = chains["img_damaged_none"].result()
    stdout = " ".join(outcome.done[0].stdout.split())  # rich wraps long lines
    assert "resuming from runs/img/checkpoints/step-00000020 (step 20, epoch 2, batch 0)" in stdout
    assert "warning" not in outcome.done[0].stdout + outcome.done[0].stderr
    assert_same_run(outcome.run_dir, img_ref)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncated-weights", "model.safetensors is truncated or corrupt"),
        ("no-manifest", "has no readable manifest"),
    ],
    ids=["truncated-weights", "no-manifest"],
)
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_used(
    chains, img_ref, damage: str, reason: str
) -> None:
    outcome = chains[f"img_damaged_{damage}"].result()
    done = outcome.done[0]
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("warning: checkpoint runs/img/checkpoints/step-00000020")
    assert reason in warnings[0]
    assert warnings[0].endswith("falling back to the previous checkpoint")
    if damage == "truncated-weights":
        assert done.stdout == ""  # --quiet
    else:
        stdout = " ".join(done.stdout.split())  # rich wraps long lines
        resumed = "resuming from runs/img/checkpoints/step-00000014 (step 14, epoch 1, batch 14)"
        assert resumed in stdout
    assert_same_run(outcome.run_dir, img_ref)


@pytest.mark.parametrize("name, signum", [("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT)])
def test_signal_writes_a_checkpoint_and_says_how_to_resume(
    chains, img_ref, name: str, signum: int
) -> None:
    outcome = chains[f"img_{name}"].result()
    stopped, resumed = outcome.done
    assert stopped.returncode == 128 + signum, stopped.describe()
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1, stopped.stderr
    line = lines[0]
    assert line.startswith(f"error: stopped by {signal.Signals(signum).name} after step ")
    assert line.endswith("continue with: forgeml train img.yaml --resume"), line
    written = line.split("checkpoint written to ")[1].split(";")[0]
    assert written.startswith("runs/img/checkpoints/step-")
    assert Path(written).name in outcome.seen["checkpoints"]
    step = int(line.split("after step ")[1].split(" ")[0])
    assert written.endswith(f"step-{step:08d}") and step >= 7
    assert_same_run(outcome.run_dir, img_ref)


def test_new_run_over_an_interrupted_one_is_refused_then_overwrites(chains, tab_ref) -> None:
    outcome = chains["tab_new_run"].result()
    refused, overwritten = outcome.done
    assert refused.returncode == 2, refused.describe()
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and "output.overwrite=true" in lines[0]
    assert "step-00000012" in lines[0]
    assert (
        outcome.seen["after 1"]["marker"]
        and "step-00000012" in outcome.seen["after 1"]["checkpoints"]
    )
    overwritten.check()
    assert "resuming" not in overwritten.stdout
    assert not outcome.seen["after 2"]["marker"]  # started over in an emptied directory
    assert_same_run(outcome.run_dir, tab_ref)


def test_resume_refuses_a_changed_learning_rate_but_takes_more_epochs(chains, tab_ref) -> None:
    interrupted = chains["tab_interrupted"].result()
    assert interrupted.seen["checkpoints"] == ["step-00000009", "step-00000012"]
    outcome = chains["tab_changed"].result()
    refused, resumed = outcome.done
    assert refused.returncode == 2, refused.describe()
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "train.optimizer.lr" in lines[0] and "--resume" in lines[0]
    assert "train.max_epochs" not in lines[0]
    # Refused before touching anything: the interrupted run is as it was.
    assert outcome.seen["after 1"]["checkpoints"] == ["step-00000009", "step-00000012"]
    assert not outcome.seen["after 1"]["finished"]
    # A constant rate: continuing a 2-epoch run for 4 epochs is the 4-epoch run.
    resumed.check()
    assert_same_run(outcome.run_dir, tab_ref)


def test_nonfinite_loss_stops_the_cli_at_the_step_with_clean_checkpoints(chains) -> None:
    outcome = chains["nan_cli"].result()
    done = outcome.done[0]
    assert done.returncode == 2, done.describe()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: non-finite loss or gradient at step 2 (epoch 1, batch 2)")
    assert "the last good checkpoint is runs/nan/checkpoints/step-00000001" in lines[0]
    assert "train.on_nonfinite=skip" in lines[0]
    assert checkpoints(outcome.run_dir) == ["step-00000001"]
    assert not (outcome.run_dir / "forgeml.json").exists()
    weights = safetensors.torch.load_file(str(step_dir(outcome.run_dir, 1) / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
