"""Real torchrun: 2 gloo processes on CPU against 1 process with the same global batch, and an
elastic restart after one rank is killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch

CONFIG = """\
seed: 0
data:
  source: "builtin:blobs?n=2000&features=8&classes=4&std=2.0"
  split: {train: 0.8, val: 0.1, test: 0.1}
model: {name: mlp, hidden_sizes: [32, 16]}
train:
  batch_size: 64
  max_epochs: 4
  precision: fp32
  optimizer: {name: adamw, lr: 0.003}
  scheduler: {name: cosine, warmup_steps: 5}
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def forgeml(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forgeml", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    one = forgeml(tmp_path, "train", "c.yaml", "output.name=one", "--quiet")
    assert one.returncode == 0, one.stderr
    two = forgeml(tmp_path, "train", "c.yaml", "output.name=two", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    # Rank 0 alone logs (not --quiet here): the closing lines once, not once per rank.
    assert two.stdout.count("run directory: runs/two") == 1, two.stdout
    assert two.stdout.count("stopped after 4 epochs") == 1, two.stdout

    a = json.loads((tmp_path / "runs/one/metrics.json").read_text())
    b = json.loads((tmp_path / "runs/two/metrics.json").read_text())
    assert a["steps"] == b["steps"] == 4 * 25
    for split in ("train", "val", "test"):
        assert b[split]["loss"] == pytest.approx(a[split]["loss"], abs=1e-4)
        assert b[split]["accuracy"] == pytest.approx(a[split]["accuracy"], abs=1e-9)
    # The per-epoch train losses (reduced across ranks) follow the same curve.
    rows = [
        [json.loads(line) for line in (tmp_path / f"runs/{name}/history.jsonl").open()]
        for name in ("one", "two")
    ]
    for ra, rb in zip(*rows, strict=True):
        assert rb["metrics"]["loss"] == pytest.approx(ra["metrics"]["loss"], abs=1e-4)
    # Rank 0 alone wrote the run: one finished directory, weights equal to the 1-process run.
    wa = safetensors.torch.load_file(str(tmp_path / "runs/one/model.safetensors"))
    wb = safetensors.torch.load_file(str(tmp_path / "runs/two/model.safetensors"))
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() < 1e-4, name
    assert (tmp_path / "runs/two/forgeml.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]


def _worker_pids(marker: str, local_rank: str) -> list[int]:
    """PIDs of forgeml worker processes of this test (by cwd marker) with the given LOCAL_RANK."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        is_worker = b"forgeml" in cmdline and b"torch.distributed.run" not in cmdline
        if is_worker and cwd == marker and f"LOCAL_RANK={local_rank}".encode() in environ:
            found.append(int(entry.name))
    return found


def _kill_rank_1_of_a_restartable_job(
    tmp_path: Path, ready: Callable[[], bool], deadline_s: float
) -> subprocess.CompletedProcess:
    """`forgeml train c.yaml --nproc 2 --max-restarts 1`, SIGKILL to its rank-1 worker as soon
    as `ready()` holds and the worker exists; the finished job (returncode, stderr)."""
    args = ["train", "c.yaml", "--nproc", "2", "--max-restarts", "1", "--quiet"]
    job = subprocess.Popen(
        [sys.executable, "-m", "forgeml", *args],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline and killed is None:
            pids = _worker_pids(str(tmp_path), "1") if ready() else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.05)
        assert killed is not None, "the moment to kill never came or no rank-1 worker was found"
        stdout, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    return subprocess.CompletedProcess(args, job.returncode, stdout, stderr)


def _train_epochs(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "history.jsonl").open()]
    return [row["epoch"] for row in rows if row["split"] == "train"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find ranks")
def test_killed_rank_is_restarted_and_the_job_resumes(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        CONFIG.replace("max_epochs: 4", "max_epochs: 30") + "  checkpoint: {every_steps: 20}\n"
    )
    checkpoints = tmp_path / "runs/c/checkpoints"
    job = _kill_rank_1_of_a_restartable_job(
        tmp_path, lambda: checkpoints.is_dir() and any(checkpoints.glob("step-*")), 180
    )
    assert job.returncode == 0, job.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs/c/metrics.json").read_text())
    assert metrics["steps"] == 30 * 25 and metrics["epochs"] == 30
    assert metrics["test"]["accuracy"] > 0.8
    # The restarted job resumed from a checkpoint instead of starting over: its history has
    # each epoch exactly once.
    assert _train_epochs(tmp_path / "runs/c") == list(range(1, 31))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find ranks")
def test_a_rank_killed_before_the_first_checkpoint_restarts_the_job_from_scratch(
    tmp_path: Path,
) -> None:
    # The failed attempt committed no checkpoint: the restarted job has nothing to resume and
    # must start over (not fail with "no valid checkpoint"). Rank 1 dies once rank 0 has made
    # the run directory (training under way); the first checkpoint is due after epoch 3.
    (tmp_path / "c.yaml").write_text(CONFIG + "  checkpoint: {every_epochs: 3}\n")
    run = tmp_path / "runs/c"
    seen: list[bool] = []  # whether a checkpoint existed when the rank was killed

    def ready() -> bool:
        seen.append(any((run / "checkpoints").glob("step-*")))
        return run.is_dir()

    job = _kill_rank_1_of_a_restartable_job(tmp_path, ready, 120)
    assert seen and not seen[-1], "killed too late: a checkpoint existed"
    assert job.returncode == 0, job.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs/c/metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["test"]["accuracy"] > 0.8
    assert _train_epochs(tmp_path / "runs/c") == [1, 2, 3, 4]


def test_a_bad_input_under_nproc_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    # Ranks fail on the data (not the config, which is checked before launching): the launcher
    # turns torchrun's failure report into the ranks' own one-line error, once.
    (tmp_path / "c.yaml").write_text(CONFIG)
    done = forgeml(tmp_path, "train", "c.yaml", "data.target=nope", "--nproc", "2", "--quiet")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "target column 'nope' not found" in lines[0]
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr


def test_sigterm_to_the_launcher_checkpoints_every_rank_and_exits_143(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        CONFIG.replace("max_epochs: 4", "max_epochs: 200") + "  checkpoint: {every_steps: 10}\n"
    )
    job = subprocess.Popen(
        [sys.executable, "-m", "forgeml", "train", "c.yaml", "--nproc", "2", "--quiet"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = tmp_path / "runs/c/checkpoints"
    deadline = time.monotonic() + 120
    while not any(checkpoints.glob("step-*")):
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0] and "--resume" in errors[0]
    # Both ranks stopped at the same step, and that step's checkpoint is committed.
    step = int(errors[0].split("after step ")[1].split()[0])
    assert (checkpoints / f"step-{step:08d}" / "manifest.json").is_file()
    assert not (tmp_path / "runs/c/forgeml.json").exists()
