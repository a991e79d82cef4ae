"""`export_run`: a finished run's model as ONNX or TorchScript, checked before it is kept.

    export_run("runs/waves", format="onnx")   # -> runs/waves/export/onnx/
      model.onnx      the graph: positional tensors in, one tensor out (what its task says)
      export.json     inputs (names, dtypes, shapes), output, exporter, opset, the max abs diff
                      measured against the eager model and on which data, sha256 of the file
                      and of the run's weights, and what the task adds (a tokenizer, ...)
      ...             the run's files the task keeps beside it: forgeml.json, config.yaml and
                      preprocess/ (tables) or tokenizer/ (language models)

The run's task describes its model as a `GraphSpec` (forgeml/inference/graph.py); the same
exporters and the same check serve every task (exporters.py). Nothing is written unless the
export passes: it is built in a staging directory and moved into place at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from forgeml.errors import ConfigError, ForgeError
from forgeml.export.exporters import (
    OPSET,
    ExportFailed,
    checked_onnx,
    checked_torchscript,
    library_versions,
)
from forgeml.inference.graph import GraphSpec
from forgeml.inference.onnx_backend import (
    EXPORT_FORMAT_VERSION,
    EXPORT_MANIFEST,
    _need_onnx,
    default_output,
)
from forgeml.run_dir import read_manifest, sha256_file, versions, write_json
from forgeml.tasks import task_for_run

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-4  # max abs diff between the exported and the eager model's outputs
Log = Callable[[str], None]


@dataclass
class ExportResult:
    directory: Path  # the export directory
    file: Path  # model.onnx / model.pt in it
    format: str
    exporter: str  # ONNX: "dynamo" | "torchscript-based"; TorchScript: "torch.jit.trace"
    max_abs_diff: float
    manifest: dict[str, Any]  # what export.json holds


def export_run(
    run_dir: str | Path,
    *,
    format: str = "onnx",
    output: str | Path | None = None,
    data: Any = None,
    tolerance: float = TOLERANCE,
    module: nn.Module | None = None,
    log: Log | None = None,
) -> ExportResult:
    """Export the model of a finished run, check it against the eager model, write it.

    Args:
        run_dir: the directory `forgeml train` wrote.
        format: "onnx" or "torchscript".
        output: the export directory; default RUN_DIR/export/FORMAT. An earlier export there is
            replaced once the new one has passed its check; any other non-empty directory is an
            error.
        data: rows to check on (a path, records or a Table); default the run's held-out split.
            Language models: a text file, folder or glob; default the start of their corpus.
        tolerance: the largest max abs diff from the eager model's raw outputs allowed.
        module: for runs of your own nn.Module (required for them): a fresh instance of it,
            as for `forgeml.load`.
        log: progress messages (default: none).

    Raises:
        ForgeError: not a finished run, a missing ONNX package, an export that fails or does not
            match the eager model (naming the diff); nothing is written then.
    """
    log = log or (lambda _msg: None)
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of: {', '.join(FORMATS)}")
    if not (tolerance >= 0 and np.isfinite(tolerance)):
        raise ConfigError(f"export tolerance must be a number >= 0, got {tolerance!r}")
    run_dir = Path(run_dir)
    run = read_manifest(run_dir)
    task = task_for_run(run)
    if format == "onnx":
        _need_onnx()  # before any work
    out = Path(output) if output is not None else default_output(run_dir, format)
    check_output(out, run_dir)
    spec = task.export_spec(run_dir, data=data, module=module, log=log)
    checked = checked_onnx if format == "onnx" else checked_torchscript
    earlier = (out / EXPORT_MANIFEST).is_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        path = staging / FILES[format]
        try:
            exporter, diff, notes = checked(spec, path, tolerance, log)
        except ExportFailed as exc:
            label = "ONNX" if format == "onnx" else "TorchScript"
            kept = " (its earlier export is unchanged)" if earlier else ""
            raise ForgeError(
                f"{label} export of {run_dir} {exc}; nothing was written to {out}{kept}"
            ) from None
        for name in spec.copied:
            source = run_dir / name
            if source.is_dir():
                shutil.copytree(source, staging / name)
            else:
                shutil.copy2(source, staging / name)
        manifest = export_manifest(spec, run_dir, run, format, exporter, path, diff, tolerance)
        if notes:
            manifest["exporter_failures"] = notes
        write_json(staging / EXPORT_MANIFEST, manifest)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, out / FILES[format], format, exporter, diff, manifest)


def export_manifest(
    spec: GraphSpec,
    run_dir: Path,
    run: dict[str, Any],
    format: str,
    exporter: str,
    path: Path,
    diff: float,
    tolerance: float,
) -> dict[str, Any]:
    """export.json: what the graph takes and gives, how it was made and checked, from which run."""
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "format": format,
        "file": path.name,
        "sha256": sha256_file(path),
        "exporter": exporter,
        **({"opset": OPSET} if format == "onnx" else {}),
        "task": run.get("task"),
        "inputs": [graph_input.entry() for graph_input in spec.inputs],
        "output": {
            "name": spec.output.name,
            "dtype": spec.output.dtype,
            "shape": list(spec.output.shape),
        },
        "padded_to_max_length": exporter != "dynamo" and spec.pads,
        **spec.fields,
        "check": {
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "data": spec.data,
            "batches": spec.described,
        },
        "run": {
            "directory": str(run_dir.resolve()),
            "model": run.get("model"),
            "task": run.get("task"),
            "weights_sha256": run.get("weights_sha256"),
        },
        "weights_sha256": run.get("weights_sha256"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(format, versions()),
    }


def check_output(out: Path, run_dir: Path) -> None:
    """Refuse an output that would overwrite the run or a directory that is not an export."""
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise ConfigError(
            f"--output {out} would replace the run directory {run_dir}; give a new directory "
            f"or leave --output out (default {default_output(run_dir, 'FORMAT')})"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a directory for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MANIFEST).is_file():
        raise ConfigError(
            f"--output {out} is a non-empty directory that holds no forgeml export "
            f"({EXPORT_MANIFEST}); give a new or empty directory"
        )


def replace_dir(staging: Path, out: Path) -> None:
    """Move the finished export into place; an earlier export there goes only once it has."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
