"""Config: YAML + overrides, defaults filled, strict keys with helpful messages, round trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from forgeml.config import (
    Config,
    DataConfig,
    EarlyStoppingConfig,
    LossConfig,
    OptimizerConfig,
    OutputConfig,
    SchedulerConfig,
    SplitConfig,
    TrainConfig,
    load_config,
)
from forgeml.errors import ConfigError, ForgeError
from forgeml.models.cnn import CNNConfig
from forgeml.models.mlp import MLPConfig

BASE = {"data": {"source": "builtin:digits"}, "model": {"name": "cnn"}}


def error_of(overrides: list[str], base: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(base or BASE, overrides)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints errors as one line
    return message


# --------------------------------------------------------------------------- reading


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "my-run.yaml"
    path.write_text(
        "seed: 3\n"
        "data: {source: builtin:digits, split: {train: 0.7, val: 0.1, test: 0.2}}\n"
        "model: {name: cnn, channels: [8]}\n"
        "train: {batch_size: 16, optimizer: {name: sgd, lr: 0.1}}\n"
    )
    cfg = load_config(
        path,
        [
            "train.max_epochs=7",
            "train.optimizer.lr=0.05",
            "model.channels=[4, 8]",
            "train.early_stopping.patience=2",
            "data.columns.label.type=category",
        ],
    )
    assert cfg.seed == 3
    assert cfg.train.batch_size == 16  # from the file
    assert cfg.train.max_epochs == 7  # overrides parse their value as YAML: an int
    assert cfg.train.optimizer.name == "sgd"
    assert cfg.train.optimizer.lr == 0.05
    assert isinstance(cfg.model, CNNConfig) and cfg.model.channels == [4, 8]
    # An override can create a section that the file leaves out; its other keys take defaults.
    assert cfg.train.early_stopping == EarlyStoppingConfig(patience=2)
    assert cfg.data.columns["label"].type == "category"
    assert cfg.data.split.test == 0.2
    assert cfg.output.name == "my-run"  # the file's stem names the run


def test_output_name_from_file_is_kept_when_given(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({**BASE, "output": {"name": "other"}}))
    assert load_config(path).output.name == "other"
    assert load_config(path, ["output.name=third"]).output.name == "third"


def test_every_default_is_filled() -> None:
    cfg = load_config({"data": {"source": "x.csv"}, "model": {"name": "mlp"}})
    assert cfg.seed == 0
    assert cfg.train == TrainConfig()
    assert cfg.train.batch_size == 64 and cfg.train.max_epochs == 10
    assert cfg.train.optimizer == OptimizerConfig(name="adamw", lr=1e-3)
    assert cfg.train.scheduler == SchedulerConfig(name="constant")
    assert cfg.train.loss == LossConfig()
    assert cfg.train.precision == "auto"
    assert cfg.data.split == SplitConfig(train=0.8, val=0.1, test=0.1)
    assert cfg.data.target == "label"
    assert cfg.model == MLPConfig()
    assert cfg.output == OutputConfig(dir="runs", name=None, overwrite=False)

    # The written form holds every key of every section, not only the ones the user gave.
    written = yaml.safe_load(cfg.to_yaml())
    assert set(written) == set(Config.model_fields)
    assert set(written["train"]) == set(TrainConfig.model_fields)
    assert set(written["train"]["optimizer"]) == set(OptimizerConfig.model_fields)
    assert set(written["train"]["scheduler"]) == set(SchedulerConfig.model_fields)
    assert set(written["data"]) == set(DataConfig.model_fields)
    assert set(written["data"]["split"]) == set(SplitConfig.model_fields)
    assert set(written["model"]) == set(MLPConfig.model_fields)


def test_model_section_is_chosen_by_name() -> None:
    assert isinstance(load_config(BASE).model, CNNConfig)
    assert isinstance(load_config(BASE, ["model.name=mlp"]).model, MLPConfig)
    message = error_of(["model.name=resnet"])
    assert "'model.name': 'resnet'" in message  # the name given, not the whole section
    assert "'mlp'" in message and "'cnn'" in message


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_suggests_and_lists() -> None:
    message = error_of(["trian.max_epochs=3"])
    assert "unknown config key 'trian'" in message
    assert "did you mean 'train'?" in message
    assert "valid keys in the top level: seed, data, model, train, output" in message


def test_unknown_nested_key_suggests_and_lists() -> None:
    message = error_of(["train.optimzer.lr=0.1"])
    assert "'train.optimzer'" in message
    assert "did you mean 'train.optimizer'?" in message
    for key in TrainConfig.model_fields:
        assert key in message

    message = error_of(["train.early_stopping.patence=3"])
    assert "did you mean 'train.early_stopping.patience'?" in message


def test_unknown_key_inside_cnn_lists_cnn_keys() -> None:
    message = error_of(["model.chanels=[8]"])
    assert "did you mean 'model.channels'?" in message
    assert "valid keys in 'model':" in message
    listed = message.split("valid keys in 'model':")[1]
    for key in CNNConfig.model_fields:
        assert key in listed
    assert "hidden_sizes" not in listed  # an mlp key is not valid for a cnn
    assert ".cnn." not in message  # pydantic's union tag never leaks into the key path


def test_unknown_key_inside_a_column() -> None:
    message = error_of(["data.columns.age.tpye=numeric"])
    assert "'data.columns.age.tpye'" in message
    assert "did you mean 'data.columns.age.type'?" in message
    assert "valid keys in 'data.columns.age': type, fill, fill_value" in message


def test_unknown_key_without_close_match_still_lists() -> None:
    message = error_of(["train.zzzzzz=1"])
    assert "did you mean" not in message
    assert "valid keys in 'train':" in message and "batch_size" in message


# --------------------------------------------------------------------------- wrong values


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.optimizer.lr=-1", "train.optimizer.lr"),
        ("train.precision=fp8", "train.precision"),
        ("data.columns.age.type=texts", "data.columns.age.type"),
        ("model.channels=[0]", "model.channels"),
        ("train.max_epochs=[1, 2]", "train.max_epochs"),
    ],
)
def test_wrong_value_names_the_key(override: str, key: str) -> None:
    message = error_of([override])
    assert f"invalid value for '{key}'" in message


def test_wrong_value_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"batch_size": "many"}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid value for 'train\.batch_size'"):
        load_config(path)


def test_missing_required_key() -> None:
    message = error_of([], base={"model": {"name": "mlp"}})
    assert "missing required config key 'data'" in message
    message = error_of([], base={"data": {}, "model": {"name": "mlp"}})
    assert "missing required config key 'data.source'" in message


def test_split_ratios_must_sum_to_one() -> None:
    message = error_of(["data.split.train=0.5"])
    assert "'data.split'" in message and "add up to 1" in message and "0.7" in message
    cfg = load_config(BASE, ["data.split.train=0.6", "data.split.val=0.2", "data.split.test=0.2"])
    assert cfg.data.split.train == 0.6


@pytest.mark.parametrize("override", ["train.max_epochs", "=3", "train..lr=1", "train.=1"])
def test_malformed_override(override: str) -> None:
    assert "key.sub=value" in error_of([override])


def test_override_into_a_value_is_an_error() -> None:
    base = {**BASE, "seed": 1}
    message = error_of(["seed.x=1"], base=base)
    assert "seed is a value" in message


def test_yaml_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {source: x\nmodel: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml, line \d+, column \d+"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_config(listing)


def test_config_errors_are_forge_errors() -> None:
    assert issubclass(ConfigError, ForgeError)


# --------------------------------------------------------------------------- round trips


def test_to_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        BASE,
        [
            "train.optimizer.betas=[0.8, 0.99]",
            "train.early_stopping.monitor=val_accuracy",
            "data.columns.color.type=category",
            "data.columns.color.fill=constant",
            "data.image.size=[8, 8]",
            "train.loss.class_weights={'0': 2.0}",
            "output.name=digits",
        ],
    )
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.digest() == cfg.digest()

    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg  # what a run writes to config.yaml loads back unchanged


def test_digest_is_stable_and_sensitive() -> None:
    first = load_config(BASE)
    same = load_config(
        {"model": {"channels": [32, 64], "name": "cnn"}, "data": {"source": "builtin:digits"}}
    )
    assert first.digest() == same.digest()  # key order and spelled-out defaults do not matter
    # sha256 of the resolved config as it is saved (config.yaml), keys sorted: recomputed here.
    resolved = json.dumps(yaml.safe_load(first.to_yaml()), sort_keys=True).encode()
    assert first.digest() == hashlib.sha256(resolved).hexdigest()
    assert load_config(BASE, ["seed=1"]).digest() != first.digest()
    assert load_config(BASE, ["train.optimizer.lr=0.002"]).digest() != first.digest()


def test_load_config_accepts_a_config_and_copies_dicts() -> None:
    raw = {"data": {"source": "builtin:digits"}, "model": {"name": "mlp"}}
    cfg = load_config(raw, ["train.max_epochs=2"])
    assert raw == {"data": {"source": "builtin:digits"}, "model": {"name": "mlp"}}  # untouched
    again = load_config(cfg, ["train.batch_size=8"])
    assert again.train.max_epochs == 2 and again.train.batch_size == 8
    assert cfg.train.batch_size == 64
