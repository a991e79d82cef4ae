"""`Predictor`: raw inputs -> preprocessing -> forward -> postprocessed outputs. No HTTP here.

Reads only the run directory. Inputs are records (a list of dicts, as in the training file),
a `Table`, or a path to a CSV/TSV/JSONL/Parquet file, an image file or a folder of images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import nn

from forgeml.config import load_config
from forgeml.data.bad_rows import BadRows
from forgeml.data.preprocess import Preprocessor
from forgeml.data.sources import IMAGE_EXTENSIONS, read_table
from forgeml.data.table import Table
from forgeml.data.tensors import TensorData
from forgeml.errors import DataError, ForgeError
from forgeml.inference.batches import forward_batches
from forgeml.models.registry import UserModule, build_model
from forgeml.run_dir import load_weights, read_config_dict, read_manifest
from forgeml.runtime import pick_device, resolve_precision
from forgeml.schema import Task
from forgeml.tasks.table.evaluate import evaluate
from forgeml.tasks.table.loss import build_loss


class Predictor:
    """A trained model ready to predict, loaded from a run directory.

    Args:
        run_dir: the directory `forgeml train` wrote.
        module: for runs trained on your own `nn.Module`: a fresh instance of it to load into.
        precision: "auto" (bf16 where the hardware is fast at it), "fp32" or "bf16"; None:
            the run's `train.precision`, so predictions reproduce the run's metrics.
        backend: "torch" (the run's weights in eager PyTorch) or "onnx" (its `forgeml export`
            run by onnxruntime on the CPU, in fp32; `run_dir` may be the export directory).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        module: nn.Module | None = None,
        precision: str | None = None,
        backend: str = "torch",
    ) -> None:
        if backend not in ("torch", "onnx"):
            raise ForgeError(f"unknown backend {backend!r}; use 'torch' or 'onnx'")
        self.run_dir = Path(run_dir)
        self.backend = backend
        # Rows cut to max_length by the last predict/evaluate call, for each text/sequence
        # column that had any: {"review": 3}; {} when nothing was cut (see truncation_notes).
        self.last_truncated: dict[str, int] = {}
        self._last_num_rows = 0
        self.manifest = read_manifest(self.run_dir)
        kind = self.manifest.get("task")
        if kind not in get_args(Task):
            raise ForgeError(
                f"{self.run_dir} is not a table model (task {kind}); forgeml.load(run_dir) gives "
                "what its task predicts with (a language model generates text: forgeml generate "
                f"{self.run_dir} --prompt TEXT)"
            )
        self.config = load_config(read_config_dict(self.run_dir))
        self.preprocessor = Preprocessor.load(self.run_dir / "preprocess")
        if backend == "onnx":
            from forgeml.inference.onnx_backend import OnnxBackend

            # Preprocessing stays in Python; the exported graph replaces only the model.
            self.model = OnnxBackend.for_run(self.run_dir)
            self.device = torch.device("cpu")
            self.precision = resolve_precision("fp32", self.device)
            self.batch_size = self.config.train.eval_batch
            return
        if self.manifest.get("model") == "custom":
            if module is None:
                raise ForgeError(
                    f"{self.run_dir} was trained on a custom nn.Module; pass a fresh instance: "
                    "forgeml.load(run_dir, module=MyModule())"
                )
            model = UserModule.wrap(module)
        else:
            model = build_model(self.config.model, self.preprocessor.spec, run_dir=self.run_dir)
        load_weights(self.run_dir, self.manifest, model)
        self.device = pick_device()
        self.model = model.to(self.device).eval()
        # The run's resolved precision, so predictions reproduce its metrics.
        trained = self.manifest.get("precision") or self.config.train.precision
        self.precision = resolve_precision(precision or trained, self.device)
        self.batch_size = self.config.train.eval_batch

    @property
    def task(self) -> str:
        return self.preprocessor.target.task

    @property
    def classes(self) -> list | None:
        return self.preprocessor.target.classes

    @property
    def input_columns(self) -> list[str]:
        return [f.name for f in self.preprocessor.features]

    def predict(self, inputs: Sequence[Mapping[str, Any]] | Table | str | Path) -> list[dict]:
        """Predict for records, a Table, or a file/folder path.

        Returns one dict per row: {"prediction": label, "probabilities": {class: p}} for
        classification, {"prediction": value} for regression. A bad row raises, whatever the
        run's `data.on_bad_rows`: every input row gets its prediction or an error. A text or
        sequence longer than its column's max_length keeps its beginning, as in training; how
        many were cut is in `last_truncated` (and `truncation_notes()`) until the next call.
        """
        table = self.to_table(inputs)
        features, _ = self.preprocessor.transform(table, with_target=False)
        self._count_truncated(table.num_rows)
        outputs = self.raw_outputs(TensorData(features, None))
        return self.preprocessor.decode(outputs)

    def predict_file(self, path: str | Path) -> list[dict]:
        """`predict` for a file or folder (`forgeml predict`). A prediction from image files
        comes with the image's path first: an image folder has no other row identity."""
        table = self.to_table(path)
        rows = self.predict(table)
        images = [f.name for f in self.preprocessor.features if f.type == "image"]
        column = table.columns.get(images[0]) if images else None
        if column is not None and len(column) and isinstance(column[0], str):
            rows = [{images[0]: where, **row} for where, row in zip(column, rows, strict=True)]
        return rows

    @torch.inference_mode()
    def raw_outputs(self, data: TensorData) -> torch.Tensor:
        """(N, out_dim) float32 model outputs, in eval mode, batched."""
        chunks = [
            out.cpu()
            for out, _ in forward_batches(
                self.model, data, batch_size=self.batch_size, precision=self.precision
            )
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, self.preprocessor.spec.out_dim)

    def evaluate(self, inputs: Sequence[Mapping[str, Any]] | Table | str | Path) -> dict[str, Any]:
        """Metrics (and loss) on labelled inputs that hold the target column.

        A run trained with `data.on_bad_rows: skip` skips bad rows here too, so evaluating its
        own split reproduces metrics.json; the result then has "bad_rows" (`BadRows.summary`).
        Only a table without a good row fails: `data.max_bad_fraction` is a budget per source,
        which training checked, and a split of one can be past it on its own.
        """
        data_cfg = self.config.data
        bad = BadRows() if data_cfg.on_bad_rows == "skip" else None
        table = self.to_table(inputs, bad_rows=bad)
        total = table.num_rows + (bad.count if bad is not None else 0)  # before skipping
        target = self.preprocessor.target.name
        if target not in table.columns:
            raise DataError(
                f"{table.source}: target column '{target}' is missing; evaluation needs labelled "
                "data with the same columns as the training file; add the column, or use "
                "forgeml predict for unlabelled data"
            )
        features, labels, rows = self.preprocessor.transform_rows(table, bad_rows=bad)
        self._count_truncated(len(rows))
        if bad is not None:
            bad.check(total, 1.0, table.source)
        classes = [str(c) for c in self.classes] if self.classes is not None else None
        loss_fn = build_loss(self.config.train.loss, self.task, self._class_weights(classes))
        t = self.preprocessor.target
        metrics = evaluate(
            self.model,
            TensorData(features, labels),
            task=self.task,
            loss_fn=loss_fn,
            class_names=classes,
            batch_size=self.batch_size,
            precision=self.precision,
            target_scale=(t.mean, t.std) if t.task == "regression" else None,
        )
        if bad is not None:
            metrics["bad_rows"] = bad.summary(table.source, total)
        return metrics

    def truncation_notes(self) -> list[str]:
        """The last call's `last_truncated` as sentences, one per column, e.g. "3 of 10 texts in
        column 'review' were longer than max_length 64 and were cut" (`forgeml predict` prints
        them on stderr)."""
        features = {f.name: f for f in self.preprocessor.features}
        notes = []
        for name, count in self.last_truncated.items():
            f = features[name]
            kind = "texts" if f.type == "text" else "sequences"
            were = "was" if count == 1 else "were"
            notes.append(
                f"{count} of {self._last_num_rows} {kind} in column '{name}' {were} longer than "
                f"max_length {f.max_length} and {were} cut"
            )
        return notes

    def _count_truncated(self, num_rows: int) -> None:
        """Keep the counts of the transform just run (the preprocessor's, per column)."""
        cut = self.preprocessor.truncated
        self.last_truncated = {
            f.name: cut[f.name] for f in self.preprocessor.features if cut.get(f.name)
        }
        self._last_num_rows = num_rows

    def _class_weights(self, classes: list[str] | None) -> torch.Tensor | None:
        """The (C,) or (K,) loss weights the run trained with (forgeml.json), in class order."""
        by_class = self.manifest.get("class_weights")
        if not by_class or classes is None:
            return None
        return torch.tensor([by_class[c] for c in classes], dtype=torch.float32, device=self.device)

    def to_table(
        self,
        inputs: Sequence[Mapping[str, Any]] | Table | str | Path,
        *,
        bad_rows: BadRows | None = None,
    ) -> Table:
        """`bad_rows`: skip records a file's reader cannot parse into it (see `read_table`)."""
        if isinstance(inputs, Table):
            return inputs
        if isinstance(inputs, str | Path):
            return self._read_path(Path(inputs), bad_rows)
        if isinstance(inputs, Mapping):
            inputs = [inputs]
        return records_to_table(list(inputs))

    def _read_path(self, path: Path, bad_rows: BadRows | None) -> Table:
        image_columns = [f.name for f in self.preprocessor.features if f.type == "image"]
        is_image_file = path.suffix.lower() in IMAGE_EXTENSIONS
        if path.is_dir() or is_image_file:
            if not image_columns:
                raise DataError(
                    f"{path} is an image input, but this model takes no image column; "
                    f"it expects a CSV/JSONL file with columns: {', '.join(self.input_columns)}"
                )
            if not path.exists():
                raise DataError(f"input image {path} does not exist; check the path")
            files = [path] if is_image_file else _flat_images(path)
            if files:
                paths = np.array([str(p.resolve()) for p in files], dtype=object)
                return Table({image_columns[0]: paths}, source=str(path), row_label="file")
            table = read_table(str(path))  # a folder with one sub-folder per class
            if "image" in table.columns and image_columns[0] != "image":
                table.columns[image_columns[0]] = table.columns.pop("image")
            return table
        return read_table(str(path), delimiter=self.config.data.delimiter, bad_rows=bad_rows)


def records_to_table(records: list[Mapping[str, Any]], source: str = "input records") -> Table:
    """A list of dicts (as in a JSONL file) -> Table of object columns; missing keys -> None."""
    if not records:
        raise DataError(f"{source}: no records given; expected at least one")
    names: dict[str, None] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(
                f"{source}, record {i + 1}: expected a mapping of column -> value, "
                f"found {type(record).__name__}"
            )
        names.update(dict.fromkeys(record))
    columns = {}
    for name in names:
        column = np.empty(len(records), dtype=object)  # filled one by one: arrays stay cells
        for i, record in enumerate(records):
            column[i] = record.get(name)
        columns[name] = column
    return Table(columns, source=source, row_label="record")


def _flat_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
