"""Models by name: the config union, the builders, and an adapter for bring-your-own modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from torch import Tensor, nn

from forgeml.errors import ConfigError, ForgeError
from forgeml.models.cnn import CNNConfig, build_cnn
from forgeml.models.gpt import GPTConfig
from forgeml.models.mlp import MLPConfig, build_mlp
from forgeml.models.pretrained import PretrainedConfig, build_pretrained, rebuild_pretrained
from forgeml.models.rnn import RNNConfig, build_rnn
from forgeml.models.transformer import TransformerConfig, build_transformer
from forgeml.schema import InputSpec

# The `model:` section of a config; its `name` picks the family.
ModelConfig = Annotated[
    MLPConfig | CNNConfig | RNNConfig | TransformerConfig | GPTConfig | PretrainedConfig,
    Field(discriminator="name"),
]

MODELS: dict[str, Callable[[Any, InputSpec], nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "rnn": build_rnn,
    "transformer": build_transformer,
    "pretrained": build_pretrained,
}

# Models whose run directory keeps files of their own (a pretrained checkpoint's config.json and
# tokenizer in RUN/pretrained/): rebuilt from those, never from the paths in config.yaml.
REBUILDERS: dict[str, Callable[[Any, InputSpec | None, Path], nn.Module]] = {
    "pretrained": rebuild_pretrained,
}


def build_model(
    cfg: Any, spec: InputSpec | None, *, run_dir: str | Path | None = None
) -> nn.Module:
    """Build the model named by `cfg.name` for the inputs and output width in `spec`.

    `run_dir`: rebuilding the model of this finished run (before loading its weights); models
    in REBUILDERS then read the files the run keeps instead of their source.

    Raises:
        ConfigError: unknown model name, or a model that does not fit the data.
    """
    if run_dir is not None and cfg.name in REBUILDERS:
        return REBUILDERS[cfg.name](cfg, spec, Path(run_dir))
    builder = MODELS.get(cfg.name)
    if builder is None:
        raise ConfigError(
            f"unknown model.name {cfg.name!r}; expected one of {', '.join(sorted(MODELS))}"
        )
    return builder(cfg, spec)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
