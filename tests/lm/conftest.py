"""Shared set-up of the language-model tests: tiny configs and one small trained run.

`abc_run` is a 1-layer character-level GPT (32 dims, context 16) trained in-process for 60 steps on
the alphabet repeated: after a letter always comes the next one, so it learns the corpus to a loss
near zero and its greedy continuations are known exactly ("abc" -> "defg...").
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lm_helpers import ABC_BATCH, ABC_EVAL_EVERY, ABC_STEPS, ALPHABET, TINY, TrainedRun, merge
from rich.console import Console


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """`tiny_config(source, **changes)`: the TINY config on `source`, writing under tmp_path;
    `changes` are merged section by section (train={"max_steps": 3})."""

    def make(source: str | Path, **changes: Any) -> dict[str, Any]:
        cfg = merge(TINY, changes)
        cfg["data"]["source"] = str(source)
        if cfg["output"]["dir"] == "SET ME":
            cfg["output"]["dir"] = str(tmp_path / "runs")
        return cfg

    return make


@pytest.fixture(scope="session")
def abc_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    import forgeml

    root = tmp_path_factory.mktemp("abc")
    corpus = root / "abc.txt"
    corpus.write_text(ALPHABET * 200)
    cfg = merge(
        TINY,
        {
            "data": {
                "source": str(corpus),
                "corpus": {"sample_tokens": 12, "sample_prompt": "abc"},
            },
            "train": {
                "batch_size": ABC_BATCH,
                "max_steps": ABC_STEPS,
                "eval_every_steps": ABC_EVAL_EVERY,
                "log_every_steps": 10,
            },
            "output": {"dir": str(root / "runs"), "name": "abc"},
        },
    )
    out = io.StringIO()
    run = forgeml.train(cfg, console=Console(file=out, width=250, force_terminal=False))
    return TrainedRun(run.dir, run, out.getvalue(), corpus)
