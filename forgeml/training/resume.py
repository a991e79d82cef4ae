"""Starting or resuming a run directory: which checkpoint, and whether the config still fits.

Rules:
- a new run refuses a directory that holds a finished run (unless output.overwrite) or an
  interrupted run with checkpoints (resume it, or overwrite) -- nothing learned is lost silently;
- `--resume` takes the newest checkpoint that verifies (a corrupt newest one is reported and the
  previous one used), or the checkpoint given by path;
- a resume refuses a config whose changes alter the math, naming the changed keys; limits and
  bookkeeping (max_epochs, max_steps, logging, checkpoint cadence) may change.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from forgeml.config import Config
from forgeml.errors import ConfigError, ForgeError
from forgeml.run_dir import MANIFEST, RunDir, atomic_write
from forgeml.training.checkpoint import Checkpointer, CheckpointError, load_checkpoint

CHECKPOINTS = "checkpoints"

# Keys a resume may change: they bound or observe the run but do not change its arithmetic.
RESUMABLE = (
    "train.max_epochs",
    "train.max_steps",
    "train.log_every_steps",
    "train.eval_batch_size",
    "train.checkpoint.",
    "train.on_nonfinite",
    "train.max_skipped_fraction",
    "train.early_stopping.patience",
    "output.overwrite",
    "data.max_bad_fraction",
)


def checkpointer_for(run_dir: RunDir, cfg: Config, *, writer: bool = True) -> Checkpointer:
    ckpt = cfg.train.checkpoint
    return Checkpointer(
        run_dir.path / CHECKPOINTS,
        keep_last=ckpt.keep_last,
        keep_best=ckpt.keep_best,
        writer=writer,
        config=cfg.to_dict(),
    )


def restart_resume(cfg: Config) -> bool | None:
    """What a job that torchrun restarted (--max-restarts) continues from: True (its newest
    valid checkpoint) once the failed attempt committed one, else None (start over; a rank that
    died before the first checkpoint has nothing to resume). Every rank reads the same
    directory before any of them writes, so they agree."""
    run_dir = RunDir(Path(cfg.output.dir) / (cfg.output.name or "run"))
    return True if checkpointer_for(run_dir, cfg, writer=False).committed() else None


def open_run(
    cfg: Config,
    resume: bool | str | Path | None,
    log: Callable[[str], None],
    *,
    writer: bool = True,
) -> tuple[RunDir, dict[str, Any] | None]:
    """The run directory to write, and the checkpoint to continue from (None: a fresh start).

    `writer=False` (ranks other than 0) only finds and loads the checkpoint; it never touches
    the directory.
    """
    run_dir = RunDir(Path(cfg.output.dir) / (cfg.output.name or "run"))
    checkpointer = checkpointer_for(run_dir, cfg)
    if not writer:
        return run_dir, (_find_checkpoint(run_dir, checkpointer, resume, log) if resume else None)
    if not resume:
        checkpointer.clean_temporary()  # also recovers a step moved aside by an unfinished save
        if not cfg.output.overwrite and not run_dir.is_complete and checkpointer.committed():
            newest = checkpointer.committed()[0]
            raise ForgeError(
                f"{run_dir.path} holds an interrupted run with checkpoints (newest {newest.name}); "
                "continue it with --resume, or set output.overwrite=true to start over"
            )
        run_dir.prepare(overwrite=cfg.output.overwrite)
        return run_dir, None

    checkpointer.clean_temporary()
    checkpoint = _find_checkpoint(run_dir, checkpointer, resume, _warn)
    _check_config(run_dir, cfg, checkpoint)
    # From here the directory is an unfinished run again: drop the manifest first.
    (run_dir.path / MANIFEST).unlink(missing_ok=True)
    history = checkpoint["trainer"]["loop"]["history"]
    atomic_write(run_dir.path / "history.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    loop = checkpoint["trainer"]["loop"]
    log(
        f"resuming from {checkpoint['path']} (step {loop['step']}, epoch {loop['epoch']}, "
        f"batch {loop['batch']})"
    )
    return run_dir, checkpoint


def _find_checkpoint(
    run_dir: RunDir,
    checkpointer: Checkpointer,
    resume: bool | str | Path,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    if isinstance(resume, str | Path) and not isinstance(resume, bool):
        try:
            return load_checkpoint(resume)
        except CheckpointError as exc:
            raise ForgeError(f"--resume {resume}: {exc}; pass another checkpoint") from None
    if not run_dir.path.is_dir():
        raise ForgeError(
            f"--resume: run directory {run_dir.path} does not exist; train without --resume "
            "first, or set output.name to the run to continue"
        )
    checkpoint = checkpointer.latest_valid(warn)
    if checkpoint is None:
        raise ForgeError(
            f"--resume: no valid checkpoint in {checkpointer.root}; train again without "
            "--resume (with output.overwrite=true)"
        )
    return checkpoint


def _warn(message: str) -> None:
    # Not progress output: a skipped corrupt checkpoint is lost training, so --quiet keeps it.
    print(message, file=sys.stderr, flush=True)


def _check_config(run_dir: RunDir, cfg: Config, checkpoint: dict[str, Any]) -> None:
    """Refuse a resume whose config differs from the one the checkpoint was trained with (its
    config.json; the run's config.yaml for a checkpoint without one) in a key that changes the
    arithmetic."""
    stored = checkpoint.get("config")
    if stored is not None:
        saved, source = stored["config"], f"{checkpoint['path']}/config.json"
    else:
        saved_path = run_dir.path / "config.yaml"
        try:
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ForgeError(
                f"--resume: cannot read {saved_path} ({exc}); the run is incomplete"
            ) from None
        source = str(saved_path)
    changed = config_changes(saved, cfg.to_dict())
    blocked = [k for k in changed if not k.startswith(RESUMABLE)]
    if blocked:
        raise ConfigError(
            f"--resume: the config changed in ways that alter training: {', '.join(blocked)}; "
            f"restore them as in {source}, or start a new run (output.name=NEW_NAME)"
        )
    limits = [k for k in changed if k in ("train.max_epochs", "train.max_steps")]
    sched = cfg.train.scheduler
    if limits and (sched.name in ("cosine", "onecycle") or sched.warmup_ratio > 0):
        # These schedules are laid out over the run's total number of steps: a new total
        # mid-run would make the learning rate jump (and OneCycleLR fails past its old total).
        what = f"scheduler {sched.name}" + (
            f" with warmup_ratio {sched.warmup_ratio}" if sched.warmup_ratio > 0 else ""
        )
        raise ConfigError(
            f"--resume: {', '.join(limits)} changed, but the {what} is laid out over the run's "
            f"total steps, so the learning rate would jump; restore them as in {source}, or use "
            "train.scheduler.name=constant|step (with warmup_steps) for runs you extend"
        )


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        changes: list[str] = []
        for key in keys:
            changes += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return changes
    return [] if old == new else [prefix.rstrip(".")]
