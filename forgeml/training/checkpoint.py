"""Crash-safe, resumable checkpoints.

    runs/NAME/checkpoints/
      step-00000120/          one committed checkpoint
        model.safetensors     weights (safetensors, never pickle)
        best_model.safetensors  early stopping's best weights, when they differ from the current
        optim.pt              optimizer + scheduler state and RNG tensors (loaded weights_only)
        trainer.json          position (epoch, batch, step), history, early-stopping state, RNG
        config.json           the resolved config the run trained with, and its sha256
        sharded/              FSDP only, instead of model.safetensors/best_model and the
                              optimizer in optim.pt: every rank's shards, written by
                              torch.distributed.checkpoint; read back without unpickling code
                              (dcp_safe.py)
        manifest.json         sha256 of every file above -- written last inside the checkpoint
      best                    name of the checkpoint holding the best monitored value

A checkpoint is written into `.tmp-step-N/`, every file flushed and fsynced, then the directory
is renamed into place and the parent directory fsynced: a crash at any point leaves either the
old set of checkpoints or the old set plus the new one, never a half-written `step-N`. An old
checkpoint is deleted only after the new one is committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from forgeml.distributed import barrier, is_sharded
from forgeml.errors import CheckpointError
from forgeml.run_dir import drop_aliases, sha256_file
from forgeml.training.strategy import save_sharded

PREFIX = "step-"
FILES = ("optim.pt", "trainer.json")  # and model.safetensors or sharded/.metadata
CONFIG = "config.json"  # the resolved config and its sha256 (checkpoints written by a run)
SHARDED = "sharded"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + every CUDA device) RNG states, JSON/tensor friendly."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class Checkpointer:
    """Writes and finds the checkpoints of one run directory."""

    def __init__(
        self,
        root: str | Path,
        *,
        keep_last: int = 2,
        keep_best: bool = True,
        writer: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        # The resolved config the run trains with, stored in every checkpoint (config.json) with
        # its sha256, so a resume is checked against the config that produced the checkpoint.
        self.config = config
        self.keep_last = keep_last
        self.keep_best = keep_best
        # In a torchrun job every rank calls `save` (FSDP ranks each write their shards); only
        # the writer (rank 0) writes the rest, commits and prunes.
        self.writer = writer

    # ------------------------------------------------------------------ writing

    def save(
        self,
        *,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        trainer: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        best_model: dict[str, torch.Tensor] | None = None,
        is_best: bool = False,
    ) -> Path:
        """Commit one checkpoint atomically; then prune old ones. Returns its directory.

        Under torchrun every rank calls this at the same step (a collective for FSDP)."""
        name = f"{PREFIX}{step:08d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if self.writer:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        sharded = is_sharded(model)
        if sharded:
            barrier()  # the directory exists before any rank writes into it
            save_sharded(tmp / SHARDED, model, optimizer, best_model)
        if not self.writer:
            barrier()  # wait for the commit, so no rank runs ahead of a half-written checkpoint
            return final
        if not sharded:
            safetensors.torch.save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
            if best_model is not None:
                safetensors.torch.save_file(_cpu(best_model), str(tmp / "best_model.safetensors"))
        torch.save(
            {
                "optimizer": None if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "tensors": tensors,
            },
            tmp / "optim.pt",
        )
        (tmp / "trainer.json").write_text(json.dumps(trainer), encoding="utf-8")
        if self.config is not None:
            blob = json.dumps(self.config, sort_keys=True)
            sha = hashlib.sha256(blob.encode()).hexdigest()
            (tmp / CONFIG).write_text(
                json.dumps({"sha256": sha, "config": self.config}), encoding="utf-8"
            )
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        for file in files:
            _fsync_path(tmp / file)
        if sharded:
            _fsync_path(tmp / SHARDED)
        manifest = {"step": step, "sha256": {f: sha256_file(tmp / f) for f in files}}
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        old = self.root / f".old-{name}"
        if final.exists():
            # The same step saved again (a signal right after a step checkpoint, an epoch end at
            # that step): move the old copy aside first, so a crash between the two renames
            # leaves it recoverable (`clean_temporary` puts it back), never no checkpoint.
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_path(self.root)
        if old.exists():
            shutil.rmtree(old)
        if is_best and self.keep_best:
            self._write_pointer(name)
        self._prune()
        barrier()
        return final

    def _write_pointer(self, name: str) -> None:
        tmp = self.root / ".best.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "best")
        _fsync_path(self.root)

    def _prune(self) -> None:
        keep = set(c.name for c in self.committed()[: self.keep_last])
        best = self.best_name()
        if best:
            keep.add(best)
        for path in self.committed():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def committed(self) -> list[Path]:
        """Committed checkpoint directories, newest first (temporary ones are ignored)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def best_name(self) -> str | None:
        pointer = self.root / "best"
        try:
            return pointer.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def clean_temporary(self) -> None:
        """Remove leftovers of a write that was killed before its commit.

        A `.old-step-N` whose replacement `step-N` was never committed is moved back.
        """
        if not self.root.is_dir():
            return
        for path in self.root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob(".old-*"):
            committed = self.root / path.name.removeprefix(".old-")
            if committed.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, committed)

    def latest_valid(self, log: Callable[[str], None] = print) -> dict[str, Any] | None:
        """Load the newest checkpoint that verifies; report and skip corrupt ones."""
        for path in self.committed():
            try:
                return load_checkpoint(path)
            except CheckpointError as exc:
                log(f"warning: {exc}; falling back to the previous checkpoint")
        return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Verify a checkpoint against its manifest and load it (no unpickling of arbitrary code)."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} has no readable manifest ({exc})") from None
    sharded = f"{SHARDED}/.metadata" in expected
    for name in (*FILES, *(() if sharded else ("model.safetensors",))):
        if name not in expected:
            raise CheckpointError(f"checkpoint {path} lacks {name}")
    for name, sha in expected.items():
        file = path / name
        if not file.is_file() or sha256_file(file) != sha:
            raise CheckpointError(f"checkpoint {path}: {name} is truncated or corrupt")
    try:
        blob = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
        trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        model = None if sharded else safetensors.torch.load_file(str(path / "model.safetensors"))
        best = path / "best_model.safetensors"
        best_model = safetensors.torch.load_file(str(best)) if best.is_file() else None
        config = json.loads((path / CONFIG).read_text("utf-8")) if CONFIG in expected else None
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({exc})") from None
    return {
        "path": path,
        "model": model,  # None for an FSDP checkpoint: see "sharded"
        "sharded": path / SHARDED if sharded else None,
        "best_model": best_model,
        "optimizer": blob["optimizer"],
        "scheduler": blob["scheduler"],
        "tensors": blob["tensors"],
        "trainer": trainer,
        "config": config,  # {"sha256", "config"}, or None (a checkpoint written without one)
    }


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in drop_aliases(state).items()}
