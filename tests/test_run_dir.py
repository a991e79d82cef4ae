"""The run directory: atomic writes, prepare/finish, manifest and weight checks on load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import forgeml
from forgeml import run_dir as artifact
from forgeml.errors import ConfigError, ForgeError
from forgeml.run_dir import (
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    RunDir,
    atomic_write,
    load_weights,
    read_manifest,
    sha256_file,
    write_json,
)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def finished_run(path: Path, model: nn.Module) -> dict:
    """A minimal finished run directory holding `model`; returns its manifest."""
    run = RunDir(path)
    run.prepare(overwrite=False)
    sha = run.save_weights(model.state_dict())
    run.finish({"weights_sha256": sha, "model": "custom"})
    return read_manifest(path)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, "old")
    atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert os.listdir(target.parent) == ["file.txt"]  # no temporary file left behind


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old content")

    def boom(*_args, **_kwargs):
        raise OSError(f"simulated failure in {fail_at}")

    if fail_at == "fsync":
        monkeypatch.setattr(artifact.os, "fsync", boom)
    elif fail_at == "replace":
        monkeypatch.setattr(artifact.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        if fail_at == "write":
            # Dies while producing the bytes: a str that cannot be encoded mid-way.
            class Exploding(str):
                def encode(self, *_args, **_kwargs):
                    raise OSError("simulated failure in write")

            atomic_write(target, Exploding("new content"))
        else:
            atomic_write(target, "new content that must not appear")
    assert target.read_text() == "old content"
    assert os.listdir(tmp_path) == ["metrics.json"]  # the temporary file was removed


def test_atomic_write_interrupt_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def interrupt(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_write_json_handles_numpy_and_torch_scalars(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(
        path, {"a": np.float32(0.5), "b": torch.tensor(3), "c": np.arange(3), "d": Path("x")}
    )
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": "x"}


# --------------------------------------------------------------------------- RunDir.prepare


def test_prepare_refuses_a_finished_run_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "run"
    finished_run(path, tiny_model())
    with pytest.raises(ConfigError) as info:
        RunDir(path).prepare(overwrite=False)
    assert "already holds a finished run" in str(info.value)
    assert "output.overwrite=true" in str(info.value)
    assert (path / MANIFEST).is_file() and (path / WEIGHTS).is_file()  # nothing was touched

    RunDir(path).prepare(overwrite=True)
    assert path.is_dir() and list(path.iterdir()) == []


def test_prepare_clears_an_interrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "run"
    (path / "preprocess").mkdir(parents=True)
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "history.jsonl").write_text('{"step": 1}\n')
    (path / "preprocess" / "features.json").write_text("{}")
    run = RunDir(path)
    assert not run.is_complete
    run.prepare(overwrite=False)  # no manifest: an interrupted run, cleared without asking
    assert path.is_dir() and list(path.iterdir()) == []


def test_prepare_creates_missing_parents_and_rejects_a_file(tmp_path: Path) -> None:
    RunDir(tmp_path / "a" / "b" / "run").prepare(overwrite=False)
    assert (tmp_path / "a" / "b" / "run").is_dir()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir(file).prepare(overwrite=True)
    assert file.read_text() == "x"


def test_finish_writes_the_manifest_last_with_versions(tmp_path: Path) -> None:
    path = tmp_path / "run"
    manifest = finished_run(path, tiny_model())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["versions"]["forgeml"] == forgeml.__version__
    assert manifest["versions"]["torch"] == torch.__version__
    assert "created_at" in manifest
    assert manifest["weights_sha256"] == sha256_file(path / WEIGHTS)


def test_append_history_appends_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.prepare(overwrite=False)
    run.append_history({"step": 1, "loss": np.float32(0.25)})
    run.append_history({"step": 2, "loss": 0.125})
    lines = (run.path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 0.25},
        {"step": 2, "loss": 0.125},
    ]


# --------------------------------------------------------------------------- read_manifest


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ForgeError, match="is not a directory"):
        read_manifest(file)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / WEIGHTS).write_bytes(b"")
    with pytest.raises(ForgeError, match="not a finished forgeml run"):
        read_manifest(interrupted)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / MANIFEST).write_text('{"format_version": 1,')
    with pytest.raises(ForgeError, match="unreadable"):
        read_manifest(corrupt)
    future = tmp_path / "future"
    future.mkdir()
    (future / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ForgeError, match=f"format version {FORMAT_VERSION + 1}"):
        read_manifest(future)


def test_predictor_refuses_an_interrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "run"
    RunDir(path).prepare(overwrite=False)
    (path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ForgeError, match="not a finished forgeml run"):
        forgeml.load(path)


# --------------------------------------------------------------------------- weights


def test_weights_round_trip_as_safetensors(tmp_path: Path) -> None:
    model = tiny_model(0)
    manifest = finished_run(tmp_path / "run", model)
    state = safetensors.torch.load_file(str(tmp_path / "run" / WEIGHTS))  # no pickle involved
    assert set(state) == set(model.state_dict())
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())

    other = tiny_model(1)
    load_weights(tmp_path / "run", manifest, other)
    for name, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], value)


def test_weights_sha256_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run"
    manifest = finished_run(path, tiny_model())
    # Change one weight and save it again: a valid file, but not the one the run recorded.
    changed = tiny_model()
    with torch.no_grad():
        changed[0].weight[0, 0] += 1.0
    safetensors.torch.save_file(dict(changed.state_dict()), str(path / WEIGHTS))
    with pytest.raises(ForgeError, match="does not match the sha256"):
        load_weights(path, manifest, tiny_model())


def test_a_manifest_without_the_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    manifest = finished_run(path, tiny_model())
    load_weights(path, manifest, tiny_model())  # as written: loads
    del manifest["weights_sha256"]
    with pytest.raises(ForgeError, match="records no weights_sha256"):
        load_weights(path, manifest, tiny_model())


def test_nan_weights_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run"
    model = tiny_model()
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    manifest = finished_run(path, model)  # the sha256 matches: only the values are bad
    with pytest.raises(ForgeError, match=r"'2\.bias' holds NaN or infinite"):
        load_weights(path, manifest, tiny_model())


def test_missing_or_mismatched_weights(tmp_path: Path) -> None:
    path = tmp_path / "run"
    manifest = finished_run(path, tiny_model())
    with pytest.raises(ForgeError, match="does not fit the model"):
        load_weights(path, manifest, nn.Sequential(nn.Linear(3, 4)))
    (path / WEIGHTS).unlink()
    with pytest.raises(ForgeError, match="missing"):
        load_weights(path, manifest, tiny_model())


def test_tampered_weights_of_a_trained_run_fail_to_load(tmp_path: Path) -> None:
    run = forgeml.train(
        {
            "data": {"source": "builtin:blobs?n=90&features=2&classes=3"},
            "model": {"name": "mlp", "hidden_sizes": [4]},
            "train": {"max_epochs": 1, "precision": "fp32"},
            "output": {"dir": str(tmp_path), "name": "blobs"},
        },
        quiet=True,
    )
    forgeml.load(run.dir)  # loads while intact
    weights = run.dir / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip the bits of the last byte of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ForgeError, match="does not match the sha256"):
        forgeml.load(run.dir)
