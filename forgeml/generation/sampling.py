"""Token-level generation: KV cache, sampling, batched prompts, stop rules, streaming.

Everything here works on token ids; text (tokenizers, stop strings, the CLI) sits on top. One
sampling loop drives every causal LM through a small `Decoder` adapter that owns the model's KV
cache (decoders.py): `GPTDecoder` for our `gpt` (its preallocated `KVCache`), `HFDecoder` for a
Hugging Face causal LM (its own cache, fed with attention_mask and position_ids).
`generate(model, ...)` accepts either model, or a Decoder.

One step of the loop, for B rows at once:

    logits (B, V) of the last position
      -> repetition penalty -> temperature (0: greedy argmax) -> top-k -> top-p -> sample
      -> one host sync (`tolist`) to check eos / stop sequences / the caller's stop callback
      -> the new tokens (B, 1) go through the model against the KV cache -> next logits

The prompt is run once (prefill) into the KV cache; each later step feeds one token per row and
computes the lm_head for the last position only.

Prompts of different lengths are left-padded: padded slots are masked out of attention and each
row's positions count only its real tokens, so a row generates the same tokens alone or in any
batch.

The context never exceeds the model's context length (GPT: `block_size`): a prompt longer than
`context - max_new_tokens` keeps its last tokens (cut from the left) and the number cut is
reported in `Generation.prompt_dropped`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.generation.decoders import Decoder, as_decoder

FinishReason = Literal["eos", "stop", "length"]


@dataclass
class Generation:
    """The result of `generate` (or of a finished `TokenStream`).

    Attributes:
        tokens: per row, the new tokens only (not the prompt); a final eos token or a matched
            stop sequence is not included.
        finish_reasons: per row, "eos", "stop" (a stop sequence or the `stop` callback) or
            "length" (max_new_tokens reached).
        prompt_dropped: per row, how many prompt tokens were cut from the left to fit the
            context (0 when the prompt fit).
    """

    tokens: list[list[int]]
    finish_reasons: list[FinishReason]
    prompt_dropped: list[int]


@dataclass(frozen=True)
class SamplingParams:
    """How each next token is picked and how many: the one set of settings every generation
    path takes (`generate`, `LanguageModel`, `forgeml generate`, the OpenAI-compatible server).

    Attributes:
        max_new_tokens: the most tokens generated per row; at most the context length - 1.
        temperature: divides the logits; 0 picks the most likely token (greedy).
        top_k: sample only among the k most likely tokens.
        top_p: sample only among the smallest set of most likely tokens whose probabilities sum
            to at least top_p (nucleus sampling).
        repetition_penalty: CTRL-style penalty on tokens already in the prompt or the output:
            positive logits are divided by it, negative ones multiplied; 1.0 is off.
        seed: seeds the sampling generator, so the same call gives the same tokens; None: random.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def of(cls, params: SamplingParams | None, settings: dict[str, Any]) -> SamplingParams:
        """`params` (or the defaults) with the keyword `settings` on top."""
        return replace(params or cls(), **settings)

    def check(self, context: int) -> None:
        """Raises ConfigError for a setting out of range for a model of `context` positions."""
        if not 1 <= self.max_new_tokens < context:
            raise ConfigError(
                f"max_new_tokens={self.max_new_tokens} must be between 1 and the context - 1 = "
                f"{context - 1} (the prompt needs at least one of the model's {context} "
                "positions)"
            )
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be >= 1, or unset to turn it off")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1], or unset to turn it off")
        if self.repetition_penalty <= 0:
            raise ConfigError(
                f"repetition_penalty={self.repetition_penalty} must be > 0 (1.0 is off, > 1 "
                "penalises)"
            )


def generate(
    model: nn.Module | Decoder,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    **options: Any,
) -> Generation:
    """Continue each prompt by up to `params.max_new_tokens` tokens.

    Args:
        model: a GPT, a pretrained causal LM (forgeml's `Pretrained` or the transformers
            model), or a `Decoder`; run in eval mode for the call (its mode is restored
            afterwards).
        prompts: token ids per row, any lengths (at least one token each).
        params: the sampling settings; any of its fields may also be given as keywords
            (`generate(model, prompts, max_new_tokens=20, temperature=0)`).
        options: `SamplingParams` fields, and `stream`'s keywords: eos_token_id,
            stop_sequences, stop, use_cache.

    Returns:
        The new tokens, finish reason and prompt truncation of every row.

    Raises:
        ConfigError: a bad sampling setting or an empty prompt.
    """
    run = stream(model, prompts, params, **options)
    for _ in run:
        pass
    return run.result()


def stream(
    model: nn.Module | Decoder,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    stop_sequences: Sequence[Sequence[int]] = (),
    stop: Callable[[int, list[int]], bool] | None = None,
    use_cache: bool = True,
    **settings: Any,
) -> TokenStream:
    """Like `generate`, but as an iterator over steps.

    Each step yields one list per row of the tokens that became final at that step (usually
    one; none after the row finished; several when tokens held back as a possible start of a
    stop sequence turn out not to be one). Concatenated, they equal `result().tokens`.
    `prompt_dropped` is known before iterating; `result()` after.

    Args:
        eos_token_id: token id(s) that end a row.
        stop_sequences: token-id sequences that end a row when its output ends with one; the
            sequence is removed from the output (and never streamed).
        stop: called as `stop(row, tokens_so_far)` after each new token of an unfinished row;
            True ends the row, keeping its tokens (text-level stop strings go here).
        use_cache: False recomputes the whole sequence every step (for comparisons only).
        settings: `SamplingParams` fields, over `params`.

    Raises:
        ConfigError: as `generate`, when called (not when iterated).
    """
    return TokenStream(
        model,
        prompts,
        SamplingParams.of(params, settings),
        eos_token_id=eos_token_id,
        stop_sequences=stop_sequences,
        stop=stop,
        use_cache=use_cache,
    )


class TokenStream:
    """Iterator over generation steps: per step, a list per row of newly final token ids.

    Made by `stream`; iterate it once. `prompt_dropped` is set on creation, `result()` is
    available once the iteration ends.
    """

    def __init__(
        self,
        model: nn.Module | Decoder,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        eos_token_id: int | Sequence[int] | None,
        stop_sequences: Sequence[Sequence[int]],
        stop: Callable[[int, list[int]], bool] | None,
        use_cache: bool,
    ) -> None:
        self.decoder = as_decoder(model)
        context = self.decoder.context_length
        params.check(context)
        if len(prompts) == 0:
            raise ConfigError("generate got no prompts; pass at least one list of token ids")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ConfigError(
                    f"prompt {i} is empty; the model needs at least one token to continue "
                    "(e.g. the tokenizer's BOS/EOS token)"
                )
        if any(len(s) == 0 for s in stop_sequences):
            raise ConfigError("stop_sequences holds an empty sequence; remove it")
        # Room for every requested token: the prompt keeps its last context - max_new_tokens.
        keep = context - params.max_new_tokens
        self.prompts = [list(p[-keep:]) for p in prompts]
        self.prompt_dropped = [max(0, len(p) - keep) for p in prompts]
        self.params = params
        if eos_token_id is None:
            self.eos: set[int] = set()
        elif isinstance(eos_token_id, int):
            self.eos = {eos_token_id}
        else:
            self.eos = set(eos_token_id)
        self.stop_sequences = [list(s) for s in stop_sequences]
        self.stop = stop
        self.use_cache = use_cache
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.finish_reasons: list[FinishReason | None] = [None] * len(prompts)
        self._steps = self._run()

    def __iter__(self) -> Iterator[list[list[int]]]:
        return self._steps

    def result(self) -> Generation:
        """The finished generation.

        Raises:
            RuntimeError: the stream has not been iterated to its end.
        """
        if any(reason is None for reason in self.finish_reasons):
            raise RuntimeError("the TokenStream has not finished; iterate it to the end first")
        return Generation(
            tokens=[list(t) for t in self.tokens],
            finish_reasons=list(self.finish_reasons),  # type: ignore[arg-type]
            prompt_dropped=list(self.prompt_dropped),
        )

    def _run(self) -> Iterator[list[list[int]]]:
        model = self.decoder.module
        was_training = model.training
        model.eval()
        try:
            yield from self._steps_in_eval()
        finally:
            model.train(was_training)

    def _steps_in_eval(self) -> Iterator[list[list[int]]]:
        decoder, prompts, params = self.decoder, self.prompts, self.params
        max_new = params.max_new_tokens
        device = next(decoder.module.parameters()).device
        lengths = [len(p) for p in prompts]
        b, width = len(prompts), max(lengths)
        padded = min(lengths) < width
        # inference_mode only around the tensor work: a context held across `yield` would
        # leak into the caller's code between steps.
        with torch.inference_mode():
            # Slots 0..width-1 hold the left-padded prompts, then one slot per new token.
            seq = torch.zeros(b, width + max_new, dtype=torch.long, device=device)
            real = torch.ones(b, width + max_new, dtype=torch.bool, device=device)
            for i, prompt in enumerate(prompts):
                seq[i, width - len(prompt) : width] = torch.tensor(prompt, device=device)
                real[i, : width - len(prompt)] = False
            # Position of each slot within its row: the count of real tokens before it (padded
            # slots get 0; they are never attended). Unpadded rows use the model's default.
            slot_positions = (real.cumsum(dim=1) - 1).clamp(min=0) if padded else None
            generator = torch.Generator(device=device)
            if params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(params.seed)
            decoder.begin(seq, real if padded else None, slot_positions, self.use_cache)
            logits = decoder.logits(0, width)  # (B, 1, V)
            seen = None
            if params.repetition_penalty != 1.0:
                # (B, V): V from the logits, which may be wider than the tokenizer's ids.
                seen = torch.zeros(b, logits.shape[-1], dtype=torch.bool, device=device)
                for i, prompt in enumerate(prompts):
                    seen[i, prompt] = True

        emitted = [0] * b  # per row, how many of self.tokens[i] were yielded
        for step in range(max_new):
            with torch.inference_mode():
                scores = logits[:, -1].float()  # (B, V)
                if seen is not None:
                    scores = apply_repetition_penalty(scores, seen, params.repetition_penalty)
                new = sample(scores, params.temperature, params.top_k, params.top_p, generator)
                if seen is not None:
                    seen.scatter_(1, new[:, None], True)
            ids = new.tolist()  # the one host sync per step
            out: list[list[int]] = []
            for i, token in enumerate(ids):
                if self.finish_reasons[i] is not None:
                    out.append([])
                    continue
                final = self._accept(i, token, last_step=step == max_new - 1)
                out.append(self.tokens[i][emitted[i] : final])
                emitted[i] = max(emitted[i], final)
            yield out
            if all(reason is not None for reason in self.finish_reasons):
                return
            slot = width + step  # where the new tokens go
            with torch.inference_mode():
                seq[:, slot] = new
                logits = decoder.logits(slot, slot + 1)

    def _accept(self, i: int, token: int, last_step: bool) -> int:
        """Record row i's new token; return how many of its tokens are now final."""
        tokens = self.tokens[i]
        if token in self.eos:
            self.finish_reasons[i] = "eos"
            return len(tokens)
        tokens.append(token)
        for sequence in self.stop_sequences:
            if tokens[-len(sequence) :] == sequence:
                del tokens[-len(sequence) :]
                self.finish_reasons[i] = "stop"
                return len(tokens)
        if self.stop is not None and self.stop(i, list(tokens)):
            self.finish_reasons[i] = "stop"
            return len(tokens)
        if last_step:
            self.finish_reasons[i] = "length"
            return len(tokens)
        # Hold back the longest tail that could still grow into a stop sequence.
        held = 0
        for sequence in self.stop_sequences:
            for n in range(min(len(sequence) - 1, len(tokens)), held, -1):
                if tokens[-n:] == sequence[:n]:
                    held = n
                    break
        return len(tokens) - held


def sample(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token per row from (B, V) float logits: (B,) int64.

    temperature 0 is greedy (argmax); otherwise the logits are divided by the temperature,
    filtered by top-k then top-p, and one token is drawn with `generator`.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """(B, V) logits with all but the k largest per row set to -inf (ties at the k-th kept)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """(B, V) logits keeping, per row, the smallest set of most likely tokens whose
    probabilities sum to at least p; the rest set to -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach p; the most likely one
    # always stays.
    before = probs.cumsum(dim=-1) - probs  # (B, V) mass ranked above each token
    drop_sorted = before >= p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style (Keskar et al. 2019): for tokens in `seen` (B, V) bool, divide positive
    logits by `penalty` and multiply negative ones, so both become less likely (penalty > 1)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)
