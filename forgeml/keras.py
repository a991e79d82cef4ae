"""A Keras-like `Model`: compile / fit / evaluate / predict / save, on the same loop as the CLI.

    model = forgeml.Model("mlp", hidden_sizes=[64])
    model.compile(optimizer="adam", lr=1e-3)
    model.fit(x_train, y_train, epochs=20, validation_split=0.1)
    model.evaluate(x_test, y_test)      # {"loss": ..., "accuracy": ..., ...}
    model.predict(x_test)               # (N, C) class probabilities, or (N,) values
    model.save("runs/my-model")         # a run directory: forgeml predict/evaluate/load read it

`x` is an array (2-D: numeric columns x0..x{F-1}; 3-D/4-D channels-last: images), a list of
records, a `Table` or a file path; `y` is an array of labels, or None when `x` holds the target
column named by `target`. Inputs go through the same fitted preprocessing as a CLI run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from forgeml.config import Config, load_config
from forgeml.data.preprocess import Preprocessor
from forgeml.data.sources import read_table
from forgeml.data.splits import split_one
from forgeml.data.table import Table
from forgeml.data.tensors import TensorData
from forgeml.errors import ConfigError, DataError, ForgeError
from forgeml.inference.batches import forward_batches
from forgeml.run_dir import RunDir
from forgeml.runtime import seed_everything
from forgeml.tasks.base import TaskSteps
from forgeml.tasks.table.predictor import records_to_table
from forgeml.tasks.table.prepare import TablePrepared, encode
from forgeml.tasks.table.task import TableTask
from forgeml.training.loop import FitResult, fit
from forgeml.training.recipe import save_run

TASK = TableTask()  # the Keras-like Model is the table task driven from Python objects
PYTHON_SOURCE = "python:arrays"  # data.source of a run trained from Python objects


class Model:
    """A model you compile, fit, evaluate, predict with and save, as in Keras.

    Args:
        model: a model family name ("mlp", "cnn") or your own `nn.Module` taking one tensor
            (the batch's "numeric" (B, F) or "image" (B, C, H, W) input).
        **options: the family's config keys, e.g. hidden_sizes=[64], dropout=0.1.
    """

    def __init__(self, model: str | nn.Module = "mlp", **options: Any) -> None:
        if isinstance(model, nn.Module):
            if options:
                raise ConfigError(
                    "options are for named model families; configure your module directly"
                )
            self.module: nn.Module | None = model
            self.model_config: dict[str, Any] = {"name": "mlp"}  # placeholder, never built
        else:
            self.module = None
            self.model_config = {"name": model, **options}
        self.train_config: dict[str, Any] = {}
        self.network: nn.Module | None = None
        self.preprocessor: Preprocessor | None = None
        self.config: Config | None = None
        self.result: FitResult | None = None
        self._prepared: TablePrepared | None = None
        self._steps: TaskSteps | None = None

    def compile(
        self,
        optimizer: str = "adamw",
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        loss: dict[str, Any] | None = None,
        scheduler: str = "constant",
        **train_options: Any,
    ) -> Model:
        """Choose optimizer, loss options and any other `train.*` config key; returns self."""
        self.train_config = {
            "optimizer": {"name": optimizer, "lr": lr, "weight_decay": weight_decay},
            "scheduler": {"name": scheduler},
            "loss": loss or {},
            **train_options,
        }
        return self

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        epochs: int = 10,
        batch_size: int = 64,
        validation_data: tuple[Any, Any] | Any | None = None,
        validation_split: float = 0.0,
        target: str = "label",
        seed: int = 0,
        callbacks: Sequence[Any] = (),
        verbose: bool = True,
    ) -> list[dict[str, Any]]:
        """Train; returns the history rows (one per split per epoch)."""
        table = to_table(x, y, target)
        raw = {
            "seed": seed,
            "data": {
                "source": PYTHON_SOURCE,
                "target": target,
                "split": {"train": 1.0 - validation_split, "val": validation_split, "test": 0.0},
            },
            "model": self.model_config,
            "train": {**self.train_config, "max_epochs": epochs, "batch_size": batch_size},
        }
        cfg = load_config(raw)
        seed_everything(seed, deterministic=cfg.train.deterministic)
        tables = {"train": table}
        if validation_data is not None:
            vx, vy = (
                validation_data if isinstance(validation_data, tuple) else (validation_data, None)
            )
            tables["val"] = to_table(vx, vy, target)
        elif validation_split > 0:
            train, val, _ = split_one(table, cfg.data, seed, val=validation_split, test=0.0)
            tables = {"train": train, "val": val}
        console = Console(quiet=not verbose)
        log = (lambda msg: console.print(msg, highlight=False)) if verbose else (lambda _m: None)
        self._prepared = encode(cfg, tables, log=log)
        self.config, self.preprocessor = cfg, self._prepared.preprocessor
        self.network = TASK.build_model(self._prepared, self.module)
        self._steps = TASK.steps(self._prepared, self.network, log=log, quiet=not verbose)
        self.result = fit(
            self.network,
            self._prepared.train,
            self._prepared.val,
            cfg.train,
            steps=self._steps,
            seed=seed,
            callbacks=callbacks,
            console=console,
            quiet=not verbose,
        )
        return self.result.history

    def evaluate(self, x: Any, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Loss and metrics on labelled data (the loss as trained: class weights included)."""
        pre, network = self._fitted()
        inputs, labels = pre.transform(to_table(x, y, target or pre.target.name))
        return self._steps.evaluate(network, TensorData(inputs, labels), self.result.precision)

    def predict(self, x: Any) -> np.ndarray:
        """(N, C) class probabilities (binary: C = 2), or (N,) values for regression."""
        pre, network = self._fitted()
        inputs, _ = pre.transform(to_table(x, None, pre.target.name), with_target=False)
        outputs = torch.cat(
            [
                out.cpu()
                for out, _ in forward_batches(
                    network,
                    TensorData(inputs, None),
                    batch_size=self.config.train.eval_batch,
                    precision=self.result.precision,
                )
            ]
        )
        rows = pre.decode(outputs)
        if pre.target.task == "regression":
            return np.array([r["prediction"] for r in rows], dtype=np.float64)
        return np.array([list(r["probabilities"].values()) for r in rows], dtype=np.float64)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a run directory that `forgeml.load`, predict and evaluate read."""
        _, network = self._fitted()
        run_dir = RunDir(path)
        run_dir.prepare(overwrite=overwrite)
        prepared, precision = self._prepared, self.result.precision
        metrics = {
            split: self._steps.evaluate(network, data, precision)
            for split, data in prepared.eval_splits.items()
        }
        custom = "custom" if self.module is not None else None
        save_run(run_dir, TASK, prepared, network, self.result, metrics, model_name=custom)
        return run_dir.path

    def _fitted(self) -> tuple[Preprocessor, nn.Module]:
        if self.network is None or self.preprocessor is None:
            raise ForgeError("the model is not trained yet; call fit(x, y) first")
        return self.preprocessor, self.network


def to_table(x: Any, y: Any, target: str) -> Table:
    """Arrays / records / Table / path -> Table with the target (if any) in column `target`."""
    if isinstance(x, Table):
        table = x
    elif isinstance(x, str | Path):
        table = read_table(str(x))
    elif (
        isinstance(x, dict) and x and all(isinstance(v, Sequence | np.ndarray) for v in x.values())
    ):
        table = Table({k: np.asarray(v) for k, v in x.items()}, source="input columns")
    elif isinstance(x, list) and x and isinstance(x[0], dict):
        table = records_to_table(x)
    else:
        table = _array_table(x)
    if y is not None:
        labels = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if labels.ndim != 1 or len(labels) != table.num_rows:
            raise DataError(
                f"y has shape {labels.shape}; expected a 1-D array with one label per row of x "
                f"({table.num_rows} rows)"
            )
        table = Table(
            {**table.columns, target: labels}, source=table.source, row_label=table.row_label
        )
    return table


def _array_table(x: Any) -> Table:
    array = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim == 2:
        if not np.issubdtype(array.dtype, np.number):
            raise DataError(f"x has dtype {array.dtype}; expected numbers (or pass records)")
        return Table({f"x{j}": array[:, j] for j in range(array.shape[1])}, source="x")
    if array.ndim in (3, 4):
        # Images, channels-last as in Keras: (N, H, W) or (N, H, W, C) uint8, or floats in [0, 1].
        if array.dtype != np.uint8:
            if array.size and (array.min() < 0 or array.max() > 1):
                raise DataError(
                    f"x holds images of dtype {array.dtype} with values outside [0, 1]; expected "
                    "uint8 pixels 0..255 or floats in [0, 1]; rescale x"
                )
            array = np.round(array * 255).astype(np.uint8)
        column = np.empty(len(array), dtype=object)
        for i in range(len(array)):
            column[i] = array[i]
        return Table({"image": column}, source="x")
    raise DataError(f"x has shape {array.shape}; expected (N, F) features or (N, H, W[, C]) images")
