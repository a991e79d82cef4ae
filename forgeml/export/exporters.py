"""The exporters, and the one check every export passes: the same numbers as the eager model.

ONNX: the dynamo exporter (`torch.export`) first; if it cannot capture the model (data-dependent
shapes: the 1-D CNN's masked batchnorm, packed RNN sequences) or its graph fails the check, the
TorchScript-based exporter. TorchScript: `torch.jit.trace`. Whichever writes the file, it is run
(onnxruntime on the CPU, or the traced module) on the spec's check batches and compared with the
eager module in fp32: a max abs diff above the tolerance fails it. onnx, onnxruntime and
onnxscript (the `export` extra) are imported only when ONNX is used.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from forgeml.inference.graph import GraphSpec
from forgeml.inference.onnx_backend import _session

OPSET = 18
Log = Callable[[str], None]
Run = Callable[[tuple[Tensor, ...]], np.ndarray]


class ExportFailed(Exception):
    """Why an export failed its check; `export_run` makes it one ForgeError line."""


# --------------------------------------------------------------------------- the check


def compare(run: Run, spec: GraphSpec) -> tuple[float, str]:
    """Max abs diff between `run(batch)` and the eager module over the spec's check batches,
    and the batch where it is largest. Non-finite or misshapen outputs count as inf."""
    worst, where = -1.0, ""
    for batch, described in zip(spec.batches, spec.described, strict=True):
        with torch.no_grad():
            expected = spec.eager(*batch).float().numpy()
        got = np.asarray(run(batch))
        if got.shape != expected.shape:
            diff = float("inf")
        else:
            # float32: a (B, T, V) array of a real vocabulary is large, and the difference of
            # two close float32 numbers is exact.
            diff = float(np.abs(got.astype(np.float32, copy=False) - expected).max())
            diff = diff if np.isfinite(diff) else float("inf")
        if diff > worst:
            worst, where = diff, described
    return worst, where


def checked_onnx(
    spec: GraphSpec, path: Path, tolerance: float, log: Log
) -> tuple[str, float, dict]:
    """Each ONNX exporter in turn (writing `path`) until one passes the check: (exporter, diff,
    {exporter tried first: why it was not kept}).

    Raises:
        ExportFailed: no exporter passed; the message says why for each.
    """
    exporters = {
        "dynamo": lambda: export_onnx(spec, path, dynamo=True),
        "torchscript-based": lambda: export_onnx(spec, path, dynamo=False),
    }
    failures: dict[str, str] = {}
    for exporter, export in exporters.items():
        log(f"exporting to ONNX with the {exporter} exporter")
        path.unlink(missing_ok=True)
        try:
            with quiet():
                export()
        except Exception as exc:  # the exporters raise anything from torch._dynamo to onnx
            failures[exporter] = f"export failed ({reason(exc)})"
            log(f"{exporter} exporter: {failures[exporter]}")
            continue
        try:
            diff, where = compare(run_onnx(path, spec), spec)
        except Exception as exc:  # onnxruntime rejects the graph or fails on a batch
            failures[exporter] = f"onnxruntime failed ({reason(exc)})"
            log(f"{exporter} exporter: {failures[exporter]}")
            continue
        if diff <= tolerance:
            return exporter, diff, failures
        failures[exporter] = (
            f"max abs diff {diff:.3g} > tolerance {tolerance:g} on {where} (onnxruntime vs eager)"
        )
        log(f"{exporter} exporter: {failures[exporter]}")
    detail = "; ".join(f"{name} exporter: {why}" for name, why in failures.items())
    raise ExportFailed(f"failed its check against the eager model: {detail}")


def checked_torchscript(
    spec: GraphSpec, path: Path, tolerance: float, log: Log
) -> tuple[str, float, dict]:
    """torch.jit.trace (writing `path`), then the check: ("torch.jit.trace", diff, {}).

    Raises:
        ExportFailed: the trace failed, or its module fails or differs on a check batch.
    """
    log("exporting to TorchScript with torch.jit.trace")
    try:
        with quiet():
            export_torchscript(spec, path)
        diff, where = compare(run_torchscript(path), spec)
    except Exception as exc:  # the tracer, or the traced module failing on another batch
        raise ExportFailed(f"failed ({reason(exc)})") from None
    if not diff <= tolerance:
        raise ExportFailed(
            f"does not match the eager model: max abs diff {diff:.3g} > tolerance "
            f"{tolerance:g} on {where}"
        )
    return "torch.jit.trace", diff, {}


# --------------------------------------------------------------------------- exporters


def export_onnx(spec: GraphSpec, path: Path, *, dynamo: bool) -> None:
    """`torch.onnx.export` with the dynamo exporter (capturing `spec.eager` with dynamic dims)
    or the TorchScript-based one (tracing `spec.onnx_traced` with dynamic axes)."""
    if dynamo:
        module = spec.eager
        options: dict[str, Any] = {"dynamic_shapes": spec.dynamic_shapes(), "verbose": False}
        options["external_data"] = False
    else:
        module = spec.onnx_traced
        options = {"dynamic_axes": spec.dynamic_axes(), "do_constant_folding": True}
    torch.onnx.export(
        module,
        spec.example,
        str(path),
        dynamo=dynamo,
        input_names=[i.name for i in spec.inputs],
        output_names=[spec.output.name],
        opset_version=OPSET,
        **options,
    )


def export_torchscript(spec: GraphSpec, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(spec.traced, spec.example, check_trace=False)
    torch.jit.save(traced, str(path))


def run_onnx(path: Path, spec: GraphSpec) -> Run:
    session = _session(path)

    def run(tensors: tuple[Tensor, ...]) -> np.ndarray:
        feed = {
            i.name: t.numpy().astype(i.dtype, copy=False)
            for i, t in zip(spec.inputs, tensors, strict=True)
        }
        return session.run([spec.output.name], feed)[0]

    return run


def run_torchscript(path: Path) -> Run:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated
        module = torch.jit.load(str(path), map_location="cpu")

    def run(tensors: tuple[Tensor, ...]) -> np.ndarray:
        with torch.no_grad():
            return module(*tensors).float().numpy()

    return run


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters: Python warnings (deprecations, tracer warnings), prints, and the
    C++ warnings torch writes straight to file descriptor 2 (e.g. about prim::PackPadded)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with (
            tempfile.TemporaryFile() as sink,
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def reason(exc: BaseException) -> str:
    """The root cause of an exporter error, on one short line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def library_versions(format: str, versions: dict[str, Any]) -> dict[str, Any]:
    """forgeml's versions plus, for ONNX, those of onnx and onnxruntime."""
    library = dict(versions)
    if format == "onnx":
        import onnx
        import onnxruntime

        library.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return library
