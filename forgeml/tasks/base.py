"""What a task is: the one place that knows a kind of problem, asked by every verb.

A task says how its data is encoded, which model it builds, its loss and metrics (the train and
eval steps the loop runs), what its run directory holds beyond the common files, how a finished
run predicts, how it is served and how it is exported. The verbs (forgeml/api.py, the CLI, serve,
export) find the task of a config or of a run directory in the registry (forgeml/tasks/__init__.py)
and ask it; none of them branches on the kind of problem. docs/adding-a-task.md walks through
adding one.

Tasks sit below training: nothing here imports forgeml.training, so loading a run to predict never
pulls in the training machinery. The generic recipe (forgeml/training/recipe.py) drives a task's
training side through the methods below; it knows no task by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

Log = Callable[[str], None]
# (model inputs, rng) -> augmented inputs, applied to training batches only
Augment = Callable[[dict[str, Tensor], Any], dict[str, Tensor]]


@dataclass
class TaskSteps:
    """What the training loop runs for a task: its loss (the train step's criterion), its eval
    step over a whole split, and the optional extras.

    Attributes:
        loss: (outputs, target) -> scalar mean loss, on float32 outputs.
        evaluate: (model, data, precision) -> metrics of `model` on labelled `data`, with "loss".
        augment: applied to each training batch's inputs (images: crop and flip).
        describe_rate: samples/s -> extra text for the periodic log line (tokens/s and MFU).
        callbacks: the task's own loop callbacks (a language model's text samples).
    """

    loss: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module, Any, str], dict[str, Any]]
    augment: Augment | None = None
    describe_rate: Callable[[float], str] | None = None
    callbacks: list[Any] = field(default_factory=list)


@dataclass
class RunRecord:
    """What a task adds to the common files of a run directory when training ends."""

    kind: str  # forgeml.json "task": binary | multiclass | ... | language_modeling
    manifest: dict[str, Any] = field(default_factory=dict)  # more forgeml.json fields
    metrics: dict[str, Any] = field(default_factory=dict)  # more metrics.json fields
    data_summary: dict[str, int] = field(default_factory=dict)  # forgeml.json "data_summary"
    headline: str = ""  # more to say when training stops, e.g. "1,228,800 tokens"


class Prepared(Protocol):
    """A task's data, encoded and ready to train on (each task has its own dataclass)."""

    config: Any  # the Config, as the task may have completed it
    train: Any  # TensorData-like: __len__, batch(index), to(device)
    val: Any | None
    eval_splits: Mapping[str, Any]  # the splits final metrics are computed on, by name


class Task(Protocol):
    """One kind of problem. See the module docstring; every method is one verb's question."""

    name: str  # "table", "language_modeling"
    run_kinds: frozenset[str]  # the forgeml.json "task" values its runs carry
    history_axis: str  # what its training curves are drawn against: "epoch" or "step"

    def accepts(self, config: Any) -> bool:
        """Whether `config` is a problem of this task."""
        ...

    # ---- training (forgeml/training/recipe.py)
    def prepare(self, config: Any, *, log: Log) -> Prepared:
        """Read and encode the data; `forgeml validate` stops after this and `build_model`."""
        ...

    def build_model(self, prepared: Any, module: nn.Module | None = None) -> nn.Module: ...

    def summary(self, prepared: Any, model: nn.Module) -> str:
        """What `forgeml validate` says of a valid config (after "ok: CONFIG is valid; ")."""
        ...

    def describe(self, prepared: Any, model: nn.Module) -> str:
        """One line on the model and the data, logged before training."""
        ...

    def steps(self, prepared: Any, model: nn.Module, *, log: Log, quiet: bool) -> TaskSteps:
        """The loss, eval step and extras the loop runs (`quiet`: nothing will be shown)."""
        ...

    def save_state(self, prepared: Any, directory: Path) -> None:
        """Write what predicting needs besides weights and config (preprocess/, tokenizer/)."""
        ...

    def record(self, prepared: Any, model: nn.Module, result: Any, metrics: dict) -> RunRecord:
        """The task's fields of forgeml.json and metrics.json at the end of training."""
        ...

    def report(self, directory: Path, prepared: Any, metrics: dict, manifest: dict) -> None:
        """Plots and model card beyond the training curves (may write nothing); `manifest`:
        forgeml.json as it will be written."""
        ...

    # ---- finished runs
    def load(self, run_dir: Path, **options: Any) -> Any:
        """The run ready to use: a `Predictor`, a `LanguageModel`, ..."""
        ...

    def evaluate_run(self, run_dir: Path, data: Any, *, module: nn.Module | None) -> dict: ...

    def served(self, run_dir: Path, name: str) -> Any:
        """The run as a server holds it; its `protocol` names the routes that serve it."""
        ...

    def export_spec(self, run_dir: Path, *, data: Any, module: Any, log: Log) -> Any:
        """What `forgeml export` traces and checks (forgeml/inference/graph.py)."""
        ...
