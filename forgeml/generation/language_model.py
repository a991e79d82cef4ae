"""`LanguageModel`: a trained language-model run, for text in and text out.

    lm = forgeml.load("runs/gpt-char")          # a LanguageModel for language-modelling runs
    lm.generate("ROMEO:", max_new_tokens=200, temperature=0.8, top_k=40, seed=1)
    for piece in lm.stream("ROMEO:", max_new_tokens=200):
        print(piece, end="", flush=True)

Token-level work (KV cache, sampling, batching of prompts of different lengths) is
forgeml/generation/sampling.py; this adds the tokenizer, stop strings and text streaming. A
`TextStream` runs several prompts at once and yields, per step, the new text of every row; the
server (forgeml/serve) batches concurrent requests through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeml.config import load_config
from forgeml.data.tokenizer import LMTokenizer
from forgeml.errors import ConfigError, ForgeError
from forgeml.generation.decoders import as_decoder
from forgeml.generation.sampling import SamplingParams
from forgeml.generation.sampling import stream as token_stream
from forgeml.models.registry import build_model
from forgeml.run_dir import load_weights, read_config_dict, read_manifest
from forgeml.runtime import pick_device
from forgeml.schema import TokenSpec

TASK = "language_modeling"


@dataclass
class Completion:
    """One finished row: its text and the numbers an API reports."""

    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    prompt_dropped: int  # prompt tokens cut from the left to fit the context


class LanguageModel:
    """A language model and its tokenizer, ready to generate.

    Args:
        model: a forgeml `GPT`, a pretrained causal LM (`Pretrained` with head causal_lm), or
            anything else forgeml/generation/decoders.py's `as_decoder` accepts.
        tokenizer: the run's tokenizer.
        name: how the server lists the model.
    """

    task = TASK

    def __init__(self, model: nn.Module, tokenizer: LMTokenizer, *, name: str = "model") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = as_decoder(model).context_length

    @classmethod
    def load(cls, run_dir: str | Path, *, precision: str = "fp32") -> LanguageModel:
        """Load a run that `forgeml train` wrote for a `data.corpus` config.

        Only the run directory is read: a pretrained causal LM is rebuilt from RUN/pretrained/
        (config.json as trained), never from the checkpoint `model.path` named.

        `precision`: "fp32", or "bf16" (weights cast to bfloat16: faster decoding on CPUs with
        AVX512-BF16/AMX and on GPUs, with slightly different numbers).
        """
        run_dir = Path(run_dir)
        manifest = read_manifest(run_dir)
        if manifest.get("task") != TASK:
            raise ForgeError(f"{run_dir} is not a language model (task {manifest.get('task')})")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision {precision!r}: expected fp32 or bf16")
        cfg = load_config(read_config_dict(run_dir))
        tokenizer = LMTokenizer.from_file(run_dir / "tokenizer", kind=manifest["tokenizer"])
        model = build_model(cfg.model, TokenSpec(tokenizer.vocab_size), run_dir=run_dir)
        load_weights(run_dir, manifest, model)
        model = model.to(pick_device())
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        if hasattr(model, "prepare_for_generation"):
            model.prepare_for_generation()
        return cls(model, tokenizer, name=manifest.get("name", run_dir.name))

    # ------------------------------------------------------------------ text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate(self, prompt: str | Sequence[str], **options: Any) -> str | list[str]:
        """The continuation of `prompt` (or of each prompt of a list), without the prompt.

        Options: `SamplingParams` fields -- max_new_tokens (128), temperature (1.0; 0 =
        greedy), top_k, top_p, repetition_penalty (1.0 = off), seed -- or `params=` one, and
        stop (strings that end a row, not included).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [c.text for c in self.complete(prompts, **options)]
        return texts[0] if isinstance(prompt, str) else texts

    def complete(self, prompts: Sequence[str], **options: Any) -> list[Completion]:
        """Like `generate`, with finish reasons and token counts per row."""
        stream = self.start(prompts, **options)
        for _ in stream:
            pass
        return stream.completions()

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """The continuation of one prompt, piece by piece, as it is generated."""
        for pieces in self.start([prompt], **options):
            if pieces[0]:
                yield pieces[0]

    def start(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | None = None,
        *,
        stop: Sequence[str] = (),
        **settings: Any,
    ) -> TextStream:
        """A `TextStream` over `prompts` (texts, or token ids) generated together; `settings`
        are `SamplingParams` fields over `params`."""
        params = SamplingParams.of(params, settings)
        ids = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        if any(not p for p in ids):  # an empty prompt continues from the end-of-text token
            start = (
                [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else self.encode("\n")
            )
            ids = [p or list(start) for p in ids]
        room = min(params.max_new_tokens, self.context_length - 1)
        text = TextStream(self.tokenizer, [len(p) for p in ids], stop)
        tokens = token_stream(
            self.model,
            ids,
            replace(params, max_new_tokens=room),
            eos_token_id=self.tokenizer.eos_id,
            stop=text.should_stop if stop else None,
        )
        text.attach(tokens)
        return text


@dataclass
class TextStream:
    """Iterates generation steps; each yields one text piece per row ("" when nothing new).

    Text is decoded from all of a row's tokens each step and only the settled part is emitted:
    a tail that could still become a stop string, or an incomplete UTF-8 character of a
    byte-level tokenizer ("\\ufffd"), waits for the next token.
    """

    tokenizer: LMTokenizer
    prompt_tokens: list[int]
    stop_strings: Sequence[str]
    tokens: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    emitted: list[int] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    _steps: Any = None

    def attach(self, steps) -> None:
        n = len(self.prompt_tokens)
        self._steps = steps
        self.tokens = [[] for _ in range(n)]
        self.texts = [""] * n
        self.emitted = [0] * n
        self.stopped = [False] * n

    @property
    def prompt_dropped(self) -> list[int]:
        return list(self._steps.prompt_dropped)

    def should_stop(self, row: int, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens)
        return any(s and s in text for s in self.stop_strings)

    def __iter__(self) -> Iterator[list[str]]:
        for step in self._steps:
            pieces = []
            for i, new in enumerate(step):
                if new:
                    self.tokens[i].extend(new)
                pieces.append(self._settle(i, final=False) if new else "")
            yield pieces
        last = [self._settle(i, final=True) for i in range(len(self.tokens))]
        if any(last):
            yield last

    def _settle(self, i: int, *, final: bool) -> str:
        text = self.tokenizer.decode(self.tokens[i])
        cut = min((text.find(s) for s in self.stop_strings if s and s in text), default=-1)
        if cut >= 0:
            text, final = text[:cut], True
            self.stopped[i] = True
        safe = len(text)
        if not final:
            while safe and text[safe - 1] == "\ufffd":
                safe -= 1  # a multi-byte character not complete yet
            for s in self.stop_strings:  # a tail that may grow into a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        safe = max(safe, self.emitted[i])
        self.texts[i] = text
        piece = text[self.emitted[i] : safe]
        self.emitted[i] = safe
        return piece

    def completions(self) -> list[Completion]:
        result = self._steps.result()
        return [
            Completion(
                text=self.texts[i][: self.emitted[i]],
                finish_reason="length"
                if result.finish_reasons[i] == "length" and not self.stopped[i]
                else "stop",
                prompt_tokens=self.prompt_tokens[i] - result.prompt_dropped[i],
                completion_tokens=len(self.tokens[i]),
                prompt_dropped=result.prompt_dropped[i],
            )
            for i in range(len(self.tokens))
        ]
