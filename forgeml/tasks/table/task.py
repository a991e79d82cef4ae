"""The table task: a target column predicted from the other columns of a table.

The target's kind decides the problem: classes (binary / multiclass), lists of labels
(multilabel) or numbers (regression). Features may be numeric, category, text, numeric-sequence
and image columns, encoded by the preprocessor fitted on the train split (forgeml/data/). Its
runs keep that fitted state in RUN/preprocess/ and predict through `Predictor`; they are served
by the KServe (OIP v2) and `:predict` routes and exported with their preprocessing beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeml.config import Config
from forgeml.data.splits import held_out, read_splits
from forgeml.errors import ForgeError
from forgeml.evaluation.report import plot_confusion, write_card
from forgeml.models.registry import UserModule, build_model, count_parameters, is_generative
from forgeml.run_dir import versions
from forgeml.runtime import pick_device
from forgeml.tasks.base import Log, RunRecord, TaskSteps
from forgeml.tasks.table.evaluate import table_steps
from forgeml.tasks.table.loss import build_loss
from forgeml.tasks.table.prepare import (
    TablePrepared,
    class_weights,
    image_augment,
    prepare,
    target_scale,
)


class TableTask:
    """Classification, regression and multi-label prediction of a table's target column."""

    name = "table"
    history_axis = "epoch"
    run_kinds = frozenset({"binary", "multiclass", "multilabel", "regression"})

    def accepts(self, config: Config) -> bool:
        return config.data.corpus is None and not is_generative(config.model)

    # ------------------------------------------------------------------ training

    def prepare(self, config: Config, *, log: Log) -> TablePrepared:
        return prepare(config, log=log)

    def build_model(self, prepared: TablePrepared, module: nn.Module | None = None) -> nn.Module:
        """The config's model family for the encoded inputs, or `module` (your own nn.Module,
        wrapped in `UserModule` when it takes one tensor), seeded by the config's seed."""
        torch.manual_seed(prepared.config.seed)  # the same seed always builds the same weights
        if module is None:
            model = build_model(prepared.config.model, prepared.preprocessor.spec)
        else:
            model = UserModule.wrap(module)
        return model.to(pick_device())

    def summary(self, prepared: TablePrepared, model: nn.Module) -> str:
        sizes = ", ".join(f"{split} {len(data):,}" for split, data in prepared.data.items())
        name = "custom" if isinstance(model, UserModule) else prepared.config.model.name
        return (
            f"task {prepared.task}; rows {sizes}; model {name} with "
            f"{count_parameters(model):,} parameters"
        )

    def describe(self, prepared: TablePrepared, model: nn.Module) -> str:
        name = "custom" if isinstance(model, UserModule) else prepared.config.model.name
        rows = ", ".join(f"{s} {len(d):,} rows" for s, d in prepared.data.items())
        return f"model {name}: {count_parameters(model):,} parameters; task {prepared.task}; {rows}"

    def steps(
        self, prepared: TablePrepared, model: nn.Module, *, log: Log, quiet: bool
    ) -> TaskSteps:
        cfg = prepared.config
        weights = class_weights(prepared)
        if weights is not None:
            weights = weights.to(next(model.parameters()).device)
        return table_steps(
            prepared.task,
            build_loss(cfg.train.loss, prepared.task, weights),
            eval_batch=cfg.train.eval_batch,
            class_names=prepared.class_names,
            target_scale=target_scale(prepared.preprocessor),
            augment=image_augment(cfg) if "image" in prepared.train.inputs else None,
        )

    def save_state(self, prepared: TablePrepared, directory: Path) -> None:
        prepared.preprocessor.save(directory / "preprocess")

    def record(
        self, prepared: TablePrepared, model: nn.Module, result: Any, metrics: dict
    ) -> RunRecord:
        pre = prepared.preprocessor
        weights = class_weights(prepared)
        return RunRecord(
            kind=prepared.task,
            manifest={
                "input_schema": pre.input_schema(),
                "output_schema": pre.output_schema(),
                # The loss's weights as trained, so `Predictor.evaluate` reproduces the loss.
                "class_weights": None
                if weights is None
                else dict(zip(prepared.class_names or [], weights.tolist(), strict=True)),
            },
            metrics={
                **({"bad_rows": prepared.bad_rows} if prepared.bad_rows else {}),
                **({"truncated": prepared.truncated} if prepared.truncated else {}),
            },
            data_summary={split: len(data) for split, data in prepared.data.items()},
        )

    def report(
        self, directory: Path, prepared: TablePrepared, metrics: dict, manifest: dict
    ) -> None:
        """The confusion matrix of the held-out split (classification) and the model card."""
        if prepared.task in ("binary", "multiclass"):  # multilabel: per-label table in card.md
            plot_confusion(
                metrics[held_out(metrics)]["confusion_matrix"],
                prepared.class_names or [],
                directory / "confusion_matrix.png",
            )
        write_card(
            directory / "card.md",
            name=manifest["name"],
            task=prepared.task,
            config=prepared.config.to_dict(),
            input_schema=manifest["input_schema"],
            output_schema=manifest["output_schema"],
            metrics=metrics,
            num_params=manifest["num_params"],
            data_summary=manifest["data_summary"],
            stop_reason=manifest["stop_reason"],
            precision=manifest["precision"],
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            versions=versions(),
        )

    # ------------------------------------------------------------------ finished runs

    def load(self, run_dir: Path, **options: Any) -> Any:
        from forgeml.tasks.table.predictor import Predictor

        return Predictor(run_dir, **options)

    def evaluate_run(self, run_dir: Path, data: Any, *, module: nn.Module | None) -> dict:
        """Metrics of a run on labelled `data`, or on its own held-out split when None."""
        from forgeml.tasks.table.predictor import Predictor

        predictor = Predictor(run_dir, module=module)
        if data is None:
            if predictor.config.data.source.startswith("python:"):
                raise ForgeError(
                    f"{run_dir} was trained from Python objects, so it has no data file to "
                    "re-split; pass labelled data: forgeml evaluate RUN_DIR --data FILE"
                )
            tables = read_splits(predictor.config.data, predictor.config.seed)
            data = tables[held_out(tables)]
        return predictor.evaluate(data)

    def served(self, run_dir: Path, name: str) -> Any:
        from forgeml.tasks.table.serving import ServedModel

        return ServedModel(run_dir, name)

    def export_spec(self, run_dir: Path, *, data: Any, module: Any, log: Log) -> Any:
        from forgeml.tasks.table.export import export_spec

        return export_spec(run_dir, data=data, module=module, log=log)
