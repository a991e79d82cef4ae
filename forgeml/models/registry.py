"""Every model family by name: its config class and its builder, and nothing else builds models.

A family is built for the encoding its task produced: an `InputSpec` (table columns, text,
images, sequences; forgeml/schema.py) or a `TokenSpec` (a language model's vocabulary). A family
whose run directory keeps files of its own (a pretrained checkpoint's config.json and tokenizer
in RUN/pretrained/) also has a `rebuild`, which a finished run uses instead of `build`, so that
predicting never reads the paths in config.yaml again.

Adding a family: one file with its config class (a `name` Literal) and a builder, then one entry
in FAMILIES. The `model:` section of a config is the union of the config classes, chosen by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field
from torch import Tensor, nn

from forgeml.errors import ConfigError, ForgeError
from forgeml.models.cnn import CNNConfig, build_cnn
from forgeml.models.cnn1d import build_cnn1d
from forgeml.models.gpt import GPTConfig, build_gpt
from forgeml.models.mlp import MLPConfig, build_mlp
from forgeml.models.pretrained import PretrainedConfig, build_pretrained, rebuild_pretrained
from forgeml.models.rnn import RNNConfig, build_rnn
from forgeml.models.transformer import TransformerConfig, build_transformer
from forgeml.schema import InputSpec, TokenSpec

Spec = InputSpec | TokenSpec


def _build_any_cnn(cfg: CNNConfig, spec: InputSpec) -> nn.Module:
    """`name: cnn` is 2-D over an image, 1-D over text/sequence columns (cnn1d.py)."""
    if spec.image_shape is not None and spec.sequences:
        raise ConfigError(
            "model.name=cnn takes an image column or text/sequence columns, not both; "
            "drop one kind with data.exclude"
        )
    if spec.image_shape is None and spec.sequences:
        return build_cnn1d(cfg, spec)
    return build_cnn(cfg, spec)


@dataclass(frozen=True)
class Family:
    config: type[BaseModel]  # the `model:` section of this family (its `name` Literal picks it)
    build: Callable[[Any, Any], nn.Module]  # (config, spec) -> a fresh module
    # (config, spec, run directory) -> the module of a finished run (weights are loaded next)
    rebuild: Callable[[Any, Any, Path], nn.Module] | None = None


FAMILIES: dict[str, Family] = {
    "mlp": Family(MLPConfig, build_mlp),
    "cnn": Family(CNNConfig, _build_any_cnn),
    "rnn": Family(RNNConfig, build_rnn),
    "transformer": Family(TransformerConfig, build_transformer),
    "gpt": Family(GPTConfig, build_gpt),
    "pretrained": Family(PretrainedConfig, build_pretrained, rebuild_pretrained),
}

# The `model:` section of a config; its `name` picks the family.
ModelConfig = Annotated[
    Union[tuple(family.config for family in FAMILIES.values())],  # noqa: UP007 (built at runtime)
    Field(discriminator="name"),
]


def build_model(cfg: Any, spec: Spec, *, run_dir: str | Path | None = None) -> nn.Module:
    """Build the model named by `cfg.name` for the encoding in `spec`.

    `run_dir`: rebuilding the model of this finished run (before loading its weights): a family
    with a `rebuild` then reads the files the run keeps instead of its source.

    Raises:
        ConfigError: unknown model name, or a model that does not fit the data.
    """
    family = FAMILIES.get(cfg.name)
    if family is None:
        raise ConfigError(
            f"unknown model.name {cfg.name!r}; expected one of {', '.join(sorted(FAMILIES))}"
        )
    if run_dir is not None and family.rebuild is not None:
        return family.rebuild(cfg, spec, Path(run_dir))
    return family.build(cfg, spec)


def is_generative(cfg: Any) -> bool:
    """Whether the model of `cfg` is a language model (reads and predicts tokens)."""
    return bool(getattr(cfg, "generative", False))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def context_length(model: nn.Module) -> int:
    """The most positions a language model takes (GPT's block_size, a checkpoint's positions)."""
    config = getattr(model, "config", None)
    size = getattr(config, "block_size", None) or getattr(model, "context_length", None)
    if size is None:
        raise ConfigError(f"cannot tell the context length of {type(model).__name__}")
    return int(size)


class UserModule(nn.Module):
    """Adapts a user's nn.Module that takes one tensor to the dict-batch interface.

    The user's parameters are saved as `module.<name>` in the state_dict.

    Args:
        module: takes one tensor, e.g. (B, C, H, W), and returns (B, out_dim).
        input_key: which batch entry to pass ("numeric", "category" or "image"); None: the only
            entry of the batch.
    """

    def __init__(self, module: nn.Module, input_key: str | None = None) -> None:
        super().__init__()
        self.module = module
        self.input_key = input_key

    @classmethod
    def wrap(cls, module: nn.Module) -> UserModule:
        """`module` adapted, or itself when it already is a UserModule."""
        return module if isinstance(module, UserModule) else cls(module)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        key = self.input_key
        if key is None:
            if len(inputs) != 1:
                raise ForgeError(
                    f"the batch has inputs {sorted(inputs)}, but the user module takes one "
                    "tensor; pass input_key=<one of them> to UserModule"
                )
            (key,) = inputs
        elif key not in inputs:
            raise ForgeError(
                f"UserModule input_key={key!r} is not in the batch, which has {sorted(inputs)}; "
                "pass one of those as input_key"
            )
        return self.module(inputs[key])
