"""The run directory: everything needed to predict, nothing else.

    runs/<name>/
      forgeml.json       format version, versions, created-at, task, schemas, weight sha256
      config.yaml        the resolved config, every default filled in
      model.safetensors  weights (never pickle)
      preprocess/        fitted preprocessing state (JSON)
      metrics.json       final metrics per split
      history.jsonl      one line per evaluation
      card.md, *.png     model card and plots

`forgeml.json` is written last and atomically: a directory without it is an interrupted run and
is never loaded as a model. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from torch import nn

from forgeml.errors import ConfigError, ForgeError

FORMAT_VERSION = 1
MANIFEST = "forgeml.json"
WEIGHTS = "model.safetensors"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    # numpy / torch scalars and arrays: tolist() gives a plain number for a scalar and nested
    # lists otherwise (item() would fail on an array of more than one value).
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    from forgeml import __version__

    return {
        "forgeml": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def drop_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the later names of tensors that share memory with an earlier one.

    Tied weights (a GPT's lm_head and token embedding) are one Parameter under two names;
    safetensors refuses to write such aliases, and one copy is all a load needs (see
    `load_state`)."""
    seen: set[tuple] = set()
    kept = {}
    for name, tensor in state.items():
        key = _alias_key(tensor)
        if key not in seen:
            seen.add(key)
            kept[name] = tensor
    return kept


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """`model.load_state_dict(state, strict=False)`; returns (missing, unexpected) names, where
    a tied alias of a loaded tensor does not count as missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    names = dict(model.state_dict(keep_vars=True))
    loaded = {_alias_key(names[k]) for k in state if k in names}
    missing = [k for k in missing if _alias_key(names[k]) not in loaded]
    return missing, list(unexpected)


def _alias_key(tensor: torch.Tensor) -> tuple:
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
    )


class RunDir:
    """Writes one run directory. `prepare()` first, `finish()` last."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def is_complete(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def prepare(self, *, overwrite: bool) -> None:
        """Make an empty directory for a new run.

        A finished run is never replaced silently; an interrupted one (no manifest) is cleared.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(
                f"output path {self.path} exists and is a file; set output.dir or output.name"
            )
        if self.is_complete and not overwrite:
            raise ConfigError(
                f"run directory {self.path} already holds a finished run; set "
                "output.overwrite=true to replace it, or output.name=NEW_NAME to keep both"
            )
        if self.path.exists():
            # Drop the manifest first: if we die while clearing, the directory no longer looks
            # like a finished run.
            (self.path / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text)

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def append_history(self, row: dict[str, Any]) -> None:
        with open(self.path / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")

    def save_weights(self, weights: dict[str, torch.Tensor]) -> str:
        """Save a (full, unwrapped) state_dict as safetensors; returns its sha256."""
        state = {k: v.detach().contiguous().cpu() for k, v in drop_aliases(weights).items()}
        target = self.path / WEIGHTS
        tmp = target.with_name(f".{WEIGHTS}.tmp")
        safetensors.torch.save_file(state, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return sha256_file(target)

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write forgeml.json last: from now on the directory is a usable model."""
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            **manifest,
        }
        self.write_json(MANIFEST, manifest)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished run, or a clear error saying why `run_dir` is not one."""
    path = Path(run_dir)
    if not path.exists():
        raise ForgeError(
            f"run directory {path} does not exist; pass the directory that train wrote"
        )
    if not path.is_dir():
        raise ForgeError(f"{path} is not a directory; pass a run directory such as runs/NAME")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ForgeError(
            f"{path} is not a finished forgeml run (no {MANIFEST}); the run was interrupted or "
            "this is not a run directory; train again or pass another directory"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ForgeError(f"{manifest_path} is unreadable ({exc}); train the run again") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ForgeError(
            f"{manifest_path} has format version {version}; this forgeml reads version "
            f"{FORMAT_VERSION}; use the forgeml version that wrote it or train again"
        )
    return manifest


def read_config_dict(run_dir: str | Path) -> dict[str, Any]:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))


def load_weights(run_dir: str | Path, manifest: dict[str, Any], model: nn.Module) -> None:
    """Load model.safetensors into `model` after checking its sha256 against the manifest."""
    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise ForgeError(f"{path} is missing; the run directory is incomplete, train again")
    expected = manifest.get("weights_sha256")
    if not isinstance(expected, str) or not expected:
        # Never load unchecked: a manifest without the checksum was not written by forgeml train.
        raise ForgeError(
            f"{Path(run_dir) / MANIFEST} records no weights_sha256 for {WEIGHTS}; forgeml only "
            "loads weights it can check; train the run again"
        )
    if sha256_file(path) != expected:
        raise ForgeError(
            f"{path} does not match the sha256 recorded in {MANIFEST}; the file was changed or "
            "corrupted; restore it or train again"
        )
    state = safetensors.torch.load_file(str(path))
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ForgeError(f"{path}: weight '{name}' holds NaN or infinite values; train again")
    missing, unexpected = load_state(model, state)
    if missing or unexpected:
        raise ForgeError(
            f"{path} does not fit the model built from config.yaml (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}); the config or code changed since training"
        )
