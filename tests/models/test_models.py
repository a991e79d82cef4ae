"""The shared model-check harness, plus checks specific to one family or the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from forgeml.config import load_config
from forgeml.errors import ConfigError, ForgeError
from forgeml.models.cnn import CNNConfig
from forgeml.models.mlp import MLPConfig
from forgeml.models.registry import FAMILIES, UserModule, build_model, count_parameters
from forgeml.schema import InputSpec

BATCH = 8


def make_spec(
    num_numeric: int = 0,
    category_sizes: tuple[int, ...] = (),
    image_shape: tuple[int, int, int] | None = None,
    out_dim: int = 3,
) -> InputSpec:
    task = "multiclass" if out_dim > 1 else "binary"
    return InputSpec(num_numeric, category_sizes, image_shape, out_dim, task)


def make_batch(spec: InputSpec, batch: int = BATCH, seed: int = 0) -> dict[str, Tensor]:
    """A random batch with exactly the keys the spec has, as the loader would give it."""
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[str, Tensor] = {}
    if spec.num_numeric:
        inputs["numeric"] = torch.randn(batch, spec.num_numeric, generator=gen)
    if spec.category_sizes:
        columns = [torch.randint(0, n, (batch,), generator=gen) for n in spec.category_sizes]
        inputs["category"] = torch.stack(columns, dim=1)  # (B, K) int64
    if spec.image_shape is not None:
        inputs["image"] = torch.randn(batch, *spec.image_shape, generator=gen)
    return inputs


@dataclass(frozen=True)
class Case:
    id: str
    spec: InputSpec
    build: Callable[[InputSpec], nn.Module]
    stochastic: bool  # has dropout or batchnorm: train and eval outputs differ


def _user_module(spec: InputSpec) -> nn.Module:
    c, h, w = spec.image_shape
    return UserModule(
        nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, spec.out_dim)
        )
    )


def _cfg(cfg) -> Callable[[InputSpec], nn.Module]:
    return lambda spec: build_model(cfg, spec)


DIGITS = (1, 8, 8)
CASES = [
    Case("mlp-numeric", make_spec(num_numeric=5), _cfg(MLPConfig()), False),
    Case(
        "mlp-numeric-category-layernorm-dropout",
        make_spec(num_numeric=4, category_sizes=(3, 7, 100)),
        _cfg(MLPConfig(norm="layernorm", dropout=0.2, activation="gelu")),
        True,
    ),
    Case(
        "mlp-category-only-embedding-dim",
        make_spec(category_sizes=(5, 2)),
        _cfg(MLPConfig(embedding_dim=4, hidden_sizes=[16], activation="tanh")),
        False,
    ),
    Case(
        "mlp-image-batchnorm",
        make_spec(image_shape=DIGITS, out_dim=10),
        _cfg(MLPConfig(norm="batchnorm", activation="sigmoid")),
        True,
    ),
    Case(
        "mlp-binary", make_spec(num_numeric=3, out_dim=1), _cfg(MLPConfig(hidden_sizes=[])), False
    ),
    Case("cnn-digits-defaults", make_spec(image_shape=DIGITS, out_dim=10), _cfg(CNNConfig()), True),
    Case(
        "cnn-image-numeric-category",
        make_spec(num_numeric=3, category_sizes=(4, 9), image_shape=DIGITS, out_dim=2),
        _cfg(CNNConfig(batchnorm=False, channels=[8, 16], head_hidden=[32, 16])),
        False,
    ),
    Case(
        "cnn-rgb-28x20-global-avg-dropout",
        make_spec(image_shape=(3, 28, 20), out_dim=5),
        _cfg(
            CNNConfig(
                channels=[8, 8, 16],
                pool="avg",
                global_pool=True,
                convs_per_block=2,
                kernel_size=5,
                dropout=0.1,
                head_dropout=0.3,
                activation="gelu",
            )
        ),
        True,
    ),
    Case(
        # 3x5 -> 1x2, then a side is 1: the next two blocks must not pool (0-size map otherwise).
        "cnn-3x5-side-reaches-1",
        make_spec(image_shape=(2, 3, 5), out_dim=1),
        _cfg(CNNConfig(channels=[4, 4, 4], batchnorm=False, head_hidden=[])),
        False,
    ),
    Case(
        "cnn-4x4-to-1x1-no-pool",
        make_spec(image_shape=(1, 4, 4), num_numeric=2, out_dim=3),
        _cfg(CNNConfig(channels=[4, 8, 8, 8], pool="max")),
        True,
    ),
    Case(
        "cnn-pool-none",
        make_spec(image_shape=(1, 5, 7)),
        _cfg(CNNConfig(channels=[4], pool="none")),
        True,
    ),
    Case("user-module", make_spec(image_shape=DIGITS, out_dim=10), _user_module, False),
]


def build(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return case.build(case.spec)


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request) -> Case:
    return request.param


def test_forward_shape(case: Case) -> None:
    model = build(case).eval()
    out = model(make_batch(case.spec))
    assert out.shape == (BATCH, case.spec.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_backward_reaches_every_parameter(case: Case) -> None:
    model = build(case).train()
    model(make_batch(case.spec)).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_state_dict_round_trip(case: Case, tmp_path: Path) -> None:
    model = build(case, seed=1)
    model.train()(make_batch(case.spec, seed=5))  # move batchnorm running stats off their init
    model.eval()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)

    fresh = build(case, seed=2).eval()
    batch = make_batch(case.spec, seed=3)
    assert not torch.equal(fresh(batch), model(batch))  # else the round trip proves nothing
    fresh.load_state_dict(load_file(path), strict=True)
    assert torch.equal(fresh(batch), model(batch))


def test_same_seed_same_init(case: Case) -> None:
    a, b, c = (
        build(case, seed=7).state_dict(),
        build(case, seed=7).state_dict(),
        build(case, seed=8),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in c.state_dict().items())


def test_train_and_eval_differ_only_with_dropout_or_batchnorm(case: Case) -> None:
    model = build(case)
    batch = make_batch(case.spec)
    with torch.no_grad():
        torch.manual_seed(0)
        train_out = model.train()(batch)
        eval_out = model.eval()(batch)
    assert torch.equal(train_out, eval_out) != case.stochastic


# --------------------------------------------------------------------------- configs and errors


def test_cnn_without_image_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        build_model(CNNConfig(), make_spec(num_numeric=4))
    assert str(exc.value) == (
        "model.name=cnn needs an image column, but the data has none; use model.name=mlp for "
        "tabular data or declare an image column in data.columns"
    )


def test_mlp_without_inputs_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs at least one input column"):
        build_model(MLPConfig(), make_spec())


@pytest.mark.parametrize("cls", [MLPConfig, CNNConfig])
def test_unknown_activation_rejected(cls) -> None:
    with pytest.raises(ValidationError, match="activation"):
        cls(activation="swish")
    cfg = cls()
    with pytest.raises(ValidationError, match="activation"):
        cfg.activation = "swish"  # validate_assignment: overrides set later are checked too


def test_unknown_key_and_bad_ranges_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        MLPConfig(hidden_size=[8])
    with pytest.raises(ValidationError, match="dropout"):
        MLPConfig(dropout=1.0)
    with pytest.raises(ValidationError, match="convs_per_block"):
        CNNConfig(convs_per_block=0)


def test_even_kernel_size_rejected_naming_the_key() -> None:
    with pytest.raises(ValidationError, match="model.kernel_size must be odd"):
        CNNConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="'model.kernel_size'.*must be odd"):
        load_config({"data": {"source": "x.csv"}, "model": {"name": "cnn", "kernel_size": 4}})


def test_config_picks_the_family_by_name() -> None:
    cfg = load_config({"data": {"source": "x.csv"}, "model": {"name": "cnn"}})
    assert isinstance(cfg.model, CNNConfig)
    cfg = load_config({"data": {"source": "x.csv"}, "model": {"name": "mlp", "hidden_sizes": [4]}})
    assert isinstance(cfg.model, MLPConfig)
    assert sorted(FAMILIES) == ["cnn", "gpt", "mlp", "pretrained", "rnn", "transformer"]


def test_count_parameters_by_hand() -> None:
    # numeric 3 + one category column of size 5 -> embedding dim min(32, 3) = 3; in_dim = 6
    model = build_model(
        MLPConfig(hidden_sizes=[4]), make_spec(num_numeric=3, category_sizes=(5,), out_dim=2)
    )
    embedding, hidden, head = 5 * 3, 6 * 4 + 4, 4 * 2 + 2
    assert count_parameters(model) == embedding + hidden + head == 53


def test_count_parameters_cnn_digits_defaults() -> None:
    # 8 -> 4 -> 2, so the head sees 64 * 2 * 2 = 256 features; convs have no bias under batchnorm.
    model = build_model(CNNConfig(), make_spec(image_shape=DIGITS, out_dim=10))
    convs = 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64
    head = 256 * 128 + 128 + 128 * 10 + 10
    assert count_parameters(model) == convs + head


def test_count_parameters_skips_frozen() -> None:
    inner = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    inner[0].requires_grad_(False)
    assert count_parameters(UserModule(inner)) == 3 * 2 + 2


# --------------------------------------------------------------------------- UserModule


def test_user_module_state_dict_is_prefixed() -> None:
    model = UserModule(nn.Linear(4, 2))
    assert sorted(model.state_dict()) == ["module.bias", "module.weight"]


def test_user_module_needs_input_key_with_several_inputs() -> None:
    spec = make_spec(num_numeric=4, category_sizes=(3,))
    batch = make_batch(spec)
    with pytest.raises(ForgeError, match=r"\['category', 'numeric'\].*input_key"):
        UserModule(nn.Linear(4, 2))(batch)
    assert UserModule(nn.Linear(4, 2), input_key="numeric")(batch).shape == (BATCH, 2)
    with pytest.raises(ForgeError, match="input_key='image'"):
        UserModule(nn.Linear(4, 2), input_key="image")(batch)


# --------------------------------------------------------------------------- learning


def test_mlp_fits_a_separable_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x @ torch.tensor([1.0, -2.0]) > 0).float()  # separable by a line through 0
    model = build_model(MLPConfig(hidden_sizes=[32, 32]), make_spec(num_numeric=2, out_dim=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = 0
    while not ((model({"numeric": x}).squeeze(1) > 0).float() == y).all():
        assert steps < 300, "the MLP did not reach 100% train accuracy in 300 Adam steps"
        logits = model({"numeric": x}).squeeze(1)  # (B,)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    assert steps > 0  # it had to learn; a lucky init would make this test meaningless
