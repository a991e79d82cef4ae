"""Real torchrun jobs (2 gloo processes on CPU) under both strategies: a job killed by SIGKILL
mid-epoch and resumed with `--resume` ends byte-identical to the job that was never interrupted
(each rank's RNG stream, loss sum and row count come back, not rank 0's for all), and FSDP
trains to the same result as one process with the same global batch, writing sharded
checkpoints through torch.distributed.checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT_S = 300
STEPS_PER_EPOCH = 25  # 1,600 training rows in global batches of 64

# Dropout makes every rank's RNG stream matter for exactness.
CONFIG = """\
seed: 0
data:
  source: "builtin:blobs?n=2000&features=8&classes=4&std=2.0"
  split: {train: 0.8, val: 0.1, test: 0.1}
model: {name: mlp, hidden_sizes: [32, 16], dropout: DROPOUT}
train:
  batch_size: 64
  max_epochs: 3
  precision: fp32
  optimizer: {name: adamw, lr: 0.003}
  scheduler: {name: cosine, warmup_steps: 5}
  checkpoint: {every_steps: 7}
  strategy: STRATEGY
"""


def config(tmp: Path, strategy: str, dropout: float = 0.2) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    text = CONFIG.replace("STRATEGY", strategy).replace("DROPOUT", str(dropout))
    (tmp / "c.yaml").write_text(text)
    return tmp


def forgeml(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forgeml", "train", "c.yaml", "--quiet", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def killed_after(cwd: Path, step: int) -> None:
    """Start a 2-process job and SIGKILL all of it (torchrun and ranks) once a checkpoint of at
    least `step` is committed."""
    job = subprocess.Popen(
        [sys.executable, "-m", "forgeml", "train", "c.yaml", "--quiet", "--nproc", "2"],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = cwd / "runs/c/checkpoints"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not any(int(p.name[5:]) >= step for p in checkpoints.glob("step-*")):
            assert job.poll() is None, f"the job ended before step {step}: {job.stderr.read()}"
            assert time.monotonic() < deadline, f"no checkpoint of step {step} appeared"
            time.sleep(0.02)
    finally:
        # torchrun starts each rank in a session of its own: kill every process of this job.
        for pid in [job.pid, *_job_pids(cwd)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.wait()
    deadline = time.monotonic() + 30
    while _job_pids(cwd):
        assert time.monotonic() < deadline, "ranks survived SIGKILL"
        time.sleep(0.05)
    assert not (cwd / "runs/c/forgeml.json").exists(), "killed too late: the run had finished"


def _job_pids(cwd: Path) -> list[int]:
    """PIDs of live forgeml processes (launcher and ranks) running in `cwd`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            same_dir = os.readlink(entry / "cwd") == str(cwd)
            zombie = (entry / "stat").read_text().split(") ")[-1].startswith("Z")
        except OSError:
            continue
        if same_dir and b"forgeml" in cmdline and not zombie:
            found.append(int(entry.name))
    return found


def history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").open()]
    return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in rows]


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc to find ranks")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_job_killed_mid_epoch_resumes_byte_identical(
    tmp_path: Path, strategy: str
) -> None:
    reference = config(tmp_path / "reference", strategy)
    done = forgeml(reference, "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = config(tmp_path / "interrupted", strategy)
    killed_after(interrupted, STEPS_PER_EPOCH + 10)  # in the middle of epoch 2
    resumed = forgeml(interrupted, "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    got, want = interrupted / "runs/c", reference / "runs/c"
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()
    assert json.loads((got / "metrics.json").read_text()) == json.loads(
        (want / "metrics.json").read_text()
    )
    assert history(got) == history(want)
    if strategy == "fsdp":
        # Each rank wrote its own shards; there is no full copy of the weights in a checkpoint.
        newest = sorted((got / "checkpoints").glob("step-*"))[-1]
        assert not (newest / "model.safetensors").exists()
        shards = sorted(p.name for p in (newest / "sharded").iterdir())
        assert ".metadata" in shards and len([s for s in shards if s.endswith(".distcp")]) == 2
        manifest = json.loads((newest / "manifest.json").read_text())
        assert "sharded/.metadata" in manifest["sha256"]


def test_fsdp_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    config(tmp_path, "fsdp", dropout=0.0)
    one = forgeml(tmp_path, "output.name=one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = forgeml(tmp_path, "output.name=two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]

    a = json.loads((tmp_path / "runs/one/metrics.json").read_text())
    b = json.loads((tmp_path / "runs/two/metrics.json").read_text())
    assert a["steps"] == b["steps"] == 3 * STEPS_PER_EPOCH
    for split in ("train", "val", "test"):
        assert b[split]["loss"] == pytest.approx(a[split]["loss"], abs=1e-4)
        assert b[split]["accuracy"] == pytest.approx(a[split]["accuracy"], abs=1e-9)
    for ra, rb in zip(history(tmp_path / "runs/one"), history(tmp_path / "runs/two"), strict=True):
        assert rb["metrics"]["loss"] == pytest.approx(ra["metrics"]["loss"], abs=1e-4)
    # Rank 0 gathered the shards into one ordinary safetensors file of full tensors.
    wa = safetensors.torch.load_file(str(tmp_path / "runs/one/model.safetensors"))
    wb = safetensors.torch.load_file(str(tmp_path / "runs/two/model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].shape == wb[name].shape
        assert (wa[name] - wb[name]).abs().max().item() < 1e-4, name
