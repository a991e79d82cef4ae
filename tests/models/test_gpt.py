"""The gpt family: config checks, forward and cache, initialisation, counts, Hugging Face interop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from forgeml.errors import ConfigError
from forgeml.models.gpt import GPT, GPTConfig, build_gpt
from forgeml.models.gpt_hf import from_hf_gpt2, gpt_config_from_hf, to_hf_gpt2

VOCAB = 50


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    fields = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32} | overrides
    return build_gpt(GPTConfig(**fields), VOCAB).eval()


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- config ---------------------------------------------------------------------------------


def test_config_rejects_heads_that_do_not_divide_n_embd() -> None:
    with pytest.raises(ValidationError, match="multiple of model.n_head"):
        GPTConfig(n_embd=30, n_head=4)


def test_config_rejects_rotary_with_odd_head_dim() -> None:
    with pytest.raises(ValidationError, match="even head dim"):
        GPTConfig(n_embd=12, n_head=4, positions="rotary")


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        GPTConfig(n_layers=2)


def test_build_takes_the_tokenizer_vocab_and_rejects_a_smaller_one() -> None:
    assert build_gpt(GPTConfig(n_layer=1, n_embd=8, n_head=2), 37).config.vocab_size == 37
    assert (
        build_gpt(GPTConfig(n_layer=1, n_embd=8, n_head=2, vocab_size=64), 37).lm_head.out_features
        == 64
    )
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        build_gpt(GPTConfig(vocab_size=10), 37)
    with pytest.raises(ConfigError, match="vocab_size is not set"):
        GPT(GPTConfig())


# --- forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_shapes_dict_batch_and_backward(positions: str, bias: bool) -> None:
    model = tiny(positions=positions, bias=bias, dropout=0.1).train()
    idx = tokens(3, 10)
    logits = model({"tokens": idx})
    assert logits.shape == (3, 10, VOCAB)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    full = model(idx)
    assert torch.allclose(model(idx, last_only=True), full[:, -1:], atol=1e-6)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_later_tokens_do_not_change_earlier_logits(positions: str) -> None:
    model = tiny(positions=positions)
    idx = tokens(2, 12)
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % VOCAB
    assert torch.allclose(model(idx)[:, :8], model(changed)[:, :8], atol=1e-6)
    assert not torch.allclose(model(idx)[:, 8:], model(changed)[:, 8:])


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_chunks_through_the_cache_equal_one_full_forward(positions: str) -> None:
    model = tiny(positions=positions)
    idx = tokens(2, 20)
    cache = model.new_cache(2, 24)
    with torch.inference_mode():
        parts = [model(idx[:, :7], cache), model(idx[:, 7:8], cache), model(idx[:, 8:], cache)]
        full = model(idx)
    assert cache.length == 20
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_positions_past_the_context_are_refused() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="block_size=32"):
        model(tokens(1, 33))
    cache = model.new_cache(1, 8)
    model(tokens(1, 8), cache)
    with pytest.raises(ValueError, match="larger cache"):
        model(tokens(1, 1), cache, positions=torch.tensor([8]))


def test_tied_weights_survive_a_state_dict_round_trip() -> None:
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    copy = tiny(positions="learned")
    torch.nn.init.zeros_(copy.wte.weight)
    copy.load_state_dict(model.state_dict())
    assert copy.lm_head.weight is copy.wte.weight
    idx = tokens(2, 5)
    assert torch.equal(copy(idx), model(idx))


def test_prepare_for_generation_changes_strides_not_values() -> None:
    model = tiny()
    idx = tokens(2, 9)
    before = model(idx)
    model.prepare_for_generation()
    assert model.blocks[0].mlp.fc.weight.stride() == (1, 64)
    assert model.lm_head.weight is model.wte.weight
    assert torch.allclose(model(idx), before, atol=1e-6)
    model.to(torch.bfloat16).prepare_for_generation()
    assert model.blocks[0].mlp.fc.weight.is_contiguous()


# --- initialisation and counts --------------------------------------------------------------


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    model = build_gpt(GPTConfig(n_layer=8, n_head=4, n_embd=128), 500)
    assert abs(model.wte.weight.std().item() - 0.02) < 0.001
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.001
    residual = torch.cat(
        [model.blocks[3].mlp.proj.weight.flatten(), model.blocks[5].attn.proj.weight.flatten()]
    )
    assert abs(residual.std().item() - 0.02 / math.sqrt(16)) < 0.0003
    biases = [
        p for name, p in model.named_parameters() if name.endswith("bias") and "ln" not in name
    ]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


def test_parameter_count_by_hand_tied_once() -> None:
    # V=10, C=8, L=1, H=2, T=4, biases, tied, learned positions:
    # wte 10*8=80, wpe 4*8=32; block: ln_1 16, qkv 8*24+24=216, proj 8*8+8=72, ln_2 16,
    # fc 8*32+32=288, proj 32*8+8=264 -> 872; ln_f 16. Total 1000; without wpe 968.
    model = build_gpt(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4), 10)
    assert model.num_params(non_embedding=False) == 1000
    assert model.num_params() == 968
    untied = build_gpt(
        GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, tie_embeddings=False), 10
    )
    assert untied.num_params(non_embedding=False) == 1080  # + the lm_head's own 10*8
    assert untied.num_params() == 968  # both lookup tables out, the lm_head in


def test_flops_per_token_by_hand() -> None:
    model = build_gpt(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4), 10)
    # 6N + 12*L*H*Q*T = 6*968 + 12*1*2*4*4
    assert model.flops_per_token() == 5808 + 384
    rotary = build_gpt(
        GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, positions="rotary"), 10
    )
    assert rotary.flops_per_token() == 5808 + 384  # no position table to leave out


# --- Hugging Face GPT-2 interop -------------------------------------------------------------


def hf_config(**overrides):
    transformers = pytest.importorskip("transformers")
    fields = {
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 64,
        "n_positions": 128,
        "vocab_size": 300,
        "bos_token_id": None,
        "eos_token_id": None,
    } | overrides
    return transformers.GPT2Config(**fields)


def test_import_from_hf_gpt2_matches_its_logits() -> None:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(hf_config()).eval()
    ours = from_hf_gpt2(hf).eval()
    assert ours.config.activation == "gelu_tanh"
    idx = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() <= 1e-4
    # A bare state_dict with its config gives the same model.
    again = from_hf_gpt2(hf.state_dict(), hf.config).eval()
    assert torch.equal(again(idx), ours(idx))


def test_export_to_hf_gpt2_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = build_gpt(
        GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=128, activation="gelu_tanh"), 300
    ).eval()
    state, config = to_hf_gpt2(ours)
    hf = GPT2LMHeadModel(config)
    hf.load_state_dict(state)
    hf.save_pretrained(tmp_path)
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert (ours(idx) - loaded(idx).logits).abs().max() <= 1e-4


def test_export_refuses_what_gpt2_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="positions=rotary"):
        to_hf_gpt2(tiny(positions="rotary"))


def test_import_refuses_unsupported_gpt2_options() -> None:
    with pytest.raises(ConfigError, match="activation_function='relu'"):
        gpt_config_from_hf(hf_config(activation_function="relu"))
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        gpt_config_from_hf(hf_config(scale_attn_by_inverse_layer_idx=True))
