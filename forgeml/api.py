"""The Python API: the verbs of the lifecycle, each asking the task of its config or its run.

    run = forgeml.train("configs/digits-cnn.yaml", ["train.max_epochs=5"])   # -> Run
    forgeml.validate("configs/digits-cnn.yaml")                               # -> one line
    forgeml.evaluate(run.dir)            # metrics on the run's own held-out split
    forgeml.predict(run.dir, records)    # predictions
    forgeml.load(run.dir)                # a Predictor, a LanguageModel, ... (the task decides)

The CLI only calls these; there is no second pipeline. Which task a config or a run belongs to
is the registry's answer (forgeml/tasks/__init__.py); nothing here branches on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from forgeml.config import Config, load_config
from forgeml.distributed import is_main
from forgeml.runtime import seed_everything
from forgeml.tasks import task_for_config, task_for_run
from forgeml.training.distributed import init_from_env, restart_count
from forgeml.training.recipe import train_task
from forgeml.training.resume import restart_resume


@dataclass
class Run:
    """A finished training run and its directory."""

    dir: Path
    config: Config
    metrics: dict[str, dict[str, Any]]
    stop_reason: str
    history: list[dict[str, Any]]

    def load(self) -> Any:
        """The run ready to use, as `forgeml.load(run.dir)` gives it."""
        return load(self.dir)


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
    outcome = train_task(
        task_for_config(cfg),
        cfg,
        module=module,
        console=console,
        log=log,
        quiet=quiet,
        callbacks=callbacks,
        resume=resume,
    )
    result = outcome.result
    return Run(outcome.dir, cfg, outcome.metrics, result.stop_reason, result.history)


def validate(
    config: str | Path | dict[str, Any] | Config,
    overrides: Sequence[str] | None = None,
    *,
    log: Any = print,
) -> str:
    """Check a config and its data without training: what `forgeml validate` prints after "ok".

    Reads and encodes the data and builds the model exactly as training would.

    Raises:
        ForgeError: the first config or data mistake, with a one-line message.
    """
    cfg = load_config(config, list(overrides or []))
    task = task_for_config(cfg)
    prepared = task.prepare(cfg, log=log)
    return task.summary(prepared, task.build_model(prepared))


def load(run_dir: str | Path, *, module: nn.Module | None = None, backend: str = "torch") -> Any:
    """Load a run directory for use: `forgeml.load("runs/NAME").predict(records)`.

    A table run gives a `Predictor` (`module=`: a fresh instance of your own nn.Module, for runs
    trained on one; `backend="onnx"`: its `forgeml export` run by onnxruntime); a language-model
    run a `LanguageModel` (`.generate(prompt)`, `.stream(prompt)`).
    """
    return task_for_run(run_dir).load(Path(run_dir), module=module, backend=backend)


def evaluate(run_dir: Any, data: Any = None, *, module: nn.Module | None = None) -> dict[str, Any]:
    """Metrics of a saved run on labelled data (a path, records or a Table); by default on the
    run's own held-out test split. `module`: a fresh instance, for runs of your own nn.Module."""
    return task_for_run(run_dir).evaluate_run(Path(run_dir), data, module=module)


def predict(run_dir: Any, inputs: Any) -> list[dict[str, Any]]:
    """Predictions of a saved run for records, a Table or a path."""
    return load(run_dir).predict(inputs)
