"""What a resume may change: checked against the config stored in the checkpoint itself
(config.json with its sha256), and refused when a new step total would bend the LR schedule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import forgeml
from forgeml.config import load_config
from forgeml.errors import ConfigError


def tiny(tmp_path: Path, name: str, scheduler: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"source": "builtin:tabular?n=120"},
        "model": {"name": "mlp", "hidden_sizes": [8]},
        "train": {
            "batch_size": 32,
            "max_epochs": 2,
            "precision": "fp32",
            "scheduler": scheduler,
            "checkpoint": {"every_steps": 2},
        },
        "output": {"dir": str(tmp_path / "runs"), "name": name},
    }


def newest_checkpoint(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").glob("step-*"))[-1]


def test_checkpoints_store_the_resolved_config_and_its_sha256(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "a", {"name": "constant"})
    run = forgeml.train(cfg, quiet=True)
    stored = json.loads((newest_checkpoint(run.dir) / "config.json").read_text())
    assert stored["config"]["train"]["max_epochs"] == 2
    assert stored["config"] == load_config(stored["config"]).to_dict()
    assert stored["sha256"] == load_config(stored["config"]).digest()


def test_a_longer_run_under_a_cosine_schedule_is_refused(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "cos", {"name": "cosine", "warmup_steps": 1})
    forgeml.train(cfg, quiet=True)
    with pytest.raises(ConfigError, match=r"train\.max_epochs changed, but the scheduler cosine"):
        forgeml.train(cfg, ["train.max_epochs=4"], quiet=True, resume=True)
    onecycle = tiny(tmp_path, "one", {"name": "onecycle"})
    forgeml.train(onecycle, quiet=True)
    with pytest.raises(ConfigError, match=r"train\.max_steps changed, but the scheduler onecycle"):
        forgeml.train(onecycle, ["train.max_steps=20"], quiet=True, resume=True)


def test_a_longer_run_under_a_constant_schedule_continues(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "const", {"name": "constant"})
    forgeml.train(cfg, quiet=True)
    run = forgeml.train(cfg, ["train.max_epochs=3"], quiet=True, resume=True)
    assert json.loads((run.dir / "metrics.json").read_text())["epochs"] == 3


def test_a_checkpoint_of_another_run_is_checked_against_its_own_config(tmp_path: Path) -> None:
    """--resume PATH with a checkpoint trained at another learning rate: refused by the
    checkpoint's config.json, even though this run's config.yaml matches the current config."""
    other = forgeml.train(
        tiny(tmp_path, "other", {"name": "constant"}), ["train.optimizer.lr=0.05"], quiet=True
    )
    foreign = tmp_path / "foreign"
    shutil.copytree(newest_checkpoint(other.dir), foreign)
    cfg = tiny(tmp_path, "mine", {"name": "constant"})
    forgeml.train(cfg, quiet=True)
    with pytest.raises(ConfigError, match=r"train\.optimizer\.lr.*foreign/config\.json"):
        forgeml.train(cfg, quiet=True, resume=str(foreign))
