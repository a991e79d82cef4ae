"""A Hugging Face causal LM as forgeml/generation/sampling.py drives it: `HFDecoder`.

The sampling loop (temperature, top-k/p, repetition penalty, stop rules, seeds, streaming) is
forgeml/generation/sampling.py's, the same one our `gpt` uses; this adapter only runs the model's own
forward against the model's own KV cache (`past_key_values`, named `cache` from transformers 5):

    prefill:  input_ids (B, W)  attention_mask (B, W)      position_ids (B, W)  -> logits, cache
    step:     input_ids (B, 1)  attention_mask (B, W + s)  position_ids (B, 1)  + cache -> ...

attention_mask and position_ids are passed only for left-padded batches (0 = a padding slot;
positions count each row's real tokens), exactly what `transformers`' `generate` does with
left padding; an unpadded batch takes the model's defaults. peft models (unmerged LoRA) work
alike: their forward passes these arguments through to the base model.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from forgeml.errors import ConfigError


class HFDecoder:
    """Generation adapter (`forgeml.generation.sampling.Decoder`) for a transformers causal LM.

    Args:
        model: an `AutoModelForCausalLM` model, or its peft wrapper.
        module: the nn.Module put in eval mode during generation (forgeml's `Pretrained`
            around `model`); None: `model`.
        context_length: the most positions; None: the config's max_position_embeddings /
            n_positions.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        module: nn.Module | None = None,
        context_length: int | None = None,
    ) -> None:
        self.model = model
        self.module = module if module is not None else model
        get_base = getattr(model, "get_base_model", None)
        base = get_base() if get_base is not None else model
        self.context_length = int(context_length or positions_of(base.config))
        if self.context_length < 2:
            raise ConfigError(
                f"{type(base).__name__}: its config names no max_position_embeddings or "
                "n_positions, so the context length to generate in is unknown"
            )
        params = inspect.signature(base.forward).parameters
        # transformers 5 renamed past_key_values to cache (and the output field with it).
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        # Only the last position's logits: the (T, V) lm_head matmul of the prompt is skipped.
        self.keep_arg = next(
            (name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None
        )

    def begin(
        self, seq: Tensor, real: Tensor | None, positions: Tensor | None, use_cache: bool
    ) -> None:
        self.seq, self.real, self.positions = seq, real, positions
        self.use_cache = use_cache
        self.cache: Any = None  # the model's own Cache object, made by the first forward

    def logits(self, start: int, end: int) -> Tensor:
        first = start if self.use_cache else 0  # without a cache: recompute [0, end)
        kwargs: dict[str, Any] = {"use_cache": self.use_cache}
        if self.use_cache and self.cache is not None:
            kwargs[self.cache_arg] = self.cache
        if self.keep_arg is not None:
            kwargs[self.keep_arg] = 1
        if self.real is not None:
            kwargs["attention_mask"] = self.real[:, :end].long()  # (B, end): cache + new slots
            kwargs["position_ids"] = self.positions[:, first:end]  # (B, end - first)
        out = self.model(input_ids=self.seq[:, first:end], **kwargs)
        if self.use_cache:
            self.cache = out.get(self.cache_arg)
        return out.logits[:, -1:]  # (B, 1, V)


def positions_of(config: Any) -> int:
    """The positions a transformers config gives its model (0 when it names none)."""
    return int(
        getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0) or 0
    )
