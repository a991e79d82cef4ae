"""Our `gpt` and Hugging Face GPT-2, both ways.

tests/models/test_gpt.py checks import logits against `GPT2LMHeadModel` and export through
save_pretrained; this adds the full round trip (HF -> ours -> HF gives back every tensor and the
config), untied embeddings, full-context inputs, and agreement with the same checkpoint loaded
as `model.name: pretrained, head: causal_lm`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may download

transformers = pytest.importorskip("transformers")

from forgeml.models.gpt_hf import from_hf_gpt2, to_hf_gpt2  # noqa: E402

VOCAB, POSITIONS = 300, 64


def random_gpt2(tie: bool = True) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=64,
        n_positions=POSITIONS,
        vocab_size=VOCAB,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    if not tie:  # a distinct head, so a mix-up with the embedding shows in the logits
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_logits_match_gpt2_over_the_whole_context(tie: bool) -> None:
    hf = random_gpt2(tie)
    ours = from_hf_gpt2(hf).eval()
    assert ours.config.tie_embeddings == tie
    idx = torch.randint(0, VOCAB, (3, POSITIONS), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_hf_to_ours_to_hf_gives_back_every_tensor(tie: bool) -> None:
    hf = random_gpt2(tie)
    state, config = to_hf_gpt2(from_hf_gpt2(hf))
    original = hf.state_dict()
    assert set(state) <= set(original)
    # Anything the export leaves out must be what GPT2LMHeadModel ties or rebuilds itself.
    for key in set(original) - set(state):
        assert key == "lm_head.weight" and tie, key
    for key, tensor in state.items():
        assert torch.equal(tensor, original[key]), key
    for field in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        assert getattr(config, field) == getattr(hf.config, field), field
    assert config.tie_word_embeddings == tie
    back = transformers.GPT2LMHeadModel(config).eval()
    missing, unexpected = back.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    idx = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, hf(idx).logits)


def test_a_saved_gpt2_directory_loads_the_same_both_ways(tmp_path: Path) -> None:
    """The same save_pretrained directory as our `gpt` and as a pretrained causal LM."""
    from forgeml.models.pretrained import PretrainedConfig
    from forgeml.models.registry import build_model

    hf = random_gpt2()
    hf.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ours = from_hf_gpt2(loaded).eval()
    wrapped = build_model(PretrainedConfig(path=str(tmp_path), head="causal_lm"), None).eval()
    idx = torch.randint(0, VOCAB, (2, 33))
    with torch.no_grad():
        expected = hf(idx).logits
        assert (ours(idx) - expected).abs().max() <= 1e-4
        assert (wrapped({"tokens": idx}) - expected).abs().max() <= 1e-4
