"""Decoders: a causal LM as the sampling loop (sampling.py) drives it, with its own KV cache.

`GPTDecoder` runs our `gpt` against its preallocated `KVCache`. `HFDecoder` runs a Hugging Face
causal LM's own forward against its own cache (`past_key_values`, named `cache` from
transformers 5):

    prefill:  input_ids (B, W)  attention_mask (B, W)      position_ids (B, W)  -> logits, cache
    step:     input_ids (B, 1)  attention_mask (B, W + s)  position_ids (B, 1)  + cache -> ...

attention_mask and position_ids are passed only for left-padded batches (0 = a padding slot;
positions count each row's real tokens), exactly what `transformers`' `generate` does with
left padding; an unpadded batch takes the model's defaults. peft models (unmerged LoRA) work
alike: their forward passes these arguments through to the base model.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.models.gpt import GPT, KVCache
from forgeml.models.pretrained import Pretrained


class HFDecoder:
    """Generation adapter (`Decoder`) for a transformers causal LM.

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


@runtime_checkable
class Decoder(Protocol):
    """A causal LM as the sampling loop drives it: its context and a KV cache it keeps.

    The loop owns one token buffer per generation, `seq` (B, S) int64 with S = prompt width +
    max_new_tokens: left-padded prompts, then one slot per new token, written in place. `begin`
    hands it over; each `logits(start, end)` feeds slots [start, end) and returns the last
    position's logits (B, 1, V). With a cache, calls cover consecutive ranges (the prefill
    [0, width), then one slot at a time); without, the decoder recomputes slots [0, end).
    """

    module: nn.Module  # put in eval mode for the generation, its mode restored after
    context_length: int  # the most positions (prompt + new tokens) the model attends over

    def begin(
        self, seq: Tensor, real: Tensor | None, positions: Tensor | None, use_cache: bool
    ) -> None:
        """Start a generation over `seq` (B, S). Padded batches also pass `real` (B, S) bool
        (False = a padding slot) and `positions` (B, S) int64 (each slot's count of real tokens
        before it); unpadded ones pass None for both."""
        ...

    def logits(self, start: int, end: int) -> Tensor:
        """(B, 1, V) logits of slot end - 1 after feeding slots [start, end)."""
        ...


class GPTDecoder:
    """Our `GPT` with its preallocated `KVCache` (forgeml/models/gpt.py)."""

    def __init__(self, model: GPT) -> None:
        self.module = self.model = model
        self.context_length = int(model.config.block_size)

    def begin(
        self, seq: Tensor, real: Tensor | None, positions: Tensor | None, use_cache: bool
    ) -> None:
        self.seq, self.real, self.positions = seq, real, positions
        self.cache: KVCache | None = None
        if use_cache:
            self.cache = self.model.new_cache(seq.shape[0], seq.shape[1], padded=real is not None)
            if real is not None:
                self.cache.key_mask.copy_(real)  # padded prompt slots are never attended

    def logits(self, start: int, end: int) -> Tensor:
        model, seq, positions = self.model, self.seq, self.positions
        if self.cache is not None:
            step = None if positions is None else positions[:, start:end]
            return model(seq[:, start:end], self.cache, positions=step, last_only=True)
        if positions is None:
            return model(seq[:, :end], last_only=True)  # plain causal forward, nothing kept
        # Padded rows need the key mask: a throwaway cache, filled by one forward over it all.
        scratch = model.new_cache(seq.shape[0], end, padded=True)
        scratch.key_mask.copy_(self.real[:, :end])
        return model(seq[:, :end], scratch, positions=positions[:, :end], last_only=True)


def as_decoder(model: nn.Module | Decoder) -> Decoder:
    """The Decoder that drives `model`: a `GPT`, a module with a `decoder()` method (a pretrained
    causal LM, forgeml/models/pretrained.py), a Hugging Face causal LM, or a Decoder itself.

    Raises:
        ConfigError: `model` is none of these (e.g. a text classifier).
    """
    if isinstance(model, Decoder):
        return model
    if isinstance(model, GPT):
        return GPTDecoder(model)
    if isinstance(model, Pretrained):
        if model.head != "causal_lm":
            raise ConfigError(
                f"model.head={model.head} does not generate text; generation needs a "
                "pretrained model with head: causal_lm"
            )
        return HFDecoder(model.model, module=model, context_length=model.context_length)
    if callable(getattr(model, "get_output_embeddings", None)) and hasattr(model, "config"):
        return HFDecoder(model)
    raise ConfigError(
        f"cannot generate with {type(model).__name__}: expected a language model (model.name=gpt "
        "or a pretrained model with head: causal_lm)"
    )
