"""Constants and helpers shared by the language-model tests (imported by name, as
tests/serve/serve_helpers.py is: the test folders are not packages)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALPHABET = "abcdefghijklmnopqrstuvwxyz\n"
ABC_STEPS, ABC_BATCH, ABC_BLOCK, ABC_EVAL_EVERY = 60, 16, 16, 20

TINY: dict[str, Any] = {
    "seed": 0,
    "data": {
        "source": "SET ME",
        "corpus": {"tokenizer": "char", "eval_blocks": 8, "sample_tokens": 8},
    },
    "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16},
    "train": {
        "batch_size": 8,
        "max_steps": 6,
        "precision": "fp32",
        "log_every_steps": 1000,
        "optimizer": {"name": "adamw", "lr": 1.0e-2},
    },
    "output": {"dir": "SET ME", "name": "lm"},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class TrainedRun:
    dir: Path
    run: Any  # forgeml.api.Run
    log: str  # what training printed (a plain, non-terminal console)
    corpus: Path
