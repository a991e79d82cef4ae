"""What a language model's training adds to the loop: text samples and tokens/s with MFU.

Both are callbacks (`Sampler`) or log-line extras (`Throughput.describe`); the loop knows neither.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from forgeml.data.corpus import Corpus
from forgeml.errors import ConfigError, DataError
from forgeml.generation.sampling import generate
from forgeml.models.registry import context_length
from forgeml.runtime import pick_device


class Throughput:
    """tokens/s and model-FLOPs utilisation for the periodic log line.

    MFU = training FLOPs per token x tokens/s / the machine's matmul peak, measured once per
    process (fp32 and bf16) with a large matmul on the training device.
    """

    def __init__(self, block: int, flops_per_token: int | None, precision: str, log) -> None:
        self.block, self.flops = block, flops_per_token
        self.peaks = measured_peaks() if flops_per_token else {}
        self.precision = precision
        if self.peaks:
            log(
                "matmul peak on this machine: "
                + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in self.peaks.items())
            )

    def describe(self, samples_per_s: float) -> str:
        tokens = samples_per_s * self.block
        text = f"{tokens:,.0f} tok/s"
        if self.flops and self.peaks:
            peak = self.peaks["bf16" if self.precision == "bf16" else "fp32"]
            text += f" MFU {self.flops * tokens / peak:.1%}"
        return text


_PEAKS: dict[str, float] = {}


def measured_peaks(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a (size x size) @ (size x size) matmul, fp32 and bf16, best of `repeats`."""
    if not _PEAKS:
        device = pick_device()
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            a @ b  # warm-up (and, on a GPU, kernel selection)
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                (a @ b).sum().item()
                best = min(best, time.perf_counter() - start)
            _PEAKS[name] = 2 * size**3 / best
    return dict(_PEAKS)


class Sampler:
    """Prints a short generated text after each validation evaluation (rank 0 only).

    Its sampling generator is seeded from the step, so a sample never draws from the training
    RNG: runs with and without samples train identically, and resumes stay exact.
    """

    def __init__(self, model: nn.Module, corpus: Corpus, cfg, log) -> None:
        self.model, self.tokenizer, self.cfg, self.log = model, corpus.tokenizer, cfg, log
        self.prompt: list[int] = []
        if cfg.sample_tokens:
            try:  # checked before training, not at the first evaluation
                self.prompt = self.tokenizer.encode(cfg.sample_prompt)
            except DataError as exc:
                raise ConfigError(
                    f"data.corpus.sample_prompt={cfg.sample_prompt!r}: {exc}"
                ) from None

    def on_eval_end(self, row: dict[str, Any]) -> None:
        if row["split"] != "val" or not self.cfg.sample_tokens:
            return
        prompt = self.prompt or [self.tokenizer.eos_id or 0]
        room = context_length(self.model) - 1
        out = generate(
            self.model,
            [prompt],
            max_new_tokens=min(self.cfg.sample_tokens, room),
            temperature=0.8,
            top_k=200,
            seed=row["step"],
            eos_token_id=self.tokenizer.eos_id,
        )
        text = self.tokenizer.decode(out.tokens[0])
        self.log(f"sample at step {row['step']}: {text!r}")
