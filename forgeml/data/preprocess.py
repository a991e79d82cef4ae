"""Column typing and preprocessing, fitted on the train split only and saved with the model.

`Preprocessor.fit(train_table, cfg.data)` decides each column's type (declared in
`data.columns`, else inferred), learns its statistics (mean/std, vocabulary, image size and
channel stats) and the target's classes or scale. `transform` turns any table with the same
columns into the tensors a model takes (see `schema.py`); `decode` turns model outputs back into
labels and probabilities. The fitted state is plain JSON (`save`/`load`), never pickle.

A bad value raises a one-line DataError naming its row and column. Given a `BadRows` collector
(`data.on_bad_rows: skip`), `fit` and `transform_rows` record and drop bad rows instead (see
`bad_rows.py`): a first pass finds them, then the code above runs on the rows left.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgeml.data.bad_rows import (
    BadRows,
)
from forgeml.data.columns import (
    category_values,
    column_type,
    feature_names,
    feature_spec,
    fit_category,
    fit_numeric,
    infer_column_type,
    numeric_values,
    shorten,
    summary,
    value_key,
    value_keys,
)
from forgeml.data.config import DataConfig
from forgeml.data.image_columns import DecodedImages, decode_column, fit_image
from forgeml.data.sequence_columns import (
    BAD_SEQUENCE,
    EMPTY_TEXT,
    combine_runs,
    empty_text_message,
    encode_sequence,
    encode_text,
    fit_sequence,
    fit_text,
    record_bad,
    resolve_runs,
    sequence_config,
    text_config,
)
from forgeml.data.skip import good_rows
from forgeml.data.split import infer_target_kind
from forgeml.data.table import Table
from forgeml.data.targets import fit_target, multi_hot, parse_target_floats
from forgeml.data.text import TextEncoder
from forgeml.errors import ConfigError, DataError
from forgeml.schema import FeatureSpec, InputSpec, SequenceInput, TargetSpec

FORMAT_VERSION = 1
SEQUENCE_TYPES = ("text", "sequence")
__all__ = ["Preprocessor", "infer_column_type"]


class Preprocessor:
    """Fitted preprocessing: table -> tensors, model outputs -> predictions.

    Build it with `Preprocessor.fit` (train split) or `Preprocessor.load` (run directory).
    """

    def __init__(
        self,
        features: list[FeatureSpec],
        target: TargetSpec,
        runs: dict[str, list[str]] | None = None,
    ) -> None:
        self.features = features
        self.target = target
        self.runs = runs or {}  # data.sequences: NAME -> the numeric columns that make it
        self._encoders: dict[str, TextEncoder] = {}  # text column -> its tokenizer, built once
        self.spec = InputSpec(
            num_numeric=sum(f.type == "numeric" for f in features),
            category_sizes=tuple(len(f.vocab or []) + 1 for f in features if f.type == "category"),
            image_shape=next(
                ((f.channels, f.height, f.width) for f in features if f.type == "image"), None
            ),
            out_dim=len(target.classes or []) if target.task in ("multiclass", "multilabel") else 1,
            task=target.task,
            sequences=tuple(
                _sequence_input(f, self._encoder(f)) for f in features if f.type in SEQUENCE_TYPES
            ),
        )
        # rows cut to max_length per text/sequence column, by the last transform
        self.truncated: dict[str, int] = {}
        self._class_index = {value_key(c): i for i, c in enumerate(target.classes or [])}
        # fit() decodes the train images once for their statistics; the first transform of that
        # same column reuses the tensor instead of decoding every file again.
        self._fit_images: DecodedImages | None = None

    # ----------------------------------------------------------------------------- fit

    @classmethod
    def fit(
        cls,
        table: Table,
        cfg: DataConfig,
        *,
        log: Callable[[str], None] = print,
        bad_rows: BadRows | None = None,
    ) -> Preprocessor:
        """Type every column and learn the preprocessing from the TRAIN table only.

        Args:
            bad_rows: skip mode (`data.on_bad_rows: skip`): rows with a bad value are recorded
                here and the fit uses the other rows only; a column is still typed numeric when
                at most `data.max_bad_fraction` of its values are not numbers. None: the first
                bad value raises.

        Raises:
            DataError: a missing column, a bad or missing value (named by row), one class only.
            ConfigError: a fill rule that does not fit the column type, two image columns.
        """
        tolerance = cfg.max_bad_fraction if bad_rows is not None else 0.0
        target_kind = infer_target_kind(table, cfg, max_bad_fraction=tolerance)
        runs = resolve_runs(table, cfg)
        table = combine_runs(table, runs)
        names = feature_names(table, cfg)
        kinds = {
            name: "sequence" if name in runs else column_type(table, cfg, name, tolerance)
            for name in names
        }
        images = [n for n in names if kinds[n] == "image"]
        if len(images) > 1:
            raise ConfigError(
                f"{table.source}: {len(images)} image columns ({', '.join(images)}); a model "
                "takes at most one; add the others to data.exclude or declare their type"
            )
        features = [feature_spec(cfg, name, kind) for name, kind in kinds.items()]
        decoded = None
        if bad_rows is not None:
            # Drop the bad rows first, images last (only good rows are decoded), then fit the
            # rest as usual: the statistics, classes and vocabularies see good rows only.
            rows = good_rows(
                table,
                features,
                bad_rows,
                target=cfg.target,
                numeric_target=target_kind == "numeric",
                multilabel=target_kind == "labels",
                sequences=cfg,
            )
            image = next((f for f in features if f.type == "image"), None)
            if image is not None:
                decoded = fit_image(table, image, cfg, rows, bad_rows)
                rows = decoded.rows
            if not len(rows):
                raise DataError(
                    f"{table.source}: every row of the training split is bad "
                    f"({bad_rows.reasons()}); first: {bad_rows.examples[0]}; fix the data"
                )
            if len(rows) < table.num_rows:
                table = table.take(rows)
        target = fit_target(table, cfg, target_kind)
        for spec in features:
            if spec.type == "numeric":
                fit_numeric(table, spec)
            elif spec.type == "category":
                fit_category(table, spec)
            elif spec.type == "text":
                fit_text(table, spec, text_config(cfg, spec.name))
            elif spec.type == "sequence":
                fit_sequence(table, spec, sequence_config(cfg, spec.name))
            elif decoded is None:
                decoded = fit_image(table, spec, cfg, np.arange(table.num_rows), None)
        pre = cls(features, target, runs)
        pre._fit_images = decoded
        log(summary(features, target))
        return pre

    # ----------------------------------------------------------------------------- transform

    def transform(
        self, table: Table, *, with_target: bool = True
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Table -> model inputs and target.

        Returns:
            inputs: "numeric" (N, F) float32, "category" (N, K) int64, "image" (N, C, H, W)
                float32 — only the kinds the model has, columns in feature order.
            target: (N,) int64 class indices, or (N,) float32 standardised values for
                regression; None when `with_target` is False.
        """
        inputs, target, _ = self.transform_rows(table, with_target=with_target)
        return inputs, target

    def transform_rows(
        self, table: Table, *, with_target: bool = True, bad_rows: BadRows | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, np.ndarray]:
        """`transform` that, given `bad_rows` (skip mode), records the bad rows there and
        leaves them out.

        Returns:
            inputs and target as `transform` returns them, for the K rows kept, and the (K,)
            int64 indices of those rows in `table` (all of them without `bad_rows`).
        """
        table = combine_runs(table, self.runs)
        needed = [f.name for f in self.features]
        for name in needed:
            if name not in table.columns:
                raise DataError(
                    f"{table.source}: column '{name}' is missing; the model needs columns: "
                    f"{', '.join(needed)}; add it to the input"
                )
        t = self.target
        if with_target and t.name not in table.columns:
            raise DataError(
                f"{table.source}: target column '{t.name}' is missing; labelled data needs it "
                "next to the feature columns; add it, or predict without targets"
            )
        rows = np.arange(table.num_rows)
        if bad_rows is not None:
            rows = good_rows(
                table,
                self.features,
                bad_rows,
                target=t.name if with_target else None,
                numeric_target=t.task == "regression",
                multilabel=t.task == "multilabel",
                classes=self._class_index if t.task != "regression" else None,
            )
        kept = table if len(rows) == table.num_rows else table.take(rows)
        n = kept.num_rows
        numeric = [f for f in self.features if f.type == "numeric"]
        category = [f for f in self.features if f.type == "category"]
        inputs: dict[str, torch.Tensor] = {}
        if numeric:
            block = np.empty((n, len(numeric)), dtype=np.float32)  # (N, F)
            for j, f in enumerate(numeric):
                floats = numeric_values(kept, f)
                block[:, j] = (floats - f.mean) / f.std
            inputs["numeric"] = torch.from_numpy(block)
        if category:
            codes = np.empty((n, len(category)), dtype=np.int64)  # (N, K)
            for j, f in enumerate(category):
                lookup = {v: i + 1 for i, v in enumerate(f.vocab or [])}
                keys = category_values(kept, f)
                codes[:, j] = np.fromiter((lookup.get(k, 0) for k in keys), np.int64, count=n)
            inputs["category"] = torch.from_numpy(codes)
        target = self._target_tensor(kept) if with_target else None
        for f in self.features:
            if f.type == "image":
                images, decoded = self._images(table, f, rows, bad_rows)  # (K, C, H, W)
                if len(decoded) < len(rows):  # unreadable images, skipped
                    index = torch.from_numpy(decoded)
                    inputs = {k: v[index] for k, v in inputs.items()}
                    target = target[index] if target is not None else None
                    rows = rows[decoded]
                inputs["image"] = images
        if self.spec.sequences:
            inputs, target, rows = self._sequences(table, inputs, target, rows, bad_rows)
        return inputs, target, rows

    def _sequences(
        self,
        table: Table,
        inputs: dict[str, torch.Tensor],
        target: torch.Tensor | None,
        rows: np.ndarray,
        bad_rows: BadRows | None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, np.ndarray]:
        """Add the text/sequence columns of `rows` to the inputs; drop (skip mode) or raise for
        rows left without a step."""
        kept = table if len(rows) == table.num_rows else table.take(rows)
        bad = np.zeros(len(rows), dtype=bool)
        for f in self.features:
            if f.type == "text":
                encoder = self._encoder(f)
                assert encoder is not None
                encoded = encode_text(kept, f, encoder)
                if encoded.bad.any() and bad_rows is None:
                    raise DataError(empty_text_message(kept, f, int(np.argmax(encoded.bad))))
                if bad_rows is not None:
                    record_bad(bad_rows, kept, f, np.flatnonzero(encoded.bad), EMPTY_TEXT)
            elif f.type == "sequence":

                def report(i: int, detail: str, f: FeatureSpec = f) -> None:
                    assert bad_rows is not None
                    bad_rows.record(kept.row_ref(i), f.name, BAD_SEQUENCE, detail)

                encoded = encode_sequence(kept, f, report if bad_rows is not None else None)
            else:
                continue
            key = ("text:" if f.type == "text" else "seq:") + f.name
            inputs[key], inputs["mask:" + f.name] = encoded.values, encoded.mask
            self.truncated[f.name] = encoded.truncated
            bad |= encoded.bad
        if bad.any():  # skip mode: leave those rows out
            index = torch.from_numpy(np.flatnonzero(~bad))
            inputs = {k: v[index] for k, v in inputs.items()}
            target = target[index] if target is not None else None
            rows = rows[~bad]
        return inputs, target, rows

    def _encoder(self, f: FeatureSpec) -> TextEncoder | None:
        if f.type != "text":
            return None
        if f.name not in self._encoders:
            self._encoders[f.name] = TextEncoder.from_state(f.text or {})
        return self._encoders[f.name]

    def _images(
        self, table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """(K, C, H, W) normalised images of `rows` of `table`, and the (K,) positions in `rows`
        of the images decoded (all but unreadable ones, which only skip mode leaves out)."""
        cached, self._fit_images = self._fit_images, None
        found = cached.take(table, f, rows, bad_rows) if cached is not None else None
        images, decoded = found if found is not None else decode_column(table, f, rows, bad_rows)
        mean = torch.tensor(f.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(f.std, dtype=torch.float32)[None, :, None, None]
        return images.sub_(mean).div_(std), decoded  # in place: the tensor is ours

    def _target_tensor(self, table: Table) -> torch.Tensor:
        t = self.target
        values = table.columns[t.name]
        if t.task == "regression":
            floats = parse_target_floats(table, t.name)
            return torch.from_numpy(((floats - t.mean) / t.std).astype(np.float32))
        if t.task == "multilabel":
            return torch.from_numpy(multi_hot(table, t, self._class_index))  # (N, K) float32
        keys = value_keys(values)
        index = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            found = self._class_index.get(k) if k is not None else -1
            if found is None or found < 0:
                what = (
                    "missing target value" if k is None else f"'{values[i]}' is not a known class"
                )
                raise DataError(
                    f"{table.row_ref(i)}, column '{t.name}': {what}; the model knows the "
                    f"classes: {shorten([str(c) for c in t.classes or []])}; fix the label or "
                    "drop the row"
                )
            index[i] = found
        return torch.from_numpy(index)

    # ----------------------------------------------------------------------------- outputs

    def decode(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """(N, out_dim) raw model outputs -> one prediction dict per row.

        Classification: {"prediction": label, "probabilities": {str(class): p}} (softmax for
        multiclass, sigmoid of the single logit = P(classes[1]) for binary); regression:
        {"prediction": value} in the target's original scale.
        """
        outputs = outputs.detach().float().cpu()
        if outputs.ndim == 1:  # (N,) from a single-output model
            outputs = outputs[:, None]
        t = self.target
        if t.task == "regression":
            values = (outputs[:, 0].double() * t.std + t.mean).tolist()
            return [{"prediction": v} for v in values]
        if t.task == "multilabel":  # every label with probability >= 0.5, in label order
            probs = torch.sigmoid(outputs)  # (N, K)
            names = [str(c) for c in t.classes or []]
            return [
                {
                    "prediction": [
                        c for c, p in zip(t.classes or [], row, strict=True) if p >= 0.5
                    ],
                    "probabilities": dict(zip(names, row, strict=True)),
                }
                for row in probs.tolist()
            ]
        if t.task == "binary":
            p1 = torch.sigmoid(outputs[:, 0])
            probs = torch.stack([1.0 - p1, p1], dim=1)  # (N, 2)
        else:
            probs = torch.softmax(outputs, dim=1)  # (N, C)
        classes = t.classes or []
        names = [str(c) for c in classes]
        best = probs.argmax(dim=1).tolist()
        return [
            {"prediction": classes[b], "probabilities": dict(zip(names, row, strict=True))}
            for b, row in zip(best, probs.tolist(), strict=True)
        ]

    def class_weights(self, table_target: torch.Tensor) -> torch.Tensor:
        """(C,) float32 inverse-frequency weights n / (C * count_c) from (N,) class indices.

        Multilabel: (K,) positive weights negatives / positives per label from the (N, K)
        multi-hot targets (the BCE `pos_weight`; 1 for a label that is never or always on)."""
        if self.target.task == "multilabel":
            positives = table_target.double().sum(0)
            negatives = len(table_target) - positives
            ratio = negatives / positives.clamp(min=1)
            return torch.where((positives > 0) & (negatives > 0), ratio, 1.0).float()
        num_classes = len(self.target.classes or [])
        counts = torch.bincount(table_target.cpu(), minlength=num_classes).double()
        weights = len(table_target) / (num_classes * counts.clamp(min=1))
        return torch.where(counts > 0, weights, 1.0).float()

    def input_schema(self) -> list[dict[str, Any]]:
        """What each input column must hold, for forgeml.json and the model card."""
        schema = []
        for f in self.features:
            item: dict[str, Any] = {"name": f.name, "type": f.type, "required": f.fill == "error"}
            if f.type == "category":
                item["num_values"] = len(f.vocab or [])
                if len(f.vocab or []) <= 50:
                    item["values"] = f.vocab
            elif f.type == "image":
                item.update(channels=f.channels, height=f.height, width=f.width)
            elif f.type == "text":
                encoder = self._encoder(f)
                item.update(max_length=f.max_length, tokenizer=encoder.kind if encoder else None)
            elif f.type == "sequence":
                seq = f.sequence or {}
                item.update(channels=seq.get("channels"), max_length=f.max_length)
                if f.name in self.runs:
                    item["columns"] = self.runs[f.name]
            schema.append(item)
        return schema

    def output_schema(self) -> dict[str, Any]:
        return {"name": self.target.name, "task": self.target.task, "classes": self.target.classes}

    # ----------------------------------------------------------------------------- save / load

    def save(self, directory: Path) -> None:
        """Write `directory/features.json` (features, target, input spec)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "format_version": FORMAT_VERSION,
            "features": [asdict(f) for f in self.features],
            "target": asdict(self.target),
            "runs": self.runs,
            "spec": asdict(self.spec),
        }
        (directory / "features.json").write_text(json.dumps(state, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Preprocessor:
        path = Path(directory) / "features.json"
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(
                f"cannot read {path}: {exc}; expected the preprocess/ folder of a run directory "
                "written by forgeml train"
            ) from None
        if state.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: format version {state.get('format_version')!r}, this forgeml reads "
                f"{FORMAT_VERSION}; retrain, or use the forgeml version that wrote it"
            )
        features = [FeatureSpec(**f) for f in state["features"]]
        return cls(features, TargetSpec(**state["target"]), state.get("runs"))


def _sequence_input(f: FeatureSpec, encoder: TextEncoder | None) -> SequenceInput:
    if encoder is not None:
        return SequenceInput(
            f.name,
            "text",
            max_length=f.max_length or 1,
            vocab_size=encoder.vocab_size,
            vocab=tuple(encoder.vocab()),
        )
    return SequenceInput(
        f.name,
        "sequence",
        max_length=f.max_length or 1,
        channels=(f.sequence or {}).get("channels", 1),
    )
