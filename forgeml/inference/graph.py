"""What an exported model takes and gives, and what its export is checked against.

A task describes its model as a `GraphSpec` (forgeml/tasks/*/export.py); the export harness
(forgeml/export/) traces it, runs the result in onnxruntime or TorchScript and compares it with
the eager module, whatever the task. export.json keeps the inputs and output as written here,
and `OnnxBackend` (onnx_backend.py) reads them back. ONNX has no dict or keyword inputs: every
graph takes positional tensors, in the order of `inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GraphInput:
    key: str  # the batch key it stands for ("numeric", "text:<col>", "tokens", ...)
    name: str  # the graph input's name: plain [A-Za-z0-9_], unique
    dtype: str  # numpy dtype name: float32 | int64 | bool
    shape: tuple[int | str, ...]  # named dims ("batch", "length_0", "sequence") are dynamic
    max_length: int | None = None  # a dynamic length dim (dim 1) goes up to this
    column: str | None = None  # the data column it comes from (text/sequence columns)

    def entry(self) -> dict[str, Any]:
        """The input as export.json lists it."""
        entry: dict[str, Any] = {"name": self.name, "key": self.key, "dtype": self.dtype}
        entry["shape"] = list(self.shape)
        if self.column is not None:
            entry["column"] = self.column
        if self.max_length:
            entry["max_length"] = self.max_length
        return entry


@dataclass(frozen=True)
class GraphOutput:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass
class GraphSpec:
    """A model ready to export: three views of one module, and the data to check it on.

    `eager` is the reference: positional tensors in, the output tensor out (fp32, eval, CPU).
    `traced` is what torch.jit.trace records and `onnx_traced` what the TorchScript-based ONNX
    exporter records; they compute the same numbers in a form a trace captures correctly (inputs
    padded to max_length, stand-ins for modules a trace gets wrong). The dynamo exporter
    captures `eager` itself. Every result is compared with `eager` on `batches`.
    """

    inputs: list[GraphInput]
    output: GraphOutput
    eager: nn.Module
    traced: nn.Module
    onnx_traced: nn.Module
    example: tuple[Tensor, ...]  # the batch the traces are recorded with
    batches: list[tuple[Tensor, ...]]  # check batches: other sizes and lengths than `example`
    described: list[str]  # each check batch in words, for export.json and error messages
    data: str  # where the check rows came from
    copied: tuple[str, ...]  # files of the run the export directory keeps
    pads: bool = False  # trace-based exports pad inputs to max_length inside the graph
    fields: dict[str, Any] = field(default_factory=dict)  # more export.json fields

    def dynamic_shapes(self) -> tuple:
        """`torch.export` dims for the dynamo exporter: batch, and each named length (shared by
        name, 1..max_length; a max_length of 1 is a constant)."""
        dims: dict[str, Any] = {"batch": torch.export.Dim("batch", min=1)}
        shapes = []
        for graph_input in self.inputs:
            shape: dict[int, Any] = {}
            for i, dim in enumerate(graph_input.shape):
                if dim == "batch":
                    shape[i] = dims["batch"]
                elif isinstance(dim, str) and (graph_input.max_length or 0) >= 2:
                    if dim not in dims:
                        dims[dim] = torch.export.Dim(dim, min=1, max=graph_input.max_length)
                    shape[i] = dims[dim]
            shapes.append(shape)
        return (tuple(shapes),)  # one entry: forward(*tensors) takes them as one argument

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The named dims of every input and of the output, for the TorchScript-based exporter."""
        axes = {}
        for name, shape in [(i.name, i.shape) for i in self.inputs] + [
            (self.output.name, self.output.shape)
        ]:
            axes[name] = {i: str(d) for i, d in enumerate(shape) if isinstance(d, str)}
        return axes
