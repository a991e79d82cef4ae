"""Hugging Face GPT-2 <-> our `gpt`: the same weights under the other's names.

    model = from_hf_gpt2(GPT2LMHeadModel.from_pretrained(DIR))   # HF -> ours
    state, config = to_hf_gpt2(model)                            # ours -> a GPT2LMHeadModel's

A GPT-2 checkpoint imports when our GPT can represent it (learned positions, biases, gelu or
gelu_tanh); transformers is needed only to build the exported `GPT2Config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.models.gpt import GPT, GPTConfig

# (GPT-2 name, our name) of each layer's weights, and which are HF Conv1D (transposed) weights.
HF_LAYER_NAMES = (
    ("ln_1", "ln_1"),
    ("attn.c_attn", "attn.qkv"),
    ("attn.c_proj", "attn.proj"),
    ("ln_2", "ln_2"),
    ("mlp.c_fc", "mlp.fc"),
    ("mlp.c_proj", "mlp.proj"),
)


HF_CONV1D = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}


HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def gpt_config_from_hf(config: Any) -> GPTConfig:
    """The GPTConfig of a `transformers.GPT2Config`.

    Raises:
        ConfigError: a GPT-2 option this model does not implement.
    """
    activation = HF_ACTIVATIONS.get(config.activation_function)
    unsupported = [
        f"{key}={value!r}"
        for key, value, ok in (
            ("activation_function", config.activation_function, activation is not None),
            ("n_inner", config.n_inner, config.n_inner in (None, 4 * config.n_embd)),
            ("layer_norm_epsilon", config.layer_norm_epsilon, config.layer_norm_epsilon == 1e-5),
            ("scale_attn_weights", config.scale_attn_weights, config.scale_attn_weights),
            (
                "scale_attn_by_inverse_layer_idx",
                config.scale_attn_by_inverse_layer_idx,
                not config.scale_attn_by_inverse_layer_idx,
            ),
        )
        if not ok
    ]
    if unsupported:
        raise ConfigError(
            f"this GPT-2 checkpoint has {', '.join(unsupported)}, which model.name=gpt does not "
            "support (expected gelu_new/gelu activation, n_inner=4*n_embd, layer_norm_epsilon "
            "1e-5, plain 1/sqrt(d) attention scaling)"
        )
    return GPTConfig(
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        block_size=config.n_positions,
        dropout=config.resid_pdrop,
        bias=True,
        tie_embeddings=config.tie_word_embeddings,
        positions="learned",
        activation=activation,
        vocab_size=config.vocab_size,
    )


def from_hf_gpt2(source: nn.Module | Mapping[str, Tensor], config: Any = None) -> GPT:
    """A GPT with the weights of a Hugging Face GPT-2 model or state_dict.

    Args:
        source: a `GPT2LMHeadModel` / `GPT2Model`, or its state_dict (keys with or without
            the `transformer.` prefix).
        config: the `transformers.GPT2Config`; None: `source.config`.

    Raises:
        ConfigError: a GPT-2 variant this model cannot represent.
    """
    if config is None:
        config = getattr(source, "config", None)
        if config is None:
            raise ConfigError("from_hf_gpt2 got a state_dict; pass its GPT2Config as config")
    state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    cfg = gpt_config_from_hf(config)
    model = GPT(cfg)

    def get(key: str) -> Tensor:
        for name in (f"transformer.{key}", key):
            if name in state:
                return state[name]
        raise ConfigError(f"the GPT-2 state_dict has no {key!r}; expected a GPT2LMHeadModel")

    # HF's Conv1D stores weights (in, out); nn.Linear stores (out, in): transpose.
    ours: dict[str, Tensor] = {"wte.weight": get("wte.weight"), "wpe.weight": get("wpe.weight")}
    for i in range(cfg.n_layer):
        hf, me = f"h.{i}.", f"blocks.{i}."
        for a, b in HF_LAYER_NAMES:
            weight = get(hf + a + ".weight")
            ours[me + b + ".weight"] = weight.t() if a in HF_CONV1D else weight
            ours[me + b + ".bias"] = get(hf + a + ".bias")
    ours["ln_f.weight"], ours["ln_f.bias"] = get("ln_f.weight"), get("ln_f.bias")
    if cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["wte.weight"]
    elif "lm_head.weight" in state:
        ours["lm_head.weight"] = state["lm_head.weight"]
    else:
        raise ConfigError("the GPT-2 config unties the embeddings but has no lm_head.weight")
    with torch.no_grad():
        model.load_state_dict(ours, strict=True)
    return model


def to_hf_gpt2(model: GPT) -> tuple[dict[str, Tensor], Any]:
    """This model's weights as a `GPT2LMHeadModel` state_dict, and its `GPT2Config`.

    Raises:
        ConfigError: the model uses something GPT-2 does not have (rotary positions, no
            biases).
    """
    from transformers import GPT2Config  # the optional `hf` extra

    cfg = model.config
    if cfg.positions != "learned" or not cfg.bias:
        raise ConfigError(
            f"only positions=learned and bias=true export to GPT-2, but this model has "
            f"positions={cfg.positions}, bias={str(cfg.bias).lower()}"
        )
    hf_config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=cfg.tie_embeddings,
        # GPT-2's default 50256 is outside a smaller vocabulary; the caller sets its own.
        bos_token_id=None,
        eos_token_id=None,
    )
    mine = model.state_dict()
    state = {
        "transformer.wte.weight": mine["wte.weight"],
        "transformer.wpe.weight": mine["wpe.weight"],
    }
    for i in range(cfg.n_layer):
        hf, me = f"transformer.h.{i}.", f"blocks.{i}."
        for a, b in HF_LAYER_NAMES:
            weight = mine[me + b + ".weight"]
            state[hf + a + ".weight"] = weight.t() if a in HF_CONV1D else weight
            state[hf + a + ".bias"] = mine[me + b + ".bias"]
    state["transformer.ln_f.weight"] = mine["ln_f.weight"]
    state["transformer.ln_f.bias"] = mine["ln_f.bias"]
    state["lm_head.weight"] = mine["lm_head.weight"]
    # Copies: safetensors wants contiguous tensors, and the export must not alias our weights.
    return {k: v.detach().clone().contiguous() for k, v in state.items()}, hf_config
