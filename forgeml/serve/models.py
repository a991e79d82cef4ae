"""`ServedModel`: a run directory as the server uses it.

A `Predictor` does the work (the run's own preprocessing, weights checked against their sha256);
this adds what serving needs on top: the input columns a request must give, a warm-up forward,
and the three steps the batcher runs separately so that one forward serves many requests:
`encode` (records -> tensors, per request), `forward` (merged tensors -> outputs), `decode`.
Everything here runs on the model's worker thread (see batching.py), never on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from forgeml.data.tensors import TensorData
from forgeml.errors import ForgeError
from forgeml.run_dir import read_manifest
from forgeml.schema import FeatureSpec

Kind = Literal["numeric", "category", "text", "image", "sequence"]
# Keys of a model batch whose dim 1 is a per-batch length (schema.py): padded when merging.
_PADDED_PREFIXES = ("text:", "seq:", "mask:")


@dataclass(frozen=True)
class InputColumn:
    """One column a request gives per row."""

    name: str
    kind: Kind
    required: bool  # False: a missing value is filled by the run's fill rule
    spec: FeatureSpec | None  # None: one numeric column of a `data.sequences` run


def open_run(run_dir: str | Path, name: str) -> Any:
    """The served form of a finished run: a `ServedModel`, or for a language-model run a
    `ServedLM` (generation.py; OpenAI-compatible routes). Checked now, loaded later."""
    if read_manifest(Path(run_dir)).get("task") == "language_modeling":
        from forgeml.serve.generation import ServedLM

        return ServedLM(run_dir, name)
    return ServedModel(run_dir, name)


class ServedModel:
    """A finished run directory, checked at construction and loaded by `load()`."""

    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.run_dir = Path(run_dir)
        self.name = name
        manifest = read_manifest(self.run_dir)  # a clear error now, before the server binds
        if manifest.get("model") == "custom":
            raise ForgeError(
                f"{self.run_dir} was trained on a custom nn.Module, which the server cannot "
                "rebuild from the run directory; serve a run of a built-in model family"
            )
        self.predictor: Any = None  # forgeml.tasks.table.predictor.Predictor once loaded
        self.columns: list[InputColumn] = []
        self.last_truncated: dict[str, int] = {}

    @property
    def loaded(self) -> bool:
        return self.predictor is not None

    def load(self) -> None:
        """Build the model and load its weights (sha256 checked). Slow: call off the loop."""
        from forgeml.tasks.table.predictor import Predictor

        predictor = Predictor(self.run_dir)
        self.columns = input_columns(predictor.preprocessor.features, predictor.preprocessor.runs)
        self.predictor = predictor

    @property
    def task(self) -> str:
        return self.predictor.task

    @property
    def classes(self) -> list | None:
        return self.predictor.classes

    @property
    def target(self) -> str:
        return self.predictor.preprocessor.target.name

    def warmup(self) -> None:
        """One forward of a dummy row, so the first request does not pay for lazy set-up."""
        spec = self.predictor.preprocessor.spec
        inputs: dict[str, torch.Tensor] = {}
        if spec.num_numeric:
            inputs["numeric"] = torch.zeros(1, spec.num_numeric)
        if spec.category_sizes:
            inputs["category"] = torch.zeros(1, len(spec.category_sizes), dtype=torch.int64)
        if spec.image_shape is not None:
            inputs["image"] = torch.zeros(1, *spec.image_shape)
        for seq in spec.sequences:
            if seq.kind == "text":
                inputs[seq.key] = torch.ones(1, 1, dtype=torch.int64)  # one [UNK] token
            else:
                inputs[seq.key] = torch.zeros(1, 1, seq.channels)
            inputs[seq.mask_key] = torch.ones(1, 1, dtype=torch.bool)
        self.forward(inputs)

    def encode(self, records: Sequence[Mapping[str, Any]], source: str) -> dict[str, torch.Tensor]:
        """Validated records -> model inputs (N rows), with the run's preprocessing.

        Raises:
            DataError: a bad value; the message names "<source>, record <n>, column '<col>'".
        """
        from forgeml.tasks.table.predictor import records_to_table

        table = records_to_table(list(records), source=source)
        pre = self.predictor.preprocessor
        inputs, _ = pre.transform(table, with_target=False)
        # Rows of each text/sequence column cut to max_length by this call (for /metrics).
        self.last_truncated = {
            f.name: pre.truncated[f.name] for f in pre.features if pre.truncated.get(f.name)
        }
        return inputs

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(R, out_dim) float32 raw outputs on the CPU, without autograd."""
        with torch.inference_mode():
            return self.predictor.raw_outputs(TensorData(inputs, None))

    def decode(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """(N, out_dim) -> `Predictor.predict`'s dicts: {"prediction", "probabilities"?}."""
        return self.predictor.preprocessor.decode(outputs)


def input_columns(features: list[FeatureSpec], runs: dict[str, list[str]]) -> list[InputColumn]:
    """The columns a request gives: each feature, except that a sequence made of a run of
    numeric columns (`data.sequences`) is given as those columns."""
    columns = []
    for f in features:
        if f.name in runs:
            columns += [InputColumn(c, "numeric", True, None) for c in runs[f.name]]
        else:
            columns.append(InputColumn(f.name, f.type, f.fill == "error", f))
    return columns


def merge_inputs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate the model inputs of several requests along the rows.

    Text and sequence columns (and their masks) are padded at the end of dim 1 to the longest
    of the parts: ids 0 (padding), mask False, values 0. Rows stay left-aligned, so each row's
    output is what it would be alone (`TensorData.batch` trims the padding again).
    """
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if key.startswith(_PADDED_PREFIXES):
            width = max(t.shape[1] for t in tensors)
            tensors = [_pad_dim1(t, width) for t in tensors]
        merged[key] = torch.cat(tensors)
    return merged


def _pad_dim1(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.zeros((t.shape[0], width - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)
