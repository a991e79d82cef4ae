"""Generation: KV cache against recomputation, batching, sampling filters, stop rules, streaming."""

from __future__ import annotations

import pytest
import torch

from forgeml.errors import ConfigError
from forgeml.generation.sampling import (
    apply_repetition_penalty,
    generate,
    sample,
    stream,
    top_k_filter,
    top_p_filter,
)
from forgeml.models.gpt import GPT, GPTConfig, build_gpt

VOCAB = 40
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [20]]


def tiny(positions: str = "learned", block_size: int = 48) -> GPT:
    torch.manual_seed(0)
    # Untied: a random model with a tied lm_head scores the last token's own embedding highest
    # and greedy repeats it forever, which would make every comparison below trivially pass.
    cfg = GPTConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=block_size,
        positions=positions,
        tie_embeddings=False,
    )
    return build_gpt(cfg, VOCAB).eval()


def greedy_without_cache(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """The reference: a full forward over the whole sequence for every new token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_greedy_equals_recomputing_everything(positions: str) -> None:
    model = tiny(positions)
    for prompt in PROMPTS:
        out = generate(model, [prompt], max_new_tokens=20, temperature=0)
        assert out.tokens == [greedy_without_cache(model, prompt, 20)]
        assert out.finish_reasons == ["length"]
        assert out.prompt_dropped == [0]


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_a_row_generates_the_same_alone_or_in_a_padded_batch(positions: str) -> None:
    model = tiny(positions)
    batch = generate(model, PROMPTS, max_new_tokens=15, temperature=0)
    alone = [generate(model, [p], max_new_tokens=15, temperature=0).tokens[0] for p in PROMPTS]
    assert batch.tokens == alone
    # The comparison path without a cache masks the padding the same way.
    assert (
        generate(model, PROMPTS, max_new_tokens=15, temperature=0, use_cache=False).tokens == alone
    )


def test_top_k_1_is_greedy_and_seeds_reproduce() -> None:
    model = tiny()
    greedy = generate(model, PROMPTS, max_new_tokens=12, temperature=0).tokens
    assert generate(model, PROMPTS, max_new_tokens=12, top_k=1, seed=3).tokens == greedy
    sampled = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    again = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    other = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=8)
    assert sampled.tokens == again.tokens
    assert sampled.tokens != other.tokens


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()

    def kept(p: float) -> list[int]:
        return torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist()

    assert kept(0.4) == [1]  # 0.5 alone reaches 0.4
    assert kept(0.5) == [1]  # ... and exactly 0.5
    assert kept(0.75) == [1, 3]  # 0.5 + 0.3
    assert kept(0.85) == [0, 1, 3]  # + 0.15
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(0.01) == [1]  # the most likely token always stays


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_samples_from_softmax_of_logits_over_t(temperature: float) -> None:
    # 20,000 draws per row: the observed frequencies match softmax(logits / T) to ~0.01, and T
    # visibly changes them (T=0.5 puts 0.86 on the top token, T=1 0.64, T=2 only 0.46).
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20_000, 1)
    drawn = sample(logits, temperature, None, None, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=4).double() / len(drawn)
    expected = torch.softmax(logits[0].double() / temperature, dim=-1)
    assert (freq - expected).abs().max() < 0.015, (freq, expected)


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert torch.isfinite(top_k_filter(logits, 10)).all()


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_repetition_penalty_counts_the_prompt() -> None:
    model = tiny()
    prompt = [5, 6, 7]
    with torch.no_grad():
        unseen = model(torch.tensor([prompt]))[0, -1]
    unseen[prompt] = float("-inf")
    assert unseen.max() > 0.01  # so a huge penalty leaves an unseen token on top
    out = generate(model, [prompt], max_new_tokens=1, temperature=0, repetition_penalty=1e9)
    assert out.tokens == [[int(unseen.argmax())]]


def test_stop_sequence_ends_the_row_and_is_not_returned_or_streamed() -> None:
    model = tiny()
    prompt = [3, 1, 4, 1, 5]
    baseline = generate(model, [prompt], max_new_tokens=20, temperature=0).tokens[0]
    stop = baseline[6:8]
    first = next(i for i in range(len(baseline)) if baseline[i : i + 2] == stop)
    run = stream(model, [prompt], max_new_tokens=20, temperature=0, stop_sequences=[stop, [99]])
    streamed = [token for step in run for token in step[0]]
    result = run.result()
    assert result.tokens == [baseline[:first]]
    assert streamed == baseline[:first]
    assert result.finish_reasons == ["stop"]


def test_stop_callback_ends_the_row_keeping_its_tokens() -> None:
    model = tiny()
    calls: list[int] = []

    def stop(row: int, tokens: list[int]) -> bool:
        calls.append(row)
        return row == 1 and len(tokens) == 4

    out = generate(model, PROMPTS[:2], max_new_tokens=10, temperature=0, stop=stop)
    full = generate(model, PROMPTS[:2], max_new_tokens=10, temperature=0).tokens
    assert out.tokens == [full[0], full[1][:4]]
    assert out.finish_reasons == ["length", "stop"]
    assert calls.count(1) == 4


def test_eos_ends_each_row_on_its_own() -> None:
    model = tiny()
    full = generate(model, PROMPTS, max_new_tokens=16, temperature=0).tokens
    eos = full[0][3]
    out = generate(model, PROMPTS, max_new_tokens=16, temperature=0, eos_token_id=eos)
    for row, tokens in enumerate(full):
        expected = tokens[: tokens.index(eos)] if eos in tokens else tokens
        assert out.tokens[row] == expected
        assert out.finish_reasons[row] == ("eos" if eos in tokens else "length")
    assert out.finish_reasons[0] == "eos"


def test_a_long_prompt_is_cut_from_the_left_and_reported() -> None:
    model = tiny(block_size=32)
    long = [(i * 7) % VOCAB for i in range(30)]
    run = stream(model, [long, [1, 2]], max_new_tokens=8, temperature=0)
    assert run.prompt_dropped == [6, 0]  # 32 - 8 = 24 prompt tokens fit
    for _ in run:
        pass
    out = run.result()
    assert out.prompt_dropped == [6, 0]
    assert out.tokens[0] == greedy_without_cache(model, long[6:], 8)


def test_bad_settings_are_refused() -> None:
    model = tiny(block_size=16)
    with pytest.raises(ConfigError, match="context - 1 = 15"):
        generate(model, [[1]], max_new_tokens=16)
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        generate(model, [[1], []], max_new_tokens=4)
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, [[1]], max_new_tokens=4, top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, [[1]], max_new_tokens=4, temperature=-1)


def test_stream_steps_add_up_to_the_result_and_mode_is_restored() -> None:
    model = tiny().train()
    run = stream(model, PROMPTS, max_new_tokens=6, temperature=0, eos_token_id=0)
    with pytest.raises(RuntimeError, match="not finished"):
        run.result()
    steps = list(run)
    assert len(steps) <= 6 and all(len(step) == len(PROMPTS) for step in steps)
    joined = [[t for step in steps for t in step[row]] for row in range(len(PROMPTS))]
    assert joined == run.result().tokens
    assert model.training
    assert (
        joined
        == generate(model.eval(), PROMPTS, max_new_tokens=6, temperature=0, eos_token_id=0).tokens
    )


def test_a_tiny_char_model_learns_a_pattern_and_greedy_repeats_it() -> None:
    # Its speed against a plain PyTorch GPT: bench/gpt_tiny_train.py.
    text = "forgeml makes models. " * 40
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
    model = build_gpt(cfg, len(chars))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        starts = torch.randint(0, len(ids) - 33, (16,), generator=gen)
        window = torch.stack([ids[s : s + 33] for s in starts])  # (16, 33)
        logits = model({"tokens": window[:, :-1]})
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    prompt = [chars.index(c) for c in "forgeml "]
    out = generate(model.eval(), [prompt], max_new_tokens=24, temperature=0).tokens[0]
    assert "".join(chars[i] for i in out) == "makes models. forgeml ma"
