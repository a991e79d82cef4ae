"""Reading a sharded (torch.distributed.checkpoint) checkpoint without unpickling code.

DCP's `FileSystemReader.read_metadata` runs a plain `pickle.load` on the checkpoint's
`.metadata` file, and its `DefaultLoadPlanner.load_bytes` a `torch.load(weights_only=False)` on
every non-tensor entry. A checkpoint directory is a user-supplied path (`--resume PATH`), so
either would run whatever code a crafted file holds. Here the metadata goes through an unpickler
that only builds DCP's own metadata records and the few torch values they hold (sizes, dtypes,
layouts), and non-tensor entries through `torch.load(weights_only=True)`. Anything else is a
`CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from forgeml.errors import CheckpointError

METADATA_FILE = ".metadata"
# Exactly what DCP's metadata pickles hold (torch 2.4-2.13): its dataclass records, torch.Size,
# dtypes (torch.float32, ...), layouts (rebuilt by torch.serialization._get_layout from a name)
# and the checkpoint's path. Each builds a plain value; none runs code.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)  # torch.float32, torch.strided


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUES):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_metadata(path: Path) -> Metadata:
    """The `Metadata` of the `.metadata` file at `path`, unpickled with the allow-list above."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: not a sharded-checkpoint metadata file ({exc}); expected the .metadata "
            "that forgeml wrote with torch.distributed.checkpoint; resume from another checkpoint"
        ) from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(
            f"{path}: holds a {type(metadata).__name__}, not checkpoint metadata; resume from "
            "another checkpoint"
        )
    return metadata


class SafeReader(FileSystemReader):
    """`FileSystemReader` whose metadata is read by `read_metadata` instead of `pickle.load`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}"
        metadata = read_metadata(Path(self.path) / name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` that loads non-tensor entries with `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load(state: dict[str, Any], directory: Path) -> None:
    """`dcp.load` of `directory` into `state` in place, through `SafeReader`/`SafeLoadPlanner`;
    a failure on any rank (DCP raises a BaseException carrying each rank's error) becomes one
    `CheckpointError` that says what was wrong."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=SafeReader(directory), planner=SafeLoadPlanner())
    except CheckpointException as exc:
        rank, (error, _trace) = next(iter(exc.failures.items()))
        raise CheckpointError(
            f"sharded checkpoint {directory} cannot be loaded (rank {rank}): {_reason(error)}; "
            "resume from another checkpoint"
        ) from None


def _reason(error: BaseException) -> str:
    """The line of a DCP failure that says what was wrong (its messages run over many lines)."""
    text = str(error)
    for marker in ("not part of a checkpoint", "not checkpoint metadata", "GLOBAL"):
        for line in text.splitlines():
            if marker in line:
                return (
                    line.strip().split("global metadata read failed: ")[-1].split("; rank local")[0]
                )
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
