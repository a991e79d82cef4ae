"""Export a run's model to ONNX or TorchScript, checked against the eager model before it is kept.

    export_run("runs/waves", format="onnx")   # -> runs/waves/export/onnx/
      model.onnx            the model's tensors in, (B, out_dim) raw outputs out
      export.json           inputs (names, dtypes, shapes), output, exporter, opset, the max abs
                            diff measured against the eager model, sha256 of model.onnx and of
                            the run's weights
      forgeml.json, config.yaml, preprocess/   copied from the run: preprocessing stays in
                            Python, so the directory is all `Predictor`-style loading needs

The exported graph takes the dict batch of schema.py as positional tensors, in the order of
export.json "inputs" (ONNX has no dict inputs): "numeric" (B, F) float32, "category" (B, K)
int64, "image" (B, C, H, W) float32, and per text/sequence column its ids (B, L) int64 or values
(B, L, C) float32 plus its mask (B, L) bool. B is dynamic, and so is L (1..max_length).

ONNX: the dynamo exporter (`torch.export`) first; if it cannot capture the model (data-dependent
shapes: the 1-D CNN's masked batchnorm, packed RNN sequences) or its graph fails the check, the
TorchScript-based exporter. Either result is run in onnxruntime on batches of the run's own data
(different batch sizes and lengths than the one it was traced with) and compared with the eager
model in fp32: a max abs diff above the tolerance (1e-4) is a ForgeError naming it, and nothing
is written. TorchScript: `torch.jit.trace`, checked the same way.

Trace-based capture (torch.jit.trace, the TorchScript-based ONNX exporter) records Python
branches on shapes as they went for the example batch (cnn1d pools pad an odd L, for one). So
those exports pad every text/sequence input to its column's max_length inside the graph: the
model sees one L, and the models are built so that padding never changes a row's output. Where
a module still traces wrong (an RNN's last state, a pretrained classifier's input ids), it is
traced through a stand-in from forgeml/export/trace.py.

Language-model runs (task language_modeling) go to forgeml/export/language_model.py: tokens (B, T) in,
logits (B, T, V) out, with the tokenizer; runs of your own nn.Module need `module=`.

onnx / onnxruntime / onnxscript (the `export` extra) are imported only when ONNX is used.
Loading an export (`OnnxBackend`, `predict --backend onnx`) is forgeml/inference/onnx_backend.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.errors import ConfigError, DataError, ForgeError
from forgeml.export.trace import for_torchscript_onnx, for_tracing
from forgeml.inference.onnx_backend import (
    EXPORT_FORMAT_VERSION,
    EXPORT_MANIFEST,
    _need_onnx,
    _session,
    default_output,
)
from forgeml.run_dir import MANIFEST, read_manifest, sha256_file, versions, write_json
from forgeml.schema import InputSpec

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-4  # max abs diff between the exported and the eager model's raw outputs
OPSET = 18
OUTPUT_NAME = "output"
CHECK_ROWS = 64  # rows of the run's data the export is checked on
EXAMPLE_ROWS = 8  # rows of the example batch the export is traced with
COPIED = ("config.yaml", "preprocess", MANIFEST)  # from the run, for the preprocessing
LM_TASK = "language_modeling"  # forgeml/export/language_model.py exports these runs

Log = Callable[[str], None]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSlot:
    """One positional input of the exported model and the batch key it stands for."""

    key: str  # the dict-batch key: "numeric", "category", "image", "text:<col>", "mask:<col>"...
    name: str  # the graph input's name: the key with anything but [A-Za-z0-9_] as "_"
    dtype: str  # numpy dtype name: float32 | int64 | bool
    shape: tuple[int | str, ...]  # "batch" and "length_<i>" are dynamic
    max_length: int | None = None  # text/sequence inputs: the longest L the model takes
    column: str | None = None  # text/sequence inputs: the column


def input_slots(spec: InputSpec) -> list[InputSlot]:
    """The exported model's inputs for `spec`, in the order the graph takes them."""
    slots: list[InputSlot] = []
    if spec.num_numeric:
        slots.append(InputSlot("numeric", "numeric", "float32", ("batch", spec.num_numeric)))
    if spec.category_sizes:
        k = len(spec.category_sizes)
        slots.append(InputSlot("category", "category", "int64", ("batch", k)))
    if spec.image_shape is not None:
        slots.append(InputSlot("image", "image", "float32", ("batch", *spec.image_shape)))
    for i, column in enumerate(spec.sequences):
        length = f"length_{i}"
        values: tuple[int | str, ...] = ("batch", length)
        if column.kind == "text":
            slots.append(InputSlot(column.key, "", "int64", values, column.max_length, column.name))
        else:
            shape = (*values, column.channels)
            slots.append(
                InputSlot(column.key, "", "float32", shape, column.max_length, column.name)
            )
        slots.append(InputSlot(column.mask_key, "", "bool", values, column.max_length, column.name))
    # Column names may hold anything ('.', spaces); graph names stay plain and unique.
    taken: set[str] = set()
    named = []
    for slot in slots:
        base = slot.name or re.sub(r"\W", "_", slot.key, flags=re.ASCII)
        name, n = base, 1
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        named.append(replace(slot, name=name))
    return named


class PositionalModel(nn.Module):
    """(t_0, ..., t_n) -> model({key_i: t_i}): the dict batch as positional tensors.

    `pad=True` pads each text/sequence input (and its mask, with False) to its column's
    max_length first, so a trace sees one L whatever batch it is given.
    """

    def __init__(self, model: nn.Module, slots: Sequence[InputSlot], *, pad: bool) -> None:
        super().__init__()
        self.model = model
        self.keys = [s.key for s in slots]
        self.pad_lengths = {s.key: s.max_length for s in slots if pad and s.max_length}

    def forward(self, *tensors: Tensor) -> Tensor:
        batch = dict(zip(self.keys, tensors, strict=True))
        for key, length in self.pad_lengths.items():
            x = batch[key]
            extra = length - x.shape[1]
            # F.pad counts from the last dim: (B, L, C) -> (0, 0, 0, extra), (B, L) -> (0, extra)
            batch[key] = F.pad(x, (0, 0, 0, extra) if x.dim() == 3 else (0, extra))
        return self.model(batch)  # (B, out_dim)


def pad_batch(batch: Mapping[str, Tensor], slots: Sequence[InputSlot]) -> dict[str, Tensor]:
    """The batch with every text/sequence input zero-padded (masks: False) to max_length."""
    out = dict(batch)
    for slot in slots:
        if slot.max_length:
            x = out[slot.key]
            extra = slot.max_length - x.shape[1]
            out[slot.key] = F.pad(x, (0, 0, 0, extra) if x.dim() == 3 else (0, extra))
    return out


# --------------------------------------------------------------------------- check data


def synthetic_inputs(spec: InputSpec, rows: int, seed: int = 0) -> dict[str, Tensor]:
    """Random valid model inputs for `spec` (left-aligned masks, at least one real step)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    if spec.num_numeric:
        out["numeric"] = torch.randn(rows, spec.num_numeric, generator=gen)
    if spec.category_sizes:
        columns = [torch.randint(0, n, (rows,), generator=gen) for n in spec.category_sizes]
        out["category"] = torch.stack(columns, dim=1)
    if spec.image_shape is not None:
        out["image"] = torch.randn(rows, *spec.image_shape, generator=gen)
    for column in spec.sequences:
        length = column.max_length
        lengths = torch.randint(1, length + 1, (rows,), generator=gen)
        mask = torch.arange(length) < lengths[:, None]  # (rows, L)
        if column.kind == "text":
            ids = torch.randint(1, max(column.vocab_size, 2), (rows, length), generator=gen)
            out[column.key] = ids.masked_fill(~mask, 0)
        else:
            values = torch.randn(rows, length, column.channels, generator=gen)
            out[column.key] = values.masked_fill(~mask[..., None], 0.0)
        out[column.mask_key] = mask
    return out


def _check_inputs(predictor: Any, data: Any, log: Log) -> tuple[dict[str, Tensor], str]:
    """Up to CHECK_ROWS rows of model inputs to check the export on, and where they came from.

    `data` (a path, records or a Table) if given; else the run's held-out split, read and split
    as `forgeml evaluate` does; a run trained from Python objects has no file to re-read, so it
    gets random inputs of the right shapes.
    """
    from forgeml.data.bad_rows import BadRows
    from forgeml.data.splits import held_out, read_splits

    config = predictor.config
    if data is not None:
        table = predictor.to_table(data)
        where = f"{table.source}"
    elif config.data.source.startswith("python:"):
        rows = CHECK_ROWS
        log(f"the run was trained from Python objects: checking on {rows} random input rows")
        return synthetic_inputs(predictor.preprocessor.spec, rows), f"{rows} random rows"
    else:
        tables = read_splits(config.data, config.seed)
        split = held_out(tables)
        table = tables[split]
        where = f"the {split} split of {table.source}"
    table = table.take(np.arange(min(CHECK_ROWS, table.num_rows)))
    bad = BadRows() if config.data.on_bad_rows == "skip" else None
    inputs, _, kept = predictor.preprocessor.transform_rows(table, with_target=False, bad_rows=bad)
    if not len(kept):
        raise DataError(
            f"{where}: no usable row to check the export on; pass rows with --data FILE"
        )
    return inputs, f"{len(kept)} rows of {where}"


def check_batches(inputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """Batches of `inputs` with different sizes and lengths, each trimmed as a loader would:
    the first EXAMPLE_ROWS rows, all rows, the 3 shortest rows, the longest row alone, and the
    first 2 rows cut to their first step (any valid input will do: both models get the same)."""
    from forgeml.data.tensors import TensorData

    data = TensorData(dict(inputs), None)
    n = len(data)
    masks = [v for k, v in inputs.items() if k.startswith("mask:")]
    steps = sum(m.sum(dim=1) for m in masks) if masks else torch.zeros(n, dtype=torch.long)
    order = torch.argsort(steps, stable=True)
    picks = [torch.arange(min(EXAMPLE_ROWS, n)), torch.arange(n), order[:3], order[-1:]]
    batches, seen = [], set()
    for index in picks:
        key = tuple(index.tolist())
        if key not in seen:
            seen.add(key)
            batches.append(data.batch(index)[0])
    if masks:  # rows are left-aligned: step 0 is always real
        first = data.batch(torch.arange(min(2, n)))[0]
        sequence = [k for k in first if k.startswith(("text:", "seq:", "mask:"))]
        batches.append({k: v[:, :1] if k in sequence else v for k, v in first.items()})
    return batches


def example_batch(inputs: Mapping[str, Tensor], slots: Sequence[InputSlot]) -> tuple[Tensor, ...]:
    """The batch to trace with: EXAMPLE_ROWS rows (at least 2: a size of 1 would be taken as a
    constant), padded to max_length (a length of 1 would be too)."""
    n = len(next(iter(inputs.values())))
    index = torch.arange(min(EXAMPLE_ROWS, n)) if n >= 2 else torch.zeros(2, dtype=torch.long)
    batch = pad_batch({k: v[index] for k, v in inputs.items()}, slots)
    return tuple(batch[s.key] for s in slots)


def _describe(batch: Mapping[str, Tensor], slots: Sequence[InputSlot]) -> str:
    rows = len(next(iter(batch.values())))
    lengths = sorted({batch[s.key].shape[1] for s in slots if s.max_length})
    return f"a batch of {rows} row{'s' if rows != 1 else ''}" + (
        f", length {'/'.join(map(str, lengths))}" if lengths else ""
    )


def compare(
    run: Callable[[tuple[Tensor, ...]], np.ndarray],
    model: nn.Module,
    batches: Sequence[Mapping[str, Tensor]],
    slots: Sequence[InputSlot],
) -> tuple[float, str]:
    """Max abs diff between `run(positional tensors)` and the eager `model(batch)` over
    `batches`, and the batch where it is largest. Non-finite or misshapen outputs count as inf."""
    worst, where = -1.0, ""
    for batch in batches:
        with torch.no_grad():
            expected = model(dict(batch)).float().numpy()
        got = np.asarray(run(tuple(batch[s.key] for s in slots)), dtype=np.float64)
        if got.shape != expected.shape:
            diff = float("inf")
        else:
            diff = float(np.abs(got - expected).max()) if got.size else 0.0
            diff = diff if np.isfinite(diff) else float("inf")
        if diff > worst:
            worst, where = diff, _describe(batch, slots)
    return worst, where


# --------------------------------------------------------------------------- exporters


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def _reason(exc: BaseException) -> str:
    """The root cause of an exporter error, on one short line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _export_onnx_dynamo(
    model: nn.Module, example: tuple[Tensor, ...], slots: Sequence[InputSlot], path: Path
) -> None:
    batch = torch.export.Dim("batch", min=1)
    lengths: dict[str, Any] = {}
    shapes = []
    for slot in slots:
        dims: dict[int, Any] = {0: batch}
        if slot.max_length and slot.max_length >= 2:  # a max_length of 1 is a constant
            name = slot.shape[1]
            if name not in lengths:
                lengths[name] = torch.export.Dim(str(name), min=1, max=slot.max_length)
            dims[1] = lengths[name]
        shapes.append(dims)
    wrapper = PositionalModel(model, slots, pad=False).eval()
    torch.onnx.export(
        wrapper,
        example,
        str(path),
        dynamo=True,
        input_names=[s.name for s in slots],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(tuple(shapes),),  # one entry: forward(*tensors) is one argument
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )


def _export_onnx_torchscript(
    model: nn.Module, example: tuple[Tensor, ...], slots: Sequence[InputSlot], path: Path
) -> None:
    wrapper = PositionalModel(for_torchscript_onnx(model), slots, pad=True).eval()
    axes: dict[str, dict[int, str]] = {}
    for slot in slots:
        axes[slot.name] = {i: str(d) for i, d in enumerate(slot.shape) if isinstance(d, str)}
    axes[OUTPUT_NAME] = {0: "batch"}
    torch.onnx.export(
        wrapper,
        example,
        str(path),
        dynamo=False,
        input_names=[s.name for s in slots],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        opset_version=OPSET,
        do_constant_folding=True,
    )


def _run_onnx(path: Path, slots: Sequence[InputSlot]) -> Callable[[tuple[Tensor, ...]], Any]:
    session = _session(path)

    def run(tensors: tuple[Tensor, ...]) -> np.ndarray:
        feed = {
            s.name: t.numpy().astype(s.dtype, copy=False)
            for s, t in zip(slots, tensors, strict=True)
        }
        return session.run([OUTPUT_NAME], feed)[0]

    return run


def _export_torchscript(
    model: nn.Module, example: tuple[Tensor, ...], slots: Sequence[InputSlot], path: Path
) -> None:
    wrapper = PositionalModel(for_tracing(model), slots, pad=True).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    torch.jit.save(traced, str(path))


def _run_torchscript(path: Path) -> Callable[[tuple[Tensor, ...]], Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated
        module = torch.jit.load(str(path), map_location="cpu")

    def run(tensors: tuple[Tensor, ...]) -> np.ndarray:
        with torch.no_grad():
            return module(*tensors).float().numpy()

    return run


# --------------------------------------------------------------------------- export_run


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
    from forgeml.tasks.table.predictor import Predictor

    log = log or (lambda _msg: None)
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of: {', '.join(FORMATS)}")
    if not (tolerance >= 0 and np.isfinite(tolerance)):
        raise ConfigError(f"export tolerance must be a number >= 0, got {tolerance!r}")
    run_dir = Path(run_dir)
    run_manifest = read_manifest(run_dir)
    if run_manifest.get("task") == LM_TASK:
        from forgeml.export.language_model import export_lm_run

        return export_lm_run(
            run_dir,
            run_manifest,
            format=format,
            output=output,
            data=data,
            tolerance=tolerance,
            log=log,
        )
    if run_manifest.get("model") == "custom" and module is None:
        # The run holds the module's weights, not its class: only the caller can build it.
        raise ForgeError(
            f"{run_dir} was trained on your own nn.Module, which cannot be rebuilt from the run "
            "directory alone; export it from Python with a fresh instance: from forgeml.export "
            f"import export_run; export_run({str(run_dir)!r}, format={format!r}, module=MyNet())"
        )
    predictor = Predictor(run_dir, module=module, precision="fp32")
    if format == "onnx":
        _need_onnx()  # before any work
    out = Path(output) if output is not None else default_output(run_dir, format)
    _check_output(out, run_dir)
    model = predictor.model.to("cpu").eval()
    slots = input_slots(predictor.preprocessor.spec)
    inputs, where = _check_inputs(predictor, data, log)
    batches = check_batches(inputs)
    example = example_batch(inputs, slots)
    export = _export_checked_onnx if format == "onnx" else _export_checked_torchscript

    def manifest_for(path: Path, exporter: str, diff: float, notes: dict[str, str]) -> dict:
        return _export_manifest(
            predictor, slots, format, exporter, path, diff, tolerance, where, batches, notes
        )

    return write_export(
        run_dir,
        out,
        format,
        COPIED,
        lambda path: export(model, example, slots, batches, path, tolerance, log),
        manifest_for,
    )


def write_export(
    run_dir: Path,
    out: Path,
    format: str,
    copied: Sequence[str],
    export: Callable[[Path], tuple[str, float, dict[str, str]]],
    manifest_for: Callable[[Path, str, float, dict[str, str]], dict[str, Any]],
) -> ExportResult:
    """Export into a staging directory next to `out` and move it into place once it passed.

    `export(path)` writes the model file and returns (exporter, max abs diff, notes), raising
    `_ExportFailed` when the export fails its check; the run's `copied` files and
    `manifest_for(path, exporter, diff, notes)` as export.json then join it. On any failure
    the staging directory goes and `out` (an earlier export in it too) is left as it was.
    """
    earlier = (out / EXPORT_MANIFEST).is_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        path = staging / FILES[format]
        try:
            exporter, diff, notes = export(path)
        except _ExportFailed as exc:
            label = "ONNX" if format == "onnx" else "TorchScript"
            kept = " (its earlier export is unchanged)" if earlier else ""
            raise ForgeError(
                f"{label} export of {run_dir} {exc}; nothing was written to {out}{kept}"
            ) from None
        for name in copied:
            source = run_dir / name
            if source.is_dir():
                shutil.copytree(source, staging / name)
            else:
                shutil.copy2(source, staging / name)
        manifest = manifest_for(path, exporter, diff, notes)
        write_json(staging / EXPORT_MANIFEST, manifest)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, out / FILES[format], format, exporter, diff, manifest)


class _ExportFailed(Exception):
    """Why an export failed; `export_run` makes it a ForgeError naming the run and output."""


def _export_checked_onnx(
    model: nn.Module,
    example: tuple[Tensor, ...],
    slots: Sequence[InputSlot],
    batches: Sequence[Mapping[str, Tensor]],
    path: Path,
    tolerance: float,
    log: Log,
) -> tuple[str, float, dict[str, str]]:
    """Export with each ONNX exporter in turn until one passes the check: (exporter, diff,
    {exporter tried first: why it was not kept})."""
    return first_passing_onnx_export(
        {
            "dynamo": lambda: _export_onnx_dynamo(model, example, slots, path),
            "torchscript-based": lambda: _export_onnx_torchscript(model, example, slots, path),
        },
        lambda: compare(_run_onnx(path, slots), model, batches, slots),
        path,
        tolerance,
        log,
    )


def first_passing_onnx_export(
    exporters: Mapping[str, Callable[[], None]],
    check: Callable[[], tuple[float, str]],
    path: Path,
    tolerance: float,
    log: Log,
) -> tuple[str, float, dict[str, str]]:
    """Run each exporter (writing `path`) in turn, then `check` (max abs diff against the eager
    model, and on which batch), until one is within `tolerance`: (exporter, diff, {exporter
    tried first: why it was not kept}). Shared by every family, language models included.

    Raises:
        _ExportFailed: no exporter passed; the message says why for each.
    """
    failures: dict[str, str] = {}
    for exporter, export in exporters.items():
        log(f"exporting to ONNX with the {exporter} exporter")
        path.unlink(missing_ok=True)
        try:
            with _quiet():
                export()
        except Exception as exc:  # the exporters raise anything from torch._dynamo to onnx
            failures[exporter] = f"export failed ({_reason(exc)})"
            log(f"{exporter} exporter: {failures[exporter]}")
            continue
        try:
            diff, where = check()
        except Exception as exc:  # onnxruntime rejects the graph or fails on a batch
            failures[exporter] = f"onnxruntime failed ({_reason(exc)})"
            log(f"{exporter} exporter: {failures[exporter]}")
            continue
        if diff <= tolerance:
            return exporter, diff, failures
        failures[exporter] = (
            f"max abs diff {diff:.3g} > tolerance {tolerance:g} on {where} (onnxruntime vs eager)"
        )
        log(f"{exporter} exporter: {failures[exporter]}")
    detail = "; ".join(f"{name} exporter: {why}" for name, why in failures.items())
    raise _ExportFailed(f"failed its check against the eager model: {detail}")


def _export_checked_torchscript(
    model: nn.Module,
    example: tuple[Tensor, ...],
    slots: Sequence[InputSlot],
    batches: Sequence[Mapping[str, Tensor]],
    path: Path,
    tolerance: float,
    log: Log,
) -> tuple[str, float, dict[str, str]]:
    return checked_torchscript_export(
        lambda: _export_torchscript(model, example, slots, path),
        lambda: compare(_run_torchscript(path), model, batches, slots),
        tolerance,
        log,
    )


def checked_torchscript_export(
    export: Callable[[], None],
    check: Callable[[], tuple[float, str]],
    tolerance: float,
    log: Log,
) -> tuple[str, float, dict[str, str]]:
    """`export` (torch.jit.trace, writing the file), then `check` (max abs diff against the
    eager model, and on which batch) within `tolerance`: ("torch.jit.trace", diff, {}). Shared
    by every family, language models included.

    Raises:
        _ExportFailed: the trace failed, or its module fails or differs on a check batch.
    """
    log("exporting to TorchScript with torch.jit.trace")
    try:
        with _quiet():
            export()
        diff, where = check()
    except Exception as exc:  # the tracer, or the traced module failing on another batch
        raise _ExportFailed(f"failed ({_reason(exc)})") from None
    if not diff <= tolerance:
        raise _ExportFailed(
            f"does not match the eager model: max abs diff {diff:.3g} > tolerance "
            f"{tolerance:g} on {where}"
        )
    return "torch.jit.trace", diff, {}


def _export_manifest(
    predictor: Any,
    slots: Sequence[InputSlot],
    format: str,
    exporter: str,
    path: Path,
    diff: float,
    tolerance: float,
    where: str,
    batches: Sequence[Mapping[str, Tensor]],
    notes: dict[str, str],
) -> dict[str, Any]:
    spec = predictor.preprocessor.spec
    inputs = []
    for slot in slots:
        entry: dict[str, Any] = {"name": slot.name, "key": slot.key, "dtype": slot.dtype}
        entry["shape"] = list(slot.shape)
        if slot.max_length:
            entry["column"], entry["max_length"] = slot.column, slot.max_length
        inputs.append(entry)
    library = dict(versions())
    if format == "onnx":
        import onnx
        import onnxruntime

        library.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "format": format,
        "file": path.name,
        "sha256": sha256_file(path),
        "exporter": exporter,
        **({"opset": OPSET} if format == "onnx" else {}),
        **({"exporter_failures": notes} if notes else {}),
        "inputs": inputs,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", spec.out_dim]},
        "padded_to_max_length": exporter != "dynamo" and any(s.max_length for s in slots),
        "check": {
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "data": where,
            "batches": [_describe(b, slots) for b in batches],
        },
        "run": {
            "directory": str(predictor.run_dir.resolve()),
            "model": predictor.manifest.get("model"),
            "task": predictor.task,
            "weights_sha256": predictor.manifest.get("weights_sha256"),
        },
        "weights_sha256": predictor.manifest.get("weights_sha256"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library,
    }


def _check_output(out: Path, run_dir: Path) -> None:
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


def _replace_dir(staging: Path, out: Path) -> None:
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
