"""`forgeml.train(config)`: data -> preprocessing -> model -> fit -> evaluation -> run directory.

The CLI and the Keras-like `Model` both call into this module; there is no second pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from forgeml.config import Config, DataConfig, load_config
from forgeml.data.bad_rows import BadRows, RowChecks, check_splits
from forgeml.data.image import augment as augment_images
from forgeml.data.preprocess import Preprocessor
from forgeml.data.sources import read_table
from forgeml.data.split import infer_target_kind, split_table
from forgeml.data.table import Table
from forgeml.data.tensors import TensorData
from forgeml.errors import ConfigError, DataError, ForgeError
from forgeml.evaluation.report import plot_confusion, plot_history, write_card
from forgeml.models.registry import build_model, count_parameters
from forgeml.run_dir import RunDir, read_manifest, versions
from forgeml.runtime import pick_device, seed_everything
from forgeml.training.checkpoint import Checkpointer
from forgeml.training.distributed import barrier, init_from_env, is_main, restart_count
from forgeml.training.loop import FitResult, fit
from forgeml.training.loop import evaluate as evaluate_model
from forgeml.training.optim import build_loss
from forgeml.training.progress import summary_table
from forgeml.training.resume import checkpointer_for, open_run, restart_resume
from forgeml.training.strategy import full_state_dict


@dataclass
class Prepared:
    """Everything `fit` needs, built from a config; `forgeml validate` stops here."""

    config: Config
    tables: dict[str, Table]  # "train", and "val"/"test" when present
    preprocessor: Preprocessor
    data: dict[str, TensorData]
    # data.on_bad_rows=skip: per split, the rows skipped (`BadRows.summary`); metrics.json has it.
    bad_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    # text/sequence columns: per split, rows cut to the column's max_length (metrics.json too)
    truncated: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Run:
    """A finished training run and its directory."""

    dir: Path
    config: Config
    metrics: dict[str, dict[str, Any]]
    stop_reason: str
    history: list[dict[str, Any]]

    def load(self):
        """The `Predictor` for this run (same as `forgeml.load(run.dir)`; a language model's
        run gives its `LanguageModel`)."""
        return load(self.dir)


def load_splits(
    cfg: DataConfig, seed: int, *, bad_rows: dict[str, BadRows] | None = None
) -> dict[str, Table]:
    """Read the sources and split them: ratios of one source, or separate files per split.

    With `data.on_bad_rows: skip`, rows a reader cannot parse and rows without a usable target
    are left out (before the split, which they would distort) and recorded in
    `bad_rows[split]`; those of `data.source` count for "train".
    """
    skip = cfg.on_bad_rows == "skip"
    found: dict[str, BadRows] = {}

    def read(split: str, spec: str) -> Table:
        found[split] = BadRows()
        return read_table(spec, delimiter=cfg.delimiter, bad_rows=found[split] if skip else None)

    table = read("train", cfg.source)
    kind = infer_target_kind(table, cfg, max_bad_fraction=cfg.max_bad_fraction if skip else 0.0)
    if skip:
        checks = RowChecks(table)
        checks.target(cfg.target, numeric=kind == "numeric")
        good = checks.record(found["train"])
        if not len(good):
            found["train"].check(found["train"].count, 1.0, cfg.source)
        table = table.take(good) if len(good) < table.num_rows else table
    ratios = cfg.split
    val_ratio = 0.0 if cfg.val_source else ratios.val
    test_ratio = 0.0 if cfg.test_source else ratios.test
    stratify = None
    if kind == "category" and ratios.stratify and (val_ratio or test_ratio):
        stratify = np.array([str(v) for v in table.columns[cfg.target]], dtype=object)
    train, val, test = split_table(
        table,
        train=1.0 - val_ratio - test_ratio,
        val=val_ratio,
        test=test_ratio,
        seed=ratios.seed if ratios.seed is not None else seed,
        stratify_by=stratify,
        target=cfg.target,
    )
    tables = {"train": train}
    if cfg.val_source:
        val = read("val", cfg.val_source)
    if cfg.test_source:
        test = read("test", cfg.test_source)
    if val is not None:
        tables["val"] = val
    if test is not None:
        tables["test"] = test
    if skip and bad_rows is not None:
        bad_rows.update({split: found.get(split) or BadRows() for split in tables})
    return tables


def prepare(config: Config, *, log: Callable[[str], None] = print) -> Prepared:
    """Read, split and preprocess the data of `config`, and check the model can be built.

    With `data.on_bad_rows: skip`, bad rows are left out (the fit sees good train rows only),
    logged and counted per split in `Prepared.bad_rows`; more than `data.max_bad_fraction` of
    the rows of a source bad is a DataError.
    """
    cfg = config.data
    bad: dict[str, BadRows] = {}  # skip mode: one collector per split
    tables = load_splits(cfg, config.seed, bad_rows=bad)
    if config.model.name == "pretrained":
        # A pretrained text classifier reads its text column with the checkpoint's own
        # tokenizer.json unless the column names one (models/pretrained.py).
        from forgeml.models.pretrained import use_checkpoint_tokenizer

        config = use_checkpoint_tokenizer(config, tables["train"])
        cfg = config.data
    rows = {split: tables[split].num_rows + found.count for split, found in bad.items()}
    sources = {split: table.source for split, table in tables.items()}

    def check() -> None:  # after every step: fail as soon as too many rows are bad
        if bad:
            check_splits(bad, rows, sources, cfg.max_bad_fraction)

    check()
    preprocessor = Preprocessor.fit(tables["train"], cfg, log=log, bad_rows=bad.get("train"))
    check()
    data, truncated = {}, {}
    for split, table in list(tables.items()):
        inputs, target, kept = preprocessor.transform_rows(table, bad_rows=bad.get(split))
        check()
        cut = {column: n for column, n in preprocessor.truncated.items() if n}
        if cut:
            truncated[split] = cut
            for column, n in cut.items():
                limit = next(f.max_length for f in preprocessor.features if f.name == column)
                log(f"{split}: {n:,} rows of '{column}' longer than {limit} were truncated")
        if not len(kept):  # possible with a high max_bad_fraction
            bad[split].check(rows[split], 1.0, f"{table.source} ({split} split)")
        if len(kept) < table.num_rows:
            tables[split] = table.take(kept)
        data[split] = TensorData(inputs, target)
    for split, found in bad.items():
        if found.count:
            log(f"{split}: {found.describe(sources[split])}")
    summary = {split: found.summary(sources[split], rows[split]) for split, found in bad.items()}
    return Prepared(config, tables, preprocessor, data, bad_rows=summary, truncated=truncated)


def train(
    config: str | Path | dict[str, Any] | Config,
    overrides: Sequence[str] | None = None,
    *,
    module: nn.Module | None = None,
    console: Console | None = None,
    quiet: bool = False,
    callbacks: Sequence[Any] = (),
    resume: bool | str | Path | None = None,
) -> Run:
    """Train a model from a config and write its run directory.

    Args:
        config: path to a YAML file, a dict, or a `Config`.
        overrides: `key.sub=value` strings applied on top of the config.
        module: train this `nn.Module` (wrapped in `UserModule` if it takes one tensor)
            instead of building `config.model`.
        console: where progress and summaries go (a rich Console); default stdout.
        quiet: no progress output.
        callbacks: objects with any of on_epoch_end / on_eval_end / on_train_end.
        resume: True to continue from the run's newest valid checkpoint, or a checkpoint path.

    Returns:
        The finished `Run`.

    Raises:
        ForgeError: a config or data mistake, with a one-line message.
    """
    cfg = load_config(config, list(overrides or []))
    init_from_env()  # under torchrun: join the process group; otherwise a no-op
    if resume is None and restart_count() > 0:
        resume = restart_resume(cfg)  # torchrun --max-restarts restarted the job
    quiet = quiet or not is_main()
    console = console or Console()
    log = (lambda _msg: None) if quiet else (lambda msg: console.print(msg, highlight=False))
    seed_everything(cfg.seed, deterministic=cfg.train.deterministic)
    if cfg.data.corpus is not None:  # a language model on a text corpus: forgeml/lm/
        from forgeml.lm.train import train_lm

        if module is not None:
            raise ConfigError(
                "module= is for tabular/text/image models; a data.corpus config "
                "trains model.name=gpt or a pretrained causal LM"
            )
        return train_lm(
            cfg, console=console, log=log, quiet=quiet, callbacks=callbacks, resume=resume
        )
    prepared = prepare(cfg, log=log)
    model = build_or_wrap(cfg, prepared.preprocessor, module)
    return fit_and_save(
        prepared,
        model,
        console=console,
        log=log,
        quiet=quiet,
        callbacks=callbacks,
        # A user module is not buildable from config.yaml: loading needs module=... (as Model).
        custom_model="custom" if module is not None else None,
        resume=resume,
    )


def build_or_wrap(cfg: Config, preprocessor: Preprocessor, module: nn.Module | None) -> nn.Module:
    from forgeml.models.registry import UserModule

    torch.manual_seed(cfg.seed)  # the same seed always builds the same initial weights
    if module is None:
        model = build_model(cfg.model, preprocessor.spec)
    elif isinstance(module, UserModule):
        model = module
    else:
        model = UserModule(module)
    return model.to(pick_device())


def fit_and_save(
    prepared: Prepared,
    model: nn.Module,
    *,
    console: Console,
    log: Callable[[str], None],
    quiet: bool = False,
    callbacks: Sequence[Any] = (),
    custom_model: str | None = None,
    resume: bool | str | Path | None = None,
) -> Run:
    """Run the loop on prepared data, evaluate every split, and write the run directory."""
    cfg = prepared.config
    main = is_main()  # only rank 0 writes; every rank trains and evaluates
    run_dir, checkpoint = open_run(cfg, resume, log, writer=main)
    if main:
        run_dir.write_text("config.yaml", cfg.to_yaml())
        prepared.preprocessor.save(run_dir.path / "preprocess")
    log(
        f"model {custom_model or cfg.model.name}: {count_parameters(model):,} parameters; "
        f"task {prepared.preprocessor.target.task}; "
        + ", ".join(f"{s} {len(d):,} rows" for s, d in prepared.data.items())
    )
    result, loss_fn = fit_prepared(
        prepared,
        model,
        console=console,
        quiet=quiet,
        callbacks=[_HistoryWriter(run_dir), *callbacks] if main else [],
        # Every rank gets one: under FSDP each writes its own shards; rank 0 commits.
        checkpointer=checkpointer_for(run_dir, cfg, writer=main),
        resume=checkpoint,
    )
    log(
        f"stopped after {result.epochs} epochs ({result.steps} steps): {result.stop_reason}; "
        f"precision {result.precision}"
    )
    metrics = final_metrics(prepared, model, loss_fn, result.precision)
    weights = full_state_dict(model)  # under FSDP a collective gathering the shards on rank 0
    if main:
        save_run(
            run_dir, prepared, model, result, metrics, custom_model=custom_model, weights=weights
        )
    barrier()  # no rank leaves before the run directory is complete
    if not quiet:
        held_out = "test" if "test" in metrics else ("val" if "val" in metrics else "none")
        console.print(summary_table(metrics, title=f"final metrics (held out: {held_out})"))
        console.print(f"run directory: {run_dir.path}", highlight=False)
    return Run(run_dir.path, cfg, metrics, result.stop_reason, result.history)


def fit_prepared(
    prepared: Prepared,
    model: nn.Module,
    *,
    console: Console,
    quiet: bool = False,
    callbacks: Sequence[Any] = (),
    checkpointer: Checkpointer | None = None,
    resume: dict[str, Any] | None = None,
) -> tuple[FitResult, Callable]:
    """The loss from the task and config, then the one training loop."""
    cfg, pre = prepared.config, prepared.preprocessor
    task, train_data = pre.target.task, prepared.data["train"]
    weights = class_weights(prepared)
    if weights is not None:
        weights = weights.to(next(model.parameters()).device)
    loss_fn = build_loss(cfg.train.loss, task, weights)
    result = fit(
        model,
        train_data,
        prepared.data.get("val"),
        cfg.train,
        task=task,
        loss_fn=loss_fn,
        seed=cfg.seed,
        class_names=_class_names(pre),
        augment=_image_augment(cfg) if "image" in train_data.inputs else None,
        callbacks=callbacks,
        console=console,
        quiet=quiet,
        target_scale=target_scale(pre),
        checkpointer=checkpointer,
        resume=resume,
    )
    return result, loss_fn


def final_metrics(
    prepared: Prepared, model: nn.Module, loss_fn: Callable, precision: str
) -> dict[str, dict[str, Any]]:
    """An honest evaluation of the weights we keep, on every split, in eval mode."""
    cfg, pre = prepared.config, prepared.preprocessor
    device = next(model.parameters()).device
    return {
        split: evaluate_model(
            model,
            data.to(device),
            task=pre.target.task,
            loss_fn=loss_fn,
            class_names=_class_names(pre),
            batch_size=cfg.train.eval_batch_size or 4 * cfg.train.batch_size,
            precision=precision,
            target_scale=target_scale(pre),
        )
        for split, data in prepared.data.items()
    }


def save_run(
    run_dir: RunDir,
    prepared: Prepared,
    model: nn.Module,
    result: FitResult,
    metrics: dict[str, dict[str, Any]],
    *,
    custom_model: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write weights, metrics, plots and card into a prepared run directory; forgeml.json last.

    `weights`: the full state_dict to save (gathered from an FSDP model); None: the model's."""
    cfg, pre = prepared.config, prepared.preprocessor
    task, name = pre.target.task, run_dir.path.name
    if not (run_dir.path / "config.yaml").exists():
        run_dir.write_text("config.yaml", cfg.to_yaml())
        pre.save(run_dir.path / "preprocess")
    if not (run_dir.path / "history.jsonl").exists():
        for row in result.history:
            run_dir.append_history(row)
    run_dir.write_json(
        "metrics.json",
        {
            **metrics,
            "stop_reason": result.stop_reason,
            "epochs": result.epochs,
            "steps": result.steps,
            "skipped_steps": result.skipped_steps,
            "precision": result.precision,
            "best": result.best,
            **({"bad_rows": prepared.bad_rows} if prepared.bad_rows else {}),
            **({"truncated": prepared.truncated} if prepared.truncated else {}),
        },
    )
    weights = weights if weights is not None else model.state_dict()
    if hasattr(model, "save_to_run"):
        # A pretrained checkpoint keeps its config.json and tokenizer in the run, and a LoRA
        # model set to merge gives merged weights (models/pretrained.py).
        weights = model.save_to_run(run_dir.path, weights)
    sha = run_dir.save_weights(weights)
    plot_history(result.history, run_dir.path / "training_curves.png")
    report_split = "test" if "test" in metrics else ("val" if "val" in metrics else "train")
    if task in ("binary", "multiclass"):  # multilabel: per-label table in card.md instead
        plot_confusion(
            metrics[report_split]["confusion_matrix"],
            _class_names(pre) or [],
            run_dir.path / "confusion_matrix.png",
        )
    num_params = count_parameters(model)
    manifest = {
        "name": name,
        "task": task,
        "model": custom_model or cfg.model.name,
        "num_params": num_params,
        "input_schema": pre.input_schema(),
        "output_schema": pre.output_schema(),
        "weights_sha256": sha,
        "config_sha256": cfg.digest(),
        "stop_reason": result.stop_reason,
        "precision": result.precision,
        "data_summary": {s: len(d) for s, d in prepared.data.items()},
        # The loss's weights as trained, so `Predictor.evaluate` reproduces the loss.
        "class_weights": _weights_by_class(pre, class_weights(prepared)),
    }
    write_card(
        run_dir.path / "card.md",
        name=name,
        task=task,
        config=cfg.to_dict(),
        input_schema=manifest["input_schema"],
        output_schema=manifest["output_schema"],
        metrics=metrics,
        num_params=num_params,
        data_summary=manifest["data_summary"],
        stop_reason=result.stop_reason,
        precision=result.precision,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        versions=versions(),
    )
    run_dir.finish(manifest)  # last: from here on the directory is a usable model
    read_manifest(run_dir.path)


class _HistoryWriter:
    """Appends each evaluation row to history.jsonl as it happens (survives a crash)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def on_eval_end(self, row: dict[str, Any]) -> None:
        self.run_dir.append_history(row)


def target_scale(pre: Preprocessor) -> tuple[float, float] | None:
    """A regression target's (mean, std): metrics are reported in the target's own units."""
    t = pre.target
    return (t.mean, t.std) if t.task == "regression" else None


def _class_names(pre: Preprocessor) -> list[str] | None:
    classes = pre.target.classes
    return [str(c) for c in classes] if classes is not None else None


def class_weights(prepared: Prepared) -> torch.Tensor | None:
    """The loss's (C,) class weights, or (K,) per-label positive weights for multi-label, that
    `train.loss.class_weights` resolves to on the train split; None: an unweighted loss."""
    spec, pre = prepared.config.train.loss.class_weights, prepared.preprocessor
    if spec is None or pre.target.task == "regression":
        return None
    return _class_weights(spec, pre, prepared.data["train"].target)


def _weights_by_class(pre: Preprocessor, weights: torch.Tensor | None) -> dict | None:
    """{class name: weight} for forgeml.json (`Predictor.evaluate` reads it back)."""
    if weights is None:
        return None
    return dict(zip(_class_names(pre) or [], weights.tolist(), strict=True))


def _class_weights(spec: Any, pre: Preprocessor, target: torch.Tensor) -> torch.Tensor:
    if spec == "auto":
        return pre.class_weights(target)
    names = _class_names(pre) or []
    unknown = sorted(set(spec) - set(names))
    if unknown:
        raise DataError(
            f"train.loss.class_weights names classes {unknown} that are not in the target; "
            f"expected some of: {', '.join(names)}"
        )
    return torch.tensor([float(spec.get(n, 1.0)) for n in names], dtype=torch.float32)


def _image_augment(cfg: Config):
    crop, flip = cfg.data.image.crop_padding, cfg.data.image.flip
    if not crop and not flip:
        return None

    def augment(inputs: dict[str, torch.Tensor], generator: torch.Generator):
        images = augment_images(inputs["image"], crop_padding=crop, flip=flip, generator=generator)
        return {**inputs, "image": images}

    return augment


def load(run_dir: str | Path, *, module: nn.Module | None = None, backend: str = "torch") -> Any:
    """Load a run directory for prediction: `forgeml.load("runs/NAME").predict(records)`.

    `backend="onnx"` runs the run's `forgeml export` with onnxruntime instead of torch. A
    language-model run gives a `forgeml.lm.LanguageModel` (`.generate(prompt)`, `.stream`).
    """
    if backend == "torch" and read_manifest(run_dir).get("task") == "language_modeling":
        from forgeml.generation.language_model import LanguageModel

        return LanguageModel.load(run_dir)
    from forgeml.tasks.table.predictor import Predictor

    return Predictor(run_dir, module=module, backend=backend)


def evaluate(run_dir: Any, data: Any = None, *, module: nn.Module | None = None) -> dict[str, Any]:
    """Metrics of a saved run on labelled data (a path, records or a Table); by default on the
    run's own held-out test split. `module`: a fresh instance, for runs of your own nn.Module."""
    from forgeml.tasks.table.predictor import Predictor

    predictor = Predictor(run_dir, module=module)
    if data is None:
        if predictor.config.data.source.startswith("python:"):
            raise ForgeError(
                f"{run_dir} was trained from Python objects, so it has no data file to re-split; "
                "pass labelled data: forgeml evaluate RUN_DIR --data FILE"
            )
        tables = load_splits(predictor.config.data, predictor.config.seed)
        split = "test" if "test" in tables else ("val" if "val" in tables else "train")
        data = tables[split]
    return predictor.evaluate(data)


def predict(run_dir: Any, inputs: Any) -> list[dict[str, Any]]:
    """Predictions of a saved run for records, a Table or a path."""
    return load(run_dir).predict(inputs)
