"""forgeml: neural networks from a data file to a trained, evaluated, deployable model.

    run = forgeml.train("configs/digits-cnn.yaml", ["train.max_epochs=5"])
    predictor = forgeml.load(run.dir)
    predictor.predict([{"image": "seven.png"}])

Names are imported on first use, so `import forgeml` (and the CLI's error paths) stay fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "forgeml.api",
    "Run": "forgeml.api",
    "Config": "forgeml.config",
    "load_config": "forgeml.config",
    "ForgeError": "forgeml.errors",
    "ConfigError": "forgeml.errors",
    "DataError": "forgeml.errors",
    "Model": "forgeml.keras",
    "Predictor": "forgeml.predict",
    "load": "forgeml.predict",
}

__all__ = [*sorted(_EXPORTS), "evaluate", "predict"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'forgeml' has no attribute {name!r}")


def evaluate(run_dir: Any, data: Any = None, *, module: Any = None) -> dict[str, Any]:
    """Metrics of a saved run on labelled data (a path, records or a Table); by default on the
    run's own held-out test split. `module`: a fresh instance, for runs of your own nn.Module."""
    from forgeml.cli import evaluate_run

    return evaluate_run(run_dir, data, module)


def predict(run_dir: Any, inputs: Any) -> list[dict[str, Any]]:
    """Predictions of a saved run for records, a Table or a path."""
    from forgeml.predict import load

    return load(run_dir).predict(inputs)


class _Package(types.ModuleType):
    """Keeps the public functions `evaluate` and `predict` once their namesake modules load.

    Importing the submodule `forgeml.predict` (or `forgeml.evaluate.metrics`, as every training
    run does) makes Python set it as an attribute of this package, which would replace the
    function of the same name: `forgeml.evaluate(run_dir)` would then call a module. The
    submodules stay importable by their full names.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("evaluate", "predict") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
