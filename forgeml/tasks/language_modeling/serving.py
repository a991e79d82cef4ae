"""`ServedLM`: a language-model run as the server holds it (the OpenAI-compatible routes).

Everything here runs on the model's scheduler thread (forgeml/serve/), never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgeml.errors import ForgeError
from forgeml.generation.language_model import LanguageModel
from forgeml.run_dir import read_manifest

TASK = "language_modeling"


class ServedLM:
    """A language-model run directory, checked at construction and loaded by `load()`."""

    task = TASK
    protocol = "openai"  # served by the OpenAI-compatible routes (forgeml/serve/)

    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.run_dir = Path(run_dir)
        self.name = name
        manifest = read_manifest(self.run_dir)  # a clear error now, before the server binds
        if manifest.get("task") != TASK:
            raise ForgeError(f"{self.run_dir} is not a language-model run")
        self.lm: Any = None  # forgeml.generation.language_model.LanguageModel once loaded

    @property
    def loaded(self) -> bool:
        return self.lm is not None

    def load(self) -> None:
        """Build the model and load its weights (sha256 checked). Slow: call off the loop."""
        self.lm = LanguageModel.load(self.run_dir)

    def warmup(self) -> None:
        """Two greedy tokens from a one-token prompt: the first request pays no lazy set-up."""
        self.lm.complete([[0]], max_new_tokens=min(2, self.context_length - 1), temperature=0)

    @property
    def context_length(self) -> int:
        return self.lm.context_length

    @property
    def vocab_size(self) -> int:
        return self.lm.tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Raises DataError for text the tokenizer cannot take (a character
        a character-level model never saw)."""
        return self.lm.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.lm.decode(ids)

    def start_ids(self) -> list[int] | None:
        """What an empty prompt continues from: the end-of-text token, else a newline."""
        eos = self.lm.tokenizer.eos_id
        if eos is not None:
            return [eos]
        try:
            return self.encode("\n") or None
        except ForgeError:
            return None
