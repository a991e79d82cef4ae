"""The explicit CPU attention of short contexts computes what scaled_dot_product_attention does,
forward and backward, and the model switches to SDPA past the measured lengths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgeml.models import gpt
from forgeml.models.gpt import GPT, GPTConfig


@pytest.mark.parametrize("t", [1, 7, 64])
def test_explicit_attention_matches_sdpa_forward_and_backward(t: int) -> None:
    gen = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(3, 2, t, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    for tensor in (q, k, v):
        tensor.requires_grad_(True)
    grad = torch.randn(3, 2, t, 16, generator=gen, dtype=torch.float64)
    ours = gpt._explicit_causal_attention(q, k, v, 0.0)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bf16_explicit_attention_stays_close_to_fp32() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 4, 64, 32, generator=gen) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = gpt._explicit_causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.0)
    assert (ours.float() - ref).abs().max() < 0.05  # bf16 has 8 bits of mantissa


def test_model_uses_sdpa_past_the_explicit_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=256, vocab_size=11)).eval()
    tokens = torch.randint(0, 11, (2, 200))
    calls: list[int] = []
    real = gpt._explicit_causal_attention
    monkeypatch.setattr(
        gpt, "_explicit_causal_attention", lambda q, *a: calls.append(q.shape[-2]) or real(q, *a)
    )
    with torch.no_grad():
        short = model({"tokens": tokens[:, :100]})  # fp32: explicit up to 128 positions
        long = model({"tokens": tokens})  # 200 > 128: SDPA
    assert calls == [100]
    # Both paths give the same logits where they overlap (causal: a prefix sees only itself).
    torch.testing.assert_close(short, long[:, :100], rtol=1e-5, atol=1e-5)
