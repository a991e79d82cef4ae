"""forgeml: neural networks from a data file to a trained, evaluated, deployable model.

    run = forgeml.train("configs/digits-cnn.yaml", ["train.max_epochs=5"])
    predictor = forgeml.load(run.dir)
    predictor.predict([{"image": "seven.png"}])

Names are imported on first use, so `import forgeml` (and the CLI's error paths) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "forgeml.api",
    "Run": "forgeml.api",
    "evaluate": "forgeml.api",
    "predict": "forgeml.api",
    "validate": "forgeml.api",
    "load": "forgeml.api",
    "Config": "forgeml.config",
    "load_config": "forgeml.config",
    "ForgeError": "forgeml.errors",
    "ConfigError": "forgeml.errors",
    "DataError": "forgeml.errors",
    "Model": "forgeml.keras",
    "Predictor": "forgeml.tasks.table.predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'forgeml' has no attribute {name!r}")
