"""Run an exported ONNX model in place of the torch model: `OnnxBackend`, and finding and
checking an export directory (export.json: format version, model file, sha256).

`forgeml predict RUN --backend onnx` and `forgeml.load(RUN, backend="onnx")` use this module
alone; writing exports is forgeml/export/. onnxruntime is imported only when a session is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from forgeml.errors import ForgeError
from forgeml.run_dir import read_manifest, sha256_file

EXPORT_MANIFEST = "export.json"
EXPORT_FORMAT_VERSION = 1
INSTALL_HINT = "install the export extra: pip install 'forgeml[export]'"


def _need_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ForgeError(f"ONNX needs the {exc.name} package; {INSTALL_HINT}") from None
    return onnxruntime


def _session(path: Path, providers: Sequence[str] | None = None) -> Any:
    ort = _need_onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers etc.
    return ort.InferenceSession(
        str(path), options, providers=list(providers or ["CPUExecutionProvider"])
    )


def default_output(run_dir: str | Path, format: str) -> Path:
    return Path(run_dir) / "export" / format


def find_export(run_dir: str | Path, format: str = "onnx", export_dir: str | Path | None = None):
    """The export directory for `run_dir`: `export_dir`, `run_dir` itself when it is an export
    directory, else RUN_DIR/export/FORMAT."""
    run_dir = Path(run_dir)
    if export_dir is not None:
        directory = Path(export_dir)
    elif (run_dir / EXPORT_MANIFEST).is_file():
        directory = run_dir
    else:
        directory = default_output(run_dir, format)
    if not (directory / EXPORT_MANIFEST).is_file():
        raise ForgeError(
            f"no {format} export at {directory} ({EXPORT_MANIFEST} is missing); create it with: "
            f"forgeml export {run_dir} --format {format}"
        )
    return directory


def read_export_manifest(directory: str | Path, format: str | None = None) -> dict[str, Any]:
    """export.json of an export directory, checked for its version, format and model file."""
    directory = Path(directory)
    path = directory / EXPORT_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ForgeError(f"{path} is unreadable ({exc}); export the run again") from None
    if manifest.get("export_format_version") != EXPORT_FORMAT_VERSION:
        raise ForgeError(
            f"{path} has export format version {manifest.get('export_format_version')!r}; this "
            f"forgeml reads {EXPORT_FORMAT_VERSION}; export the run again"
        )
    if format is not None and manifest.get("format") != format:
        raise ForgeError(
            f"{directory} holds a {manifest.get('format')} export, not {format}; "
            f"export the run with --format {format}"
        )
    model = directory / str(manifest.get("file"))
    if not model.is_file():
        raise ForgeError(f"{model} is missing; the export is incomplete, export the run again")
    if sha256_file(model) != manifest.get("sha256"):
        raise ForgeError(
            f"{model} does not match the sha256 in {path}; the file was changed or corrupted; "
            "export the run again"
        )
    return manifest


class OnnxBackend(nn.Module):
    """An exported ONNX model run by onnxruntime, in place of the torch model.

    Takes the dict batch of schema.py (torch tensors or numpy arrays) and returns the (B,
    out_dim) float32 raw outputs, as the torch model does. It is an nn.Module so `Predictor`,
    `forward_batches` and `evaluate` take it unchanged: it has no weights, only an empty
    parameter that tells them which device outputs go to.

    Args:
        export_dir: a directory `export_run(..., format="onnx")` wrote.
        providers: onnxruntime execution providers; default CPU.
    """

    def __init__(self, export_dir: str | Path, *, providers: Sequence[str] | None = None) -> None:
        super().__init__()
        self.directory = Path(export_dir)
        self.export_manifest = read_export_manifest(self.directory, "onnx")
        self.session = _session(self.directory / self.export_manifest["file"], providers)
        self.inputs = self.export_manifest["inputs"]
        self.output_name = self.export_manifest["output"]["name"]
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    @classmethod
    def for_run(
        cls, run_dir: str | Path, export_dir: str | Path | None = None, **kwargs: Any
    ) -> OnnxBackend:
        """The ONNX export of `run_dir` (see `find_export`), checked to be of its weights."""
        directory = find_export(run_dir, "onnx", export_dir)
        backend = cls(directory, **kwargs)
        expected = read_manifest(run_dir).get("weights_sha256")
        if expected and backend.export_manifest.get("weights_sha256") != expected:
            raise ForgeError(
                f"the ONNX export in {directory} was made from other weights than {run_dir} "
                f"holds now (the run was trained again); export it again: forgeml export "
                f"{run_dir} --format onnx"
            )
        return backend

    def run(self, inputs: Mapping[str, Tensor | np.ndarray]) -> np.ndarray:
        """(B, out_dim) float32 numpy outputs for a dict batch."""
        missing = [e["key"] for e in self.inputs if e["key"] not in inputs]
        if missing:
            raise ForgeError(
                f"the batch has no {', '.join(missing)}; the exported model takes "
                f"{', '.join(e['key'] for e in self.inputs)}"
            )
        feed = {}
        for entry in self.inputs:
            value = inputs[entry["key"]]
            if isinstance(value, Tensor):
                value = value.detach().cpu().numpy()
            array = np.asarray(value).astype(entry["dtype"], copy=False)
            shape = entry["shape"]
            fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int)]
            longest = entry.get("max_length")
            if (
                array.ndim != len(shape)
                or any(array.shape[i] != d for i, d in fixed)
                or (longest and not 1 <= array.shape[1] <= longest)
            ):
                raise ForgeError(
                    f"batch input {entry['key']!r} has shape {list(array.shape)}; the exported "
                    f"model takes {shape}" + (f" with length_* <= {longest}" if longest else "")
                )
            feed[entry["name"]] = array
        return self.session.run([self.output_name], feed)[0]

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.run(inputs))).to(self.anchor.device)
