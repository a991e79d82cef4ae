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
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from forgeml.config import DataConfig
from forgeml.data.bad_rows import MISSING_VALUE, UNKNOWN_CLASS, BadRows, RowChecks, quote
from forgeml.data.image import decode_images, is_grayscale, load_image
from forgeml.data.schema import FeatureSpec, InputSpec, TargetSpec
from forgeml.data.split import infer_target_kind, is_numeric_column, parse_floats
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CATEGORY_FILL = "<missing>"


class Preprocessor:
    """Fitted preprocessing: table -> tensors, model outputs -> predictions.

    Build it with `Preprocessor.fit` (train split) or `Preprocessor.load` (run directory).
    """

    def __init__(self, features: list[FeatureSpec], target: TargetSpec) -> None:
        self.features = features
        self.target = target
        self.spec = InputSpec(
            num_numeric=sum(f.type == "numeric" for f in features),
            category_sizes=tuple(len(f.vocab or []) + 1 for f in features if f.type == "category"),
            image_shape=next(
                ((f.channels, f.height, f.width) for f in features if f.type == "image"), None
            ),
            out_dim=len(target.classes or []) if target.task == "multiclass" else 1,
            task=target.task,
        )
        self._class_index = {_key(c): i for i, c in enumerate(target.classes or [])}
        # fit() decodes the train images once for their statistics; the first transform of that
        # same column reuses the tensor instead of decoding every file again.
        self._fit_images: _Decoded | None = None

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
        names = _feature_names(table, cfg)
        kinds = {name: _column_type(table, cfg, name, tolerance) for name in names}
        images = [n for n in names if kinds[n] == "image"]
        if len(images) > 1:
            raise ConfigError(
                f"{table.source}: {len(images)} image columns ({', '.join(images)}); a model "
                "takes at most one; add the others to data.exclude or declare their type"
            )
        features = [_feature_spec(cfg, name, kind) for name, kind in kinds.items()]
        decoded = None
        if bad_rows is not None:
            # Drop the bad rows first, images last (only good rows are decoded), then fit the
            # rest as usual: the statistics, classes and vocabularies see good rows only.
            rows = _good_rows(
                table,
                features,
                bad_rows,
                target=cfg.target,
                numeric_target=target_kind == "numeric",
            )
            image = next((f for f in features if f.type == "image"), None)
            if image is not None:
                decoded = _fit_image(table, image, cfg, rows, bad_rows)
                rows = decoded.rows
            if not len(rows):
                raise DataError(
                    f"{table.source}: every row of the training split is bad "
                    f"({bad_rows.reasons()}); first: {bad_rows.examples[0]}; fix the data"
                )
            if len(rows) < table.num_rows:
                table = table.take(rows)
        target = _fit_target(table, cfg, target_kind)
        for spec in features:
            if spec.type == "numeric":
                _fit_numeric(table, spec)
            elif spec.type == "category":
                _fit_category(table, spec)
            elif decoded is None:
                decoded = _fit_image(table, spec, cfg, np.arange(table.num_rows), None)
        pre = cls(features, target)
        pre._fit_images = decoded
        log(_summary(features, target))
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
            rows = _good_rows(
                table,
                self.features,
                bad_rows,
                target=t.name if with_target else None,
                numeric_target=t.task == "regression",
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
                floats = _numeric_values(kept, f)
                block[:, j] = (floats - f.mean) / f.std
            inputs["numeric"] = torch.from_numpy(block)
        if category:
            codes = np.empty((n, len(category)), dtype=np.int64)  # (N, K)
            for j, f in enumerate(category):
                lookup = {v: i + 1 for i, v in enumerate(f.vocab or [])}
                keys = _category_values(kept, f)
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
        return inputs, target, rows

    def _images(
        self, table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """(K, C, H, W) normalised images of `rows` of `table`, and the (K,) positions in `rows`
        of the images decoded (all but unreadable ones, which only skip mode leaves out)."""
        cached, self._fit_images = self._fit_images, None
        found = cached.take(table, f, rows, bad_rows) if cached is not None else None
        images, decoded = found if found is not None else _decode(table, f, rows, bad_rows)
        mean = torch.tensor(f.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(f.std, dtype=torch.float32)[None, :, None, None]
        return images.sub_(mean).div_(std), decoded  # in place: the tensor is ours

    def _target_tensor(self, table: Table) -> torch.Tensor:
        t = self.target
        values = table.columns[t.name]
        if t.task == "regression":
            floats = _parse_target_floats(table, t.name)
            return torch.from_numpy(((floats - t.mean) / t.std).astype(np.float32))
        keys = _keys(values)
        index = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            found = self._class_index.get(k) if k is not None else -1
            if found is None or found < 0:
                what = (
                    "missing target value" if k is None else f"'{values[i]}' is not a known class"
                )
                raise DataError(
                    f"{table.row_ref(i)}, column '{t.name}': {what}; the model knows the "
                    f"classes: {_shorten([str(c) for c in t.classes or []])}; fix the label or "
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
        """(C,) float32 inverse-frequency weights n / (C * count_c) from (N,) class indices."""
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
        return cls(features, TargetSpec(**state["target"]))


# --------------------------------------------------------------------------------- values


def _key(v: object) -> str | None:
    """A value's identity as a category or class: 3, 3.0 and "3" are the same; None: missing."""
    if v is None:
        return None
    if isinstance(v, str):
        return v if v.strip() else None
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return None
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


def _keys(values: np.ndarray) -> np.ndarray:
    """(N,) object array of category keys (None for missing); numeric arrays via np.unique."""
    if values.dtype.kind in "biuf":
        out = np.full(len(values), None, dtype=object)
        present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(len(values), bool)
        uniques, inverse = np.unique(values[present], return_inverse=True)
        out[present] = np.array([_key(u) for u in uniques], dtype=object)[inverse]
        return out
    return np.array([_key(v) for v in values], dtype=object)


def _python_value(v: object) -> object:
    """A label as a JSON-friendly Python value: 7.0 -> 7, np.int64(3) -> 3, strings unchanged."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return int(v) if float(v).is_integer() else float(v)
    return v if isinstance(v, str) else str(v)


def _sort_key(key: str) -> tuple[int, float, str]:
    """Numeric-looking keys sort numerically ("2" < "10"), before all other strings."""
    try:
        number = float(key)
    except ValueError:
        return (1, 0.0, key)
    return (0, number, key) if math.isfinite(number) else (1, 0.0, key)  # "nan" is a word here


def _shorten(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


class _Refs:
    """Row references of `rows` (default: all) of a table, computed on demand (only a message
    needs one)."""

    def __init__(self, table: Table, rows: np.ndarray) -> None:
        self.table = table
        self.rows = rows

    def __getitem__(self, i: int) -> str:
        return self.table.row_ref(int(self.rows[i]))

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class _Decoded:
    """Images `fit` decoded from a train column; the first `transform` of it reuses them."""

    values: np.ndarray  # the column they come from, recognised by identity
    rows: np.ndarray  # (K,) ascending indices into it of the images decoded
    images: torch.Tensor  # (K, C, H, W) float32 in [0, 1]

    def take(
        self, table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
    ) -> tuple[torch.Tensor, np.ndarray] | None:
        """The images of `rows` of this column and their positions in `rows`; None when the
        column is another one."""
        if table.columns[f.name] is not self.values or not len(self.rows):
            return None
        at = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        hit = self.rows[at] == rows
        # Rows fit could not decode: decode them again, to record them (or raise) here too.
        if len(_decode(table, f, rows[~hit], bad_rows)[1]):
            return None  # one can be read now: these are not the rows fit saw
        if len(rows) == len(self.rows) and hit.all():
            return self.images, np.arange(len(rows))
        return self.images[torch.from_numpy(at[hit])], np.flatnonzero(hit)


def _decode(
    table: Table, f: FeatureSpec, rows: np.ndarray, bad_rows: BadRows | None
) -> tuple[torch.Tensor, np.ndarray]:
    """(K, C, H, W) images of `rows` in [0, 1] and their (K,) positions in `rows`."""
    if bad_rows is None:
        _check_present(table, f, rows)
    return decode_images(
        table.columns[f.name][rows],
        size=(f.height, f.width),
        channels=f.channels,
        refs=_Refs(table, rows),
        base_dir=_base_dir(table),
        bad_rows=bad_rows,
        column=f.name,
    )


def _good_rows(
    table: Table,
    features: list[FeatureSpec],
    bad_rows: BadRows,
    *,
    target: str | None,
    numeric_target: bool,
    classes: dict[str | None, int] | None = None,
) -> np.ndarray:
    """Skip mode: record the rows with a bad value (images: once decoded) and return the (K,)
    indices of the others. `classes`: a class outside them is bad (val/test targets)."""
    checks = RowChecks(table)
    if target is not None:
        checks.target(target, numeric=numeric_target)
        if classes is not None:
            values = table.columns[target]
            unknown = [k is not None and k not in classes for k in _keys(values)]
            checks.add(
                np.flatnonzero(unknown),
                target,
                UNKNOWN_CLASS,
                lambda i: f"{quote(values[i])} is not a known class",
            )
    for f in features:
        image = f.type == "image"  # cannot be filled in
        checks.column(
            f.name,
            numeric=f.type == "numeric",
            required=image or f.fill == "error",
            missing=(MISSING_VALUE, "missing image" if image else "missing value"),
        )
    return checks.record(bad_rows)


def _base_dir(table: Table) -> Path | None:
    """Relative image paths in a data file are also looked up next to that file."""
    return None if table.source.startswith("builtin:") else Path(table.source).parent


# --------------------------------------------------------------------------------- columns


def _feature_names(table: Table, cfg: DataConfig) -> list[str]:
    columns = ", ".join(table.column_names)
    for key, names in (("data.exclude", cfg.exclude), ("data.columns", list(cfg.columns))):
        for name in names:
            if name not in table.columns:
                raise DataError(
                    f"{table.source}: column '{name}' named in {key} is not in the data; "
                    f"columns are: {columns}; fix the name or remove it from {key}"
                )
    names = [n for n in table.column_names if n != cfg.target and n not in cfg.exclude]
    if not names:
        raise DataError(
            f"{table.source}: no feature columns left (columns: {columns}; target "
            f"'{cfg.target}', excluded: {', '.join(cfg.exclude) or 'none'}); expected at least one "
            "input column; remove some from data.exclude"
        )
    return names


def _feature_spec(cfg: DataConfig, name: str, kind: Any) -> FeatureSpec:
    column_cfg = cfg.columns.get(name)
    inferred = column_cfg is None or column_cfg.type is None
    fill = column_cfg.fill if column_cfg is not None else "error"
    fill_value = column_cfg.fill_value if column_cfg is not None else None
    return FeatureSpec(name, kind, inferred, fill=fill, fill_value=fill_value)


def _column_type(table: Table, cfg: DataConfig, name: str, max_bad_fraction: float) -> str:
    declared = cfg.columns.get(name)
    if declared is not None and declared.type is not None:
        return declared.type
    return infer_column_type(table.columns[name], max_bad_fraction)


def infer_column_type(
    values: np.ndarray, max_bad_fraction: float = 0.0
) -> Literal["numeric", "category", "image"]:
    """image (arrays or .png/.jpg/.jpeg paths), numeric (numbers or numeric strings), category.

    `max_bad_fraction`: skip mode tolerates that share of values that are not numbers in a
    numeric column (see `is_numeric_column`); they are bad rows then.
    """
    if values.dtype.kind == "b":
        return "category"
    if values.dtype.kind in "iuf":
        return "numeric"
    if values.dtype.kind in "US":
        values = values.astype(object)
    # Arrays first: _key would format a whole image as text.
    present = [v for v in values if isinstance(v, np.ndarray) or _key(v) is not None]
    if present and all(isinstance(v, np.ndarray) for v in present):
        return "image"
    if present and all(isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES) for v in present):
        return "image"
    return "numeric" if is_numeric_column(values, max_bad_fraction) else "category"


def _parse_numeric(table: Table, f: FeatureSpec) -> np.ndarray:
    """(N,) float64 of a numeric column, NaN where missing; a value that is no number raises."""
    values = table.columns[f.name]
    floats, bad = parse_floats(values)
    if bad is not None:
        how = "by inference" if f.inferred else "in data.columns"
        raise DataError(
            f"{table.row_ref(bad)}, column '{f.name}': '{values[bad]}' is not a number; expected "
            f"a numeric value (column typed numeric {how}); fix the value or declare "
            f"data.columns.{f.name}.type=category"
        )
    return floats


def _numeric_values(table: Table, f: FeatureSpec) -> np.ndarray:
    """(N,) float64 of a numeric column, missing values filled by the fitted rule."""
    floats = _parse_numeric(table, f)
    missing = np.isnan(floats)
    if missing.any():
        if f.fill == "error":
            _missing_error(table, f, int(np.argmax(missing)))
        floats[missing] = f.fill_value
    return floats


def _category_values(table: Table, f: FeatureSpec) -> np.ndarray:
    """(N,) object array of category keys, missing values filled by the fitted rule."""
    keys = _keys(table.columns[f.name])
    missing = np.equal(keys, None)
    if missing.any():
        if f.fill == "error":
            _missing_error(table, f, int(np.argmax(missing)))
        keys[missing] = f.fill_value
    return keys


def _missing_error(table: Table, f: FeatureSpec, i: int) -> None:
    rules = "mean|median|constant" if f.type == "numeric" else "constant"
    raise DataError(
        f"{table.row_ref(i)}, column '{f.name}': missing value; fill it in the data or set "
        f"data.columns.{f.name}.fill={rules}"
    )


def _check_present(table: Table, f: FeatureSpec, rows: np.ndarray) -> None:
    values = table.columns[f.name]
    for i in rows:
        v = values[i]
        if not isinstance(v, np.ndarray) and _key(v) is None:
            raise DataError(
                f"{table.row_ref(i)}, column '{f.name}': missing image; every row needs an image "
                "path or array; fill it in or drop the row"
            )


def _fit_numeric(table: Table, spec: FeatureSpec) -> None:
    if spec.fill == "constant":
        try:
            spec.fill_value = float(spec.fill_value if spec.fill_value is not None else 0.0)
        except ValueError:
            raise ConfigError(
                f"data.columns.{spec.name}.fill_value={spec.fill_value!r}: column '{spec.name}' "
                "is numeric; expected a number"
            ) from None
    floats = _parse_numeric(table, spec)
    missing = np.isnan(floats)
    if missing.any() and spec.fill == "error":
        _missing_error(table, spec, int(np.argmax(missing)))
    present = floats[~missing]
    if not len(present):
        raise DataError(
            f"{table.source}: column '{spec.name}' has no values in the training split; "
            f"expected numbers; add it to data.exclude or fill the column"
        )
    # Statistics of the values present; a filled-in value is then standardised like them.
    spec.mean, spec.std = float(present.mean()), float(present.std()) or 1.0
    if spec.fill == "mean":
        spec.fill_value = spec.mean
    elif spec.fill == "median":
        spec.fill_value = float(np.median(present))


def _fit_category(table: Table, spec: FeatureSpec) -> None:
    if spec.fill in ("mean", "median"):
        raise ConfigError(
            f"data.columns.{spec.name}.fill={spec.fill}: column '{spec.name}' is a category "
            "column and has no mean or median; use fill=constant (optionally with fill_value) "
            "or declare its type numeric"
        )
    if spec.fill == "constant":
        spec.fill_value = _key(spec.fill_value) or DEFAULT_CATEGORY_FILL
    keys = _category_values(table, spec)
    spec.vocab = sorted(set(keys.tolist()), key=_sort_key)


def _fit_image(
    table: Table, spec: FeatureSpec, cfg: DataConfig, rows: np.ndarray, bad_rows: BadRows | None
) -> _Decoded:
    """Size, channels and per-channel statistics from the images of `rows`, decoded once."""
    if spec.fill != "error":
        raise ConfigError(
            f"data.columns.{spec.name}.fill={spec.fill}: column '{spec.name}' holds images, "
            "which cannot be filled in; remove the fill rule and give every row an image"
        )
    values = table.columns[spec.name]
    if bad_rows is None:
        _check_present(table, spec, rows)
    first = None  # the first image that can be read sets what the config leaves open
    for i in rows:
        try:
            first = load_image(values[i], ref=table.row_ref(int(i)), base_dir=_base_dir(table))
            break
        except DataError:
            if bad_rows is None:
                raise  # skip mode: decode_images below records it
    spec.height, spec.width = cfg.image.size or (first.shape[:2] if first is not None else (1, 1))
    spec.channels = cfg.image.channels or (1 if first is None or is_grayscale(first) else 3)
    images, decoded = decode_images(
        values[rows],
        size=(spec.height, spec.width),
        channels=spec.channels,
        refs=_Refs(table, rows),
        base_dir=_base_dir(table),
        bad_rows=bad_rows,
        column=spec.name,
    )  # (K, C, H, W) in [0, 1]
    means, stds = [], []
    for c in range(spec.channels):
        channel = images[:, c].double()
        means.append(float(channel.mean()))
        stds.append(float(channel.std(correction=0)) or 1.0)
    spec.mean, spec.std = means, stds
    return _Decoded(values, rows[decoded], images)


def _parse_target_floats(table: Table, name: str) -> np.ndarray:
    values = table.columns[name]
    floats, bad = parse_floats(values)
    if bad is not None:
        raise DataError(
            f"{table.row_ref(bad)}, column '{name}': '{values[bad]}' is not a number; expected a "
            f"numeric target for regression; fix the value or declare "
            f"data.columns.{name}.type=category"
        )
    missing = np.isnan(floats)
    if missing.any():
        raise DataError(
            f"{table.row_ref(int(np.argmax(missing)))}, column '{name}': missing target value; "
            "fill it in or drop the row"
        )
    return floats


def _fit_target(table: Table, cfg: DataConfig, kind: str) -> TargetSpec:
    """`kind`: from `infer_target_kind` (which also checks the column is there, not an image)."""
    name = cfg.target
    declared = cfg.columns.get(name)
    if declared is not None and declared.fill != "error":
        raise ConfigError(
            f"data.columns.{name}.fill={declared.fill}: '{name}' is the target, and a row "
            "without a target cannot be trained on; remove the fill rule"
        )
    if kind == "numeric":
        floats = _parse_target_floats(table, name)
        return TargetSpec(
            name, "regression", None, mean=float(floats.mean()), std=float(floats.std()) or 1.0
        )
    values = table.columns[name]
    keys = _keys(values)
    missing = np.equal(keys, None)
    if missing.any():
        raise DataError(
            f"{table.row_ref(int(np.argmax(missing)))}, column '{name}': missing target value; "
            "fill it in or drop the row"
        )
    unique, first = np.unique(keys.astype(str), return_index=True)
    if len(unique) < 2:
        raise DataError(
            f"{table.source}: the training split has only one class ('{unique[0]}') in target "
            f"column '{name}'; a classifier needs at least two; check data.target or the data"
        )
    order = sorted(range(len(unique)), key=lambda i: _sort_key(str(unique[i])))
    classes = [_python_value(values[first[i]]) for i in order]
    return TargetSpec(name, "binary" if len(classes) == 2 else "multiclass", classes)


# --------------------------------------------------------------------------------- summary


def _summary(features: list[FeatureSpec], target: TargetSpec) -> str:
    """One line: each column's type, runs like x0..x63 compressed, then the target."""
    parts: list[str] = []
    i = 0
    while i < len(features):
        f = features[i]
        note = "" if f.inferred else ", declared"
        if f.type == "numeric":
            j = _numeric_run_end(features, i)
            if j - i >= 3:
                parts.append(f"{f.name}..{features[j - 1].name} numeric ({j - i}{note})")
                i = j
                continue
            parts.append(f"{f.name} numeric" + (" (declared)" if note else ""))
        elif f.type == "category":
            parts.append(f"{f.name} category ({len(f.vocab or [])} values{note})")
        else:
            parts.append(f"{f.name} image ({f.channels}x{f.height}x{f.width}{note})")
        i += 1
    if target.task == "regression":
        goal = f"target {target.name}: regression"
    else:
        goal = f"target {target.name}: {target.task}, {len(target.classes or [])} classes"
    any_inferred = any(f.inferred for f in features)
    line = ("inferred column types: " if any_inferred else "column types: ") + ", ".join(parts)
    line += f"; {goal}"
    if any_inferred:
        line += "; declare data.columns.NAME.type to override"
    return line


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _numeric_run_end(features: list[FeatureSpec], start: int) -> int:
    """End (exclusive) of the run of numeric columns named prefix<k>, prefix<k+1>, ..."""
    first = _NUMBERED.match(features[start].name)
    if first is None:
        return start + 1
    prefix, number = first.group(1), int(first.group(2))
    end = start + 1
    while end < len(features):
        f = features[end]
        m = _NUMBERED.match(f.name)
        same = f.type == "numeric" and f.inferred == features[start].inferred
        if not (same and m and m.group(1) == prefix and int(m.group(2)) == number + end - start):
            break
        end += 1
    return end
