"""`ServedModel`: a run directory as the server uses it.

A `Predictor` does the work (the run's own preprocessing, weights checked against their sha256);
this adds what serving needs on top: the input columns a request must give, a warm-up forward,
and the three steps the batcher runs separately so that one forward serves many requests:
`encode` (records -> tensors, per request), `forward` (merged tensors -> outputs), `decode`.
Everything here runs on the model's worker thread (forgeml/serve/kserve/batcher.py), never on the event loop.
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


@dataclass(frozen=True)
class InputColumn:
    """One column a request gives per row."""

    name: str
    kind: Kind
    required: bool  # False: a missing value is filled by the run's fill rule
    spec: FeatureSpec | None  # None: one numeric column of a `data.sequences` run


class ServedModel:
    """A finished run directory, checked at construction and loaded by `load()`."""

    protocol = "kserve"  # served by the KServe v2 and :predict routes (forgeml/serve/)

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
