"""The config tree: YAML in, `a.b=value` overrides, every default filled, unknown keys rejected.

Sections map 1:1 to the constructor arguments of what they build (flat, plain types, strings for
enums). Models are chosen by name from `forgeml.models.registry`, never by import path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from forgeml.data.config import (  # noqa: F401 (re-exported: the config tree's sections)
    ColumnConfig,
    CorpusConfig,
    DataConfig,
    ImageConfig,
    SplitConfig,
    Strict,
)
from forgeml.errors import ConfigError
from forgeml.models.registry import ModelConfig, is_generative


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only
    eps: float = Field(1e-8, gt=0)


class SchedulerConfig(Strict):
    name: Literal["constant", "step", "cosine", "onecycle"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear warmup from 0; used when > 0
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # fraction of all steps; used when warmup_steps=0
    step_epochs: int = Field(10, ge=1)  # step: multiply the lr by gamma every step_epochs epochs
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine: floor as a fraction of the peak lr


class LossConfig(Strict):
    # multiclass; multilabel: 0/1 targets move towards 0.5 (y(1-e) + e/2); binary: ignored
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # None, "auto" (inverse class frequency on the train split) or one weight per class name;
    # multilabel: the BCE pos_weight per label (auto: negatives / positives of that label).
    class_weights: Literal["auto"] | dict[str, float] | None = None
    regression: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)


class EarlyStoppingConfig(Strict):
    monitor: str = "val_loss"  # "val_<metric>" or "train_loss"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for loss/errors, max otherwise
    patience: int = Field(5, ge=1)  # evaluations without improvement before stopping
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True


class CheckpointConfig(Strict):
    """Resumable training state under runs/NAME/checkpoints/, written atomically."""

    every_steps: int | None = Field(None, ge=1)  # also mid-epoch, after an optimizer step
    every_epochs: int | None = Field(1, ge=1)  # at the end of every N-th epoch
    keep_last: int = Field(2, ge=2)  # an old checkpoint goes only after a new one is committed
    keep_best: bool = True  # keep the checkpoint with the best early-stopping monitor value


class TrainConfig(Strict):
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)  # None: 4 x batch_size
    max_epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; stops before max_epochs if hit
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    grad_clip: float | None = Field(None, gt=0)  # max global L2 norm
    grad_accum_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    deterministic: bool = False  # torch.use_deterministic_algorithms
    early_stopping: EarlyStoppingConfig | None = None
    stop_at_loss: float | None = None  # stop once the epoch's mean train loss is <= this
    log_every_steps: int = Field(50, ge=1)
    # Evaluate on the validation split every N optimizer steps as well as at each epoch end
    # (language models: one epoch is a pass over every block of the corpus). Early stopping
    # looks at epoch-end evaluations only.
    eval_every_steps: int | None = Field(None, ge=1)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    # A non-finite loss or gradient: stop (naming the step and the last good checkpoint) or
    # skip the batch, failing once more than max_skipped_fraction of the steps were skipped;
    # ignore: no check at all, as in a plain PyTorch loop (saves one gradient-norm pass a step).
    on_nonfinite: Literal["stop", "skip", "ignore"] = "stop"
    max_skipped_fraction: float = Field(0.01, ge=0, le=1)
    # Under torchrun (N > 1 processes): ddp keeps a full model per rank; fsdp (FSDP2) shards
    # parameters, gradients and optimizer state, for models that do not fit one device.
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @property
    def eval_batch(self) -> int:
        """Rows per evaluation batch: eval_batch_size, else 4 x batch_size (no activations are
        kept for backward, so evaluation affords larger batches). The one place this is ruled."""
        return self.eval_batch_size or 4 * self.batch_size


class OutputConfig(Strict):
    dir: str = "runs"
    name: str | None = None  # None: the config file's stem
    overwrite: bool = False  # replace an existing run directory of the same name


class Config(Strict):
    seed: int = 0
    data: DataConfig
    model: ModelConfig = Field(discriminator="name")
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _language_model_needs_a_corpus(self) -> Config:
        generative = is_generative(self.model)
        if generative and self.data.corpus is None:
            raise ValueError(
                f"model.name={self.model.name} is a language model, which trains on a text "
                "corpus: add a data.corpus section (e.g. data.corpus.tokenizer=char)"
            )
        if self.data.corpus is not None and not generative:
            raise ValueError(
                "data.corpus trains a language model; use model.name=gpt (or a pretrained "
                f"model with head: causal_lm), not {self.model.name}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the resolved config, for telling runs apart."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- loading


def load_config(
    source: str | Path | dict[str, Any] | Config, overrides: list[str] | None = None
) -> Config:
    """Build a `Config` from a YAML path, a dict or a Config, then apply `a.b=value` overrides.

    Raises:
        ConfigError: one line naming the file and key at fault, with the closest valid key.
    """
    origin = "config"
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = json.loads(json.dumps(source))  # deep copy
    else:
        path = Path(source)
        origin = str(path)
        raw = _read_yaml(path)
        raw.setdefault("output", {})
        if isinstance(raw["output"], dict) and raw["output"].get("name") is None:
            raw["output"]["name"] = path.stem
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin, overrides)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; pass the path to a YAML config")
    if path.is_dir():
        raise ConfigError(f"config path {path} is a directory; pass the path to a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}; fix the YAML syntax there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a YAML mapping of sections (data, model, train, ...), "
            f"found {type(raw).__name__}"
        )
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """`train.optimizer.lr=0.01` -> raw["train"]["optimizer"]["lr"] = 0.01 (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override {item!r} is not of the form key.sub=value; e.g. train.max_epochs=5"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: keep the raw string, the schema decides if it fits
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"override {item!r}: {prefix} is a value ({child!r}), not a section; "
                f"set {prefix}=... instead"
            )
        node = child
    node[parts[-1]] = value


def format_validation_error(
    exc: ValidationError, origin: str, overrides: list[str] | None = None
) -> str:
    """The first pydantic error as one line: file or override, key, problem, how to fix it."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    if kind == "extra_forbidden":
        valid, path = _valid_keys(loc[:-1])
        key = ".".join(path + [loc[-1]])
        origin = _override_origin(overrides, key) or origin
        close = _suggest(loc[-1], loc[:-1], valid)
        hint = f"did you mean '{'.'.join(path + [close])}'? " if close else ""
        where = f"'{'.'.join(path)}'" if path else "the top level"
        return (
            f"{origin}: unknown config key '{key}'; {hint}valid keys in {where}: {', '.join(valid)}"
        )
    _, path = _valid_keys(loc)
    key = ".".join(path) or "(top level)"
    if kind == "missing":
        return f"{origin}: missing required config key '{key}'; add it to the config"
    if kind == "union_tag_invalid":
        origin = _override_origin(overrides, f"{key}.name") or origin
        ctx = err.get("ctx", {})
        tags = ctx.get("expected_tags", "")
        first = tags.split(",")[0].strip(" '")
        return (
            f"{origin}: unknown value for '{key}.name': {ctx.get('tag')!r}; expected one of "
            f"{tags}; e.g. {key}.name={first}"
        )
    if kind == "union_tag_not_found":
        return f"{origin}: '{key}' needs a 'name' key; e.g. {key}.name=mlp"
    origin = _override_origin(overrides, key) or origin
    given = err.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":  # our own validators say how to fix it
        return f"{origin}: invalid value for '{key}'{shown}: {msg}"
    example = _default_example(loc)
    fix = f"e.g. {key}={example}" if example is not None else f"correct '{key}'"
    return f"{origin}: invalid value for '{key}'{shown}: {msg}; {fix}"


# Names other tools use for a key that lives elsewhere here: section path -> {name: key}.
_ALIASES: dict[tuple[str, ...], dict[str, str]] = {
    ("train",): {
        "learning_rate": "optimizer.lr",
        "lr": "optimizer.lr",
        "epochs": "max_epochs",
        "weight_decay": "optimizer.weight_decay",
    },
}


def _suggest(name: str, section: list[str], valid: list[str]) -> str | None:
    """The closest valid key to an unknown `name`: a sibling, a known alias, or a nested key."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if close:
        return close[0]
    _, path = _valid_keys(section)
    aliases = _ALIASES.get(tuple(path), {})
    close = difflib.get_close_matches(name, list(aliases), n=1, cutoff=0.8)
    if close:
        return aliases[close[0]]
    for child in valid:  # one level down: train.momentum -> train.optimizer.momentum
        nested, _ = _valid_keys([*section, child])
        close = difflib.get_close_matches(name, nested, n=1, cutoff=0.8)
        if close:
            return f"{child}.{close[0]}"
    return None


def _override_origin(overrides: list[str] | None, key: str) -> str | None:
    """'override 'a.b=1'' when the command line set `key`, a section holding it, or a key in it."""
    parts = key.split(".")
    prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
    for item in reversed(overrides or []):
        name = item.partition("=")[0].strip()
        if name in prefixes or name.startswith(f"{key}."):
            return f"override {item!r}"
    return None


def _default_example(loc: list[str]) -> str | None:
    """The default of the scalar field at `loc`, written as an override value; None if none."""
    if not loc:
        return None
    parent = _model_at(loc[:-1])
    field = getattr(parent, "model_fields", {}).get(loc[-1]) if parent is not None else None
    if field is None or not isinstance(field, FieldInfo):
        return None
    default = field.default
    if isinstance(default, str):
        return default
    if isinstance(default, bool | int | float | list | tuple):
        return json.dumps(list(default) if isinstance(default, tuple) else default)
    return None


def _valid_keys(loc: list[str]) -> tuple[list[str], list[str]]:
    """Walk the Config classes along a pydantic error location.

    Returns the valid keys at the end of `loc` and the user-facing key path (pydantic puts the
    union tag, e.g. 'cnn', into the location of a discriminated union; users never write it).
    """
    cls, path = _walk(loc)
    fields = getattr(cls, "model_fields", {})
    return list(fields), path


def _model_at(loc: list[str]) -> Any:
    """The config class at the end of `loc` (None past a scalar field)."""
    return _walk(loc)[0]


def _walk(loc: list[str]) -> tuple[Any, list[str]]:
    cls: Any = Config
    path: list[str] = []
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if fields is None:
            break
        if part not in fields:
            # Either a union tag ('cnn') or a dict key (a column name): keep walking.
            tagged = _union_member(cls, part)
            if tagged is not None:
                cls = tagged
                continue
            path.append(part)
            continue
        path.append(part)
        cls = _inner_model(fields[part].annotation)
    return cls, path


def _inner_model(annotation: Any) -> Any:
    """The BaseModel class inside Optional[...] / dict[str, ...] / Annotated[Union[...]]."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1:
        return models[0]
    if models:
        return _Union(models)
    for arg in args:  # Annotated[Union[...], ...], dict[str, X]
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None


class _Union:
    """A discriminated union of config models, resolved by the tag pydantic puts in the loc."""

    def __init__(self, members: list[type[BaseModel]]) -> None:
        self.members = members
        self.model_fields: dict[str, Any] = {"name": None}


def _union_member(cls: Any, tag: str) -> Any:
    if isinstance(cls, _Union):
        for member in cls.members:
            name = member.model_fields.get("name")
            if name is not None and name.default == tag:
                return member
    return None
