"""The table task's model as an exported graph: the dict batch as positional tensors.

The graph takes the dict batch of forgeml/schema.py as positional tensors, in the order of
export.json "inputs": "numeric" (B, F) float32, "category" (B, K) int64, "image" (B, C, H, W)
float32, and per text/sequence column its ids (B, L) int64 or values (B, L, C) float32 plus its
mask (B, L) bool; out come the (B, out_dim) raw outputs. B is dynamic, and so is L
(1..max_length). Preprocessing stays in Python: the export keeps the run's config.yaml and
preprocess/ beside the graph.

Trace-based capture (torch.jit.trace, the TorchScript-based ONNX exporter) records Python
branches on shapes as they went for the example batch (cnn1d pools pad an odd L, for one). So
those exports pad every text/sequence input to its column's max_length inside the graph: the
model sees one L, and the models are built so that padding never changes a row's output. Where
a module still traces wrong (an RNN's last state, a pretrained classifier's input ids), it is
traced through a stand-in from trace.py. The check runs the export on rows of the run's own data
(the held-out split, as `forgeml evaluate` reads it) in batches of other sizes and lengths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.errors import DataError, ForgeError
from forgeml.inference.graph import GraphInput, GraphOutput, GraphSpec
from forgeml.run_dir import MANIFEST, read_manifest
from forgeml.schema import InputSpec
from forgeml.tasks.table.trace import for_torchscript_onnx, for_tracing

Log = Callable[[str], None]
COPIED = ("config.yaml", "preprocess", MANIFEST)  # from the run, for the preprocessing


def export_spec(run_dir: Path, *, data: Any, module: nn.Module | None, log: Log) -> GraphSpec:
    """The run's model (fp32, CPU) and rows of its data to check the export on: `data` (a path,
    records or a Table) if given, else the run's held-out split."""
    from forgeml.tasks.table.predictor import Predictor

    if read_manifest(run_dir).get("model") == "custom" and module is None:
        # The run holds the module's weights, not its class: only the caller can build it.
        raise ForgeError(
            f"{run_dir} was trained on your own nn.Module, which cannot be rebuilt from the run "
            "directory alone; export it from Python with a fresh instance: from forgeml.export "
            f"import export_run; export_run({str(run_dir)!r}, format='onnx', module=MyNet())"
        )
    predictor = Predictor(run_dir, module=module, precision="fp32")
    model = predictor.model.to("cpu").eval()
    inputs, where = _check_inputs(predictor, data, log)
    return table_graph(model, predictor.preprocessor.spec, inputs, data=where)


def table_graph(
    model: nn.Module, spec: InputSpec, inputs: Mapping[str, Tensor], *, data: str = ""
) -> GraphSpec:
    """`model` over the inputs of `spec` as a graph, checked on batches cut from `inputs`."""
    slots = input_slots(spec)
    batches = check_batches(inputs)
    return GraphSpec(
        inputs=slots,
        output=GraphOutput("output", "float32", ("batch", spec.out_dim)),
        eager=PositionalModel(model, slots, pad=False).eval(),
        traced=PositionalModel(for_tracing(model), slots, pad=True).eval(),
        onnx_traced=PositionalModel(for_torchscript_onnx(model), slots, pad=True).eval(),
        example=example_batch(inputs, slots),
        batches=[tuple(batch[s.key] for s in slots) for batch in batches],
        described=[_describe(batch, slots) for batch in batches],
        data=data,
        copied=COPIED,
        pads=any(s.max_length for s in slots),
    )


CHECK_ROWS = 64  # rows of the run's data the export is checked on


EXAMPLE_ROWS = 8  # rows of the example batch the export is traced with


def input_slots(spec: InputSpec) -> list[GraphInput]:
    """The exported model's inputs for `spec`, in the order the graph takes them."""
    slots: list[GraphInput] = []
    if spec.num_numeric:
        slots.append(GraphInput("numeric", "numeric", "float32", ("batch", spec.num_numeric)))
    if spec.category_sizes:
        k = len(spec.category_sizes)
        slots.append(GraphInput("category", "category", "int64", ("batch", k)))
    if spec.image_shape is not None:
        slots.append(GraphInput("image", "image", "float32", ("batch", *spec.image_shape)))
    for i, column in enumerate(spec.sequences):
        length = f"length_{i}"
        values: tuple[int | str, ...] = ("batch", length)
        if column.kind == "text":
            slots.append(
                GraphInput(column.key, "", "int64", values, column.max_length, column.name)
            )
        else:
            shape = (*values, column.channels)
            slots.append(
                GraphInput(column.key, "", "float32", shape, column.max_length, column.name)
            )
        slots.append(
            GraphInput(column.mask_key, "", "bool", values, column.max_length, column.name)
        )
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

    def __init__(self, model: nn.Module, slots: Sequence[GraphInput], *, pad: bool) -> None:
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


def pad_batch(batch: Mapping[str, Tensor], slots: Sequence[GraphInput]) -> dict[str, Tensor]:
    """The batch with every text/sequence input zero-padded (masks: False) to max_length."""
    out = dict(batch)
    for slot in slots:
        if slot.max_length:
            x = out[slot.key]
            extra = slot.max_length - x.shape[1]
            out[slot.key] = F.pad(x, (0, 0, 0, extra) if x.dim() == 3 else (0, extra))
    return out


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


def example_batch(inputs: Mapping[str, Tensor], slots: Sequence[GraphInput]) -> tuple[Tensor, ...]:
    """The batch to trace with: EXAMPLE_ROWS rows (at least 2: a size of 1 would be taken as a
    constant), padded to max_length (a length of 1 would be too)."""
    n = len(next(iter(inputs.values())))
    index = torch.arange(min(EXAMPLE_ROWS, n)) if n >= 2 else torch.zeros(2, dtype=torch.long)
    batch = pad_batch({k: v[index] for k, v in inputs.items()}, slots)
    return tuple(batch[s.key] for s in slots)


def _describe(batch: Mapping[str, Tensor], slots: Sequence[GraphInput]) -> str:
    rows = len(next(iter(batch.values())))
    lengths = sorted({batch[s.key].shape[1] for s in slots if s.max_length})
    return f"a batch of {rows} row{'s' if rows != 1 else ''}" + (
        f", length {'/'.join(map(str, lengths))}" if lengths else ""
    )
