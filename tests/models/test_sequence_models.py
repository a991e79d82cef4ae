"""Text/sequence families (rnn, transformer, 1-D cnn) and their shared parts in sequence.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from forgeml.config import load_config
from forgeml.errors import ConfigError
from forgeml.models.cnn import CNNConfig
from forgeml.models.cnn1d import MaskedBatchNorm1d, masked_pool
from forgeml.models.registry import FAMILIES as REGISTRY
from forgeml.models.registry import build_model, count_parameters
from forgeml.models.rnn import RNNConfig, RNNEncoder
from forgeml.models.sequence import (
    AttentionPooling,
    TokenEmbedding,
    pool_last,
    pool_max,
    pool_mean,
)
from forgeml.models.transformer import TransformerConfig, sinusoidal_positions
from forgeml.schema import InputSpec, SequenceInput

VOCAB = 30
TEXT = SequenceInput("review", "text", max_length=12, vocab_size=VOCAB)
SIGNAL = SequenceInput("ecg.lead", "sequence", max_length=10, channels=3)  # '.' in a column name

INPUTS = {
    "text": dict(sequences=(TEXT,)),
    "sequence": dict(sequences=(SIGNAL,)),
    "mixed": dict(sequences=(TEXT, SIGNAL), num_numeric=2, category_sizes=(4, 9)),
}


def make_spec(
    sequences: tuple[SequenceInput, ...],
    num_numeric: int = 0,
    category_sizes: tuple[int, ...] = (),
    out_dim: int = 3,
    task: str = "multiclass",
    image_shape: tuple[int, int, int] | None = None,
) -> InputSpec:
    return InputSpec(num_numeric, category_sizes, image_shape, out_dim, task, sequences)


# --------------------------------------------------------------------------- batches


@dataclass
class Rows:
    """Rows at full max_length plus their real lengths; `batch()` pads them as a loader would."""

    spec: InputSpec
    values: dict[str, Tensor]  # key -> (B, max_length) ids or (B, max_length, C) values
    lengths: dict[str, Tensor]  # key -> (B,) real steps, >= 1
    tabular: dict[str, Tensor]

    def batch(self, rows: slice | list[int] = slice(None), pad_to_max: bool = False) -> dict:
        """Rows padded to their own longest (zeros), or to max_length with garbage padding."""
        gen = torch.Generator().manual_seed(123)
        out = {k: v[rows] for k, v in self.tabular.items()}
        for column in self.spec.sequences:
            lengths = self.lengths[column.key][rows]
            length = column.max_length if pad_to_max else int(lengths.max())
            values = self.values[column.key][rows][:, :length].clone()
            mask = torch.arange(length) < lengths[:, None]  # (B, L), left-aligned
            if pad_to_max:  # garbage: real-looking ids, huge values and a nan
                if column.kind == "text":
                    garbage = torch.randint(1, column.vocab_size, values.shape, generator=gen)
                    values = torch.where(mask, values, garbage)
                else:
                    garbage = 1e3 * torch.randn(values.shape, generator=gen)
                    garbage[0, -1, 0] = float("nan")
                    values = torch.where(mask[..., None], values, garbage)
            else:
                values[~mask] = 0
            out[column.key] = values
            out[column.mask_key] = mask
        return out


def make_rows(spec: InputSpec, batch: int = 6, seed: int = 0, slack: int = 0) -> Rows:
    """Random rows; `slack` keeps every row that much shorter than max_length."""
    gen = torch.Generator().manual_seed(seed)
    values, lengths = {}, {}
    for column in spec.sequences:
        n = column.max_length
        lengths[column.key] = torch.randint(1, n - slack + 1, (batch,), generator=gen)
        lengths[column.key][0] = n - slack  # someone uses the full (allowed) length
        lengths[column.key][1] = 1  # and someone a single step
        if column.kind == "text":
            values[column.key] = torch.randint(1, column.vocab_size, (batch, n), generator=gen)
        else:
            values[column.key] = torch.randn(batch, n, column.channels, generator=gen)
    tabular = {}
    if spec.num_numeric:
        tabular["numeric"] = torch.randn(batch, spec.num_numeric, generator=gen)
    if spec.category_sizes:
        columns = [torch.randint(0, s, (batch,), generator=gen) for s in spec.category_sizes]
        tabular["category"] = torch.stack(columns, dim=1)
    return Rows(spec, values, lengths, tabular)


# --------------------------------------------------------------------------- the family cases

SMALL_RNN = dict(hidden_size=16, embedding_dim=8)
SMALL_TF = dict(d_model=16, num_heads=2, ffn_dim=32)
SMALL_CNN = dict(channels=[8, 8], embedding_dim=8, head_hidden=[8])
FAMILIES = {
    "rnn-lstm-last": RNNConfig(**SMALL_RNN),
    "rnn-gru-bi-2layers-last": RNNConfig(
        cell="gru", bidirectional=True, num_layers=2, dropout=0.2, **SMALL_RNN
    ),
    "rnn-rnn-mean": RNNConfig(cell="rnn", pooling="mean", head_hidden=[8], **SMALL_RNN),
    "rnn-lstm-bi-max": RNNConfig(bidirectional=True, pooling="max", **SMALL_RNN),
    "rnn-gru-attention": RNNConfig(cell="gru", pooling="attention", head_dropout=0.1, **SMALL_RNN),
    "tf-cls-learned": TransformerConfig(**SMALL_TF),
    "tf-mean-sinusoidal": TransformerConfig(pooling="mean", positions="sinusoidal", **SMALL_TF),
    "tf-cls-sinusoidal-1layer": TransformerConfig(positions="sinusoidal", num_layers=1, **SMALL_TF),
    "tf-mean-learned": TransformerConfig(pooling="mean", **SMALL_TF),
    "cnn1d-max-batchnorm": CNNConfig(**SMALL_CNN),
    "cnn1d-avg-2convs-sigmoid-dropout": CNNConfig(
        pool="avg", convs_per_block=2, activation="sigmoid", dropout=0.1, kernel_size=5, **SMALL_CNN
    ),
    "cnn1d-nopool-no-batchnorm": CNNConfig(pool="none", batchnorm=False, **SMALL_CNN),
}


def build(cfg, spec: InputSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg, spec)


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shape(family: str, inputs: str) -> None:
    spec = make_spec(**INPUTS[inputs], out_dim=4, task="multilabel")
    model = build(FAMILIES[family], spec).eval()
    out = model(make_rows(spec).batch())
    assert out.shape == (6, 4) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("task,out_dim", [("binary", 1), ("multiclass", 5), ("regression", 1)])
def test_output_width_follows_the_task(task: str, out_dim: int) -> None:
    spec = make_spec(**INPUTS["text"], out_dim=out_dim, task=task)
    for cfg in (RNNConfig(**SMALL_RNN), TransformerConfig(**SMALL_TF), CNNConfig(**SMALL_CNN)):
        assert build(cfg, spec).eval()(make_rows(spec).batch()).shape == (6, out_dim)


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_leak(family: str, inputs: str) -> None:
    # A row's output is the same alone and unpadded, in a batch padded to the batch's longest
    # row, and in a batch padded to max_length with garbage (ids, huge values, a nan) as padding.
    spec = make_spec(**INPUTS[inputs])
    model = build(FAMILIES[family], spec).eval()
    rows = make_rows(spec, slack=3)
    with torch.no_grad():
        tight = model(rows.batch())
        loose = model(rows.batch(pad_to_max=True))
        alone = torch.cat([model(rows.batch([i])) for i in range(6)])
    assert torch.isfinite(loose).all()
    torch.testing.assert_close(loose, tight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, tight, atol=1e-5, rtol=1e-5)
    # ...and the rows really do differ, so the comparison is not between constants.
    assert not torch.allclose(tight[0], tight[1], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_parameter(family: str) -> None:
    spec = make_spec(**INPUTS["mixed"])
    model = build(FAMILIES[family], spec).train()
    torch.manual_seed(0)
    model(make_rows(spec).batch()).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient (an unused parameter breaks DDP)"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip(family: str, tmp_path: Path) -> None:
    spec = make_spec(**INPUTS["mixed"])
    model = build(FAMILIES[family], spec, seed=1)
    model.train()(make_rows(spec, seed=5).batch())  # move batchnorm running stats
    model.eval()
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    fresh = build(FAMILIES[family], spec, seed=2).eval()
    batch = make_rows(spec, seed=3).batch()
    assert not torch.equal(fresh(batch), model(batch))
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    assert torch.equal(fresh(batch), model(batch))


# --------------------------------------------------------------------------- pooling helpers


def test_pooling_helpers_use_real_steps_only() -> None:
    x = torch.tensor([[[1.0], [5.0], [3.0], [100.0]], [[-2.0], [-9.0], [-100.0], [100.0]]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert pool_last(x, mask).tolist() == [[3.0], [-2.0]]
    assert pool_mean(x, mask).tolist() == [[3.0], [-2.0]]
    assert pool_max(x, mask).tolist() == [[5.0], [-2.0]]


def test_attention_pooling_gives_padding_zero_weight() -> None:
    torch.manual_seed(0)
    pool = AttentionPooling(4)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    out = pool(x, mask)
    garbage = x.clone()
    garbage[0, 2:] = float("nan")
    torch.testing.assert_close(pool(garbage, mask), out)
    torch.testing.assert_close(pool(x[:1, :2], mask[:1, :2]), out[:1])
    one = torch.tensor([[True, False, False, False, False]])
    torch.testing.assert_close(pool(x[:1], one), x[0, :1])  # a single real step: itself


# --------------------------------------------------------------------------- rnn


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_last_is_both_directions_final_states(cell: str) -> None:
    torch.manual_seed(0)
    encoder = RNNEncoder(
        RNNConfig(cell=cell, bidirectional=True, num_layers=2, hidden_size=6), 3
    ).eval()
    lengths = [7, 2, 5]
    x = torch.randn(3, 7, 3)
    mask = torch.arange(7) < torch.tensor(lengths)[:, None]
    x = x.masked_fill(~mask[..., None], 0.0)
    with torch.no_grad():
        got = encoder(x, mask)  # (3, 12)
        for i, n in enumerate(lengths):
            # The unpadded row on its own, no packing: forward output at its last step, backward
            # output at step 0 (where the backward pass ends, having read the row reversed).
            output, _ = encoder.rnn(x[i : i + 1, :n])  # (1, n, 12)
            expected = torch.cat([output[0, n - 1, :6], output[0, 0, 6:]])
            torch.testing.assert_close(got[i], expected, atol=1e-6, rtol=1e-6)
        # Running the padded batch without packing would start the backward pass in the padding:
        # the short rows' backward states differ, so the check above can fail.
        output, _ = encoder.rnn(x)
        assert not torch.allclose(got[1, 6:], output[1, 0, 6:], atol=1e-4)


def test_keras_classic_lstm_parameter_count() -> None:
    # Keras: Embedding(V, E) -> LSTM(100) -> Dense(1, sigmoid).
    vocab, dim = 5000, 32
    spec = make_spec(
        (SequenceInput("text", "text", max_length=500, vocab_size=vocab),),
        out_dim=1,
        task="binary",
    )
    cfg = load_config(
        {
            "data": {"source": "x.csv"},
            "model": {
                "name": "rnn",
                "cell": "lstm",
                "hidden_size": 100,
                "pooling": "last",
                "embedding_dim": dim,
            },
        }
    ).model
    model = build(cfg, spec)
    keras = vocab * dim + 4 * (dim * 100 + 100 * 100 + 100) + (100 + 1)
    # PyTorch's LSTM keeps two bias vectors per gate (b_ih and b_hh), Keras one: 4 * 100 more.
    # They are redundant (only their sum matters), so the two models compute the same functions.
    assert count_parameters(model) == keras + 4 * 100 == 213_301 + 400
    out = model(make_rows(spec, batch=2).batch())
    assert out.shape == (2, 1)  # logits; the loop's BCE-with-logits supplies the sigmoid


# --------------------------------------------------------------------------- transformer


def test_heads_must_divide_d_model() -> None:
    with pytest.raises(
        ValidationError, match="model.d_model=30 must be a multiple of model.num_heads=4"
    ):
        TransformerConfig(d_model=30, num_heads=4)
    cfg = TransformerConfig(d_model=32, num_heads=4)
    with pytest.raises(ValidationError, match="model.num_heads=5"):
        cfg.num_heads = 5
    with pytest.raises(ConfigError, match="d_model=30 must be a multiple of model.num_heads=4"):
        load_config({"data": {"source": "x.csv"}, "model": {"name": "transformer", "d_model": 30}})


def test_sinusoidal_and_learned_positions() -> None:
    spec = make_spec(**INPUTS["text"])
    table = sinusoidal_positions(5, 6)
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # sin 0, cos 0
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    assert sinusoidal_positions(4, 5).shape == (4, 5)  # odd width

    learned = build(TransformerConfig(**SMALL_TF), spec)
    fixed_a = build(TransformerConfig(positions="sinusoidal", **SMALL_TF), spec, seed=1)
    fixed_b = build(TransformerConfig(positions="sinusoidal", **SMALL_TF), spec, seed=2)
    # learned: a parameter of max_length + 1 ([CLS]) slots; sinusoidal: a fixed buffer outside
    # the state_dict, the same whatever the seed.
    (enc,) = learned.encoders
    assert isinstance(enc.positions, nn.Parameter) and enc.positions.shape == (13, 16)
    assert count_parameters(learned) - count_parameters(fixed_a) == 13 * 16
    assert not any("positions" in k for k in fixed_a.state_dict())
    torch.testing.assert_close(fixed_a.encoders[0].positions, sinusoidal_positions(13, 16))
    assert torch.equal(fixed_a.encoders[0].positions, fixed_b.encoders[0].positions)

    # Both see order: the same tokens reversed give another output.
    ids = torch.tensor([[3, 9, 4, 17, 22]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    for model in (learned.eval(), fixed_a.eval()):
        a = model({"text:review": ids, "mask:review": mask})
        b = model({"text:review": ids.flip(1), "mask:review": mask})
        assert not torch.allclose(a, b, atol=1e-4)


def test_cls_and_mean_pooling() -> None:
    spec = make_spec(**INPUTS["sequence"])
    cls = build(TransformerConfig(**SMALL_TF), spec)
    mean = build(TransformerConfig(pooling="mean", **SMALL_TF), spec)
    # [CLS]: one learned d_model vector, and one more learned position slot for it.
    assert cls.encoders[0].cls.shape == (16,) and mean.encoders[0].cls is None
    assert count_parameters(cls) - count_parameters(mean) == 16 + 16
    assert mean.encoders[0].positions.shape == (SIGNAL.max_length, 16)
    # The [CLS] vector is the encoding's start: changing it changes the output.
    batch = make_rows(spec).batch()
    before = cls.eval()(batch)
    with torch.no_grad():
        # Not a constant shift: every LayerNorm (pre-LN blocks, final norm) would remove that.
        cls.encoders[0].cls.add_(torch.randn(16))
    assert not torch.allclose(cls(batch), before, atol=1e-4)


def test_transformer_rejects_batches_longer_than_max_length() -> None:
    spec = make_spec(**INPUTS["text"])
    model = build(TransformerConfig(**SMALL_TF), spec)
    ids = torch.ones(1, 13, dtype=torch.long)
    with pytest.raises(ValueError, match="length 13, longer than the column's max_length 12"):
        model({"text:review": ids, "mask:review": ids.bool()})


# --------------------------------------------------------------------------- 1-D cnn parts


def test_masked_pool_pools_real_steps_only() -> None:
    x = torch.tensor([[[1.0, 2.0, -3.0, 100.0, 7.0]]])
    mask = torch.tensor([[True, True, True, False, False]])
    for kind, expected in (("max", [2.0, -3.0, 0.0]), ("avg", [1.5, -3.0, 0.0])):
        y, pooled = masked_pool(x, mask, kind)
        assert y.tolist() == [[expected]]
        assert pooled.tolist() == [[True, True, False]]
        # Padded to the row's own length (3, odd): the last step pools alone, the same way.
        y3, pooled3 = masked_pool(x[..., :3], mask[:, :3], kind)
        assert y3.tolist() == [[expected[:2]]] and pooled3.tolist() == [[True, True]]


def test_masked_batchnorm_statistics_ignore_padding() -> None:
    norm = MaskedBatchNorm1d(1).train()
    x = torch.tensor([[[1.0, 3.0, 1000.0]], [[5.0, -1000.0, -1000.0]]])  # (B=2, C=1, L=3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = norm(x, mask)
    real = torch.tensor([1.0, 3.0, 5.0])
    torch.testing.assert_close(norm.norm.running_mean, 0.1 * real.mean().reshape(1))
    expected = (real - real.mean()) / torch.sqrt(real.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(out[mask.unsqueeze(1)], expected)
    assert (out[~mask.unsqueeze(1)] == 0).all()


def test_cnn1d_stops_pooling_once_max_length_is_one() -> None:
    column = SequenceInput("s", "sequence", max_length=5, channels=2)
    spec = make_spec((column,))
    model = build(CNNConfig(channels=[4, 4, 4, 4], head_hidden=[]), spec).eval()
    # 5 -> 3 -> 2 -> 1: the fourth block must not pool.
    assert [b.pool for b in model.encoders[0].blocks] == ["max", "max", "max", None]
    ones = torch.ones(2, 1, dtype=torch.bool)  # a batch of single steps still works
    assert model({"seq:s": torch.randn(2, 1, 2), "mask:s": ones}).shape == (2, 3)


def test_cnn1d_parameter_count_by_hand() -> None:
    spec = make_spec(**INPUTS["mixed"], out_dim=2)
    model = build(CNNConfig(channels=[8], head_hidden=[], kernel_size=3, embedding_dim=8), spec)
    text = VOCAB * 8 + 8 * 8 * 3 + 2 * 8  # embedding, conv without bias, batchnorm
    signal = 3 * 8 * 3 + 2 * 8
    categories = 4 * 2 + 9 * 5  # min(32, (size + 1) // 2), as the MLP
    head = (8 + 8 + 2 + 2 + 5) * 2 + 2
    assert count_parameters(model) == text + signal + categories + head


# --------------------------------------------------------------------------- fitting the data


def test_sequence_families_need_a_sequence_column() -> None:
    tabular = make_spec((), num_numeric=3)
    for name, cfg in (("rnn", RNNConfig()), ("transformer", TransformerConfig())):
        with pytest.raises(ConfigError) as exc:
            build_model(cfg, tabular)
        assert str(exc.value).startswith(f"model.name={name} needs a text or sequence column")
        assert "use model.name=mlp for tabular data" in str(exc.value)


def test_image_with_sequences_is_a_config_error() -> None:
    spec = make_spec(**INPUTS["text"], image_shape=(1, 8, 8))
    for cfg in (RNNConfig(), TransformerConfig()):
        with pytest.raises(ConfigError, match=f"model.name={cfg.name} does not take an image"):
            build_model(cfg, spec)
    with pytest.raises(ConfigError, match="model.name=cnn takes an image column or text"):
        build_model(CNNConfig(), spec)


def test_registry_and_config_know_the_new_families() -> None:
    assert {"rnn", "transformer"} <= set(REGISTRY)
    cfg = load_config(
        {"data": {"source": "x.csv"}, "model": {"name": "rnn", "cell": "gru", "pooling": "max"}}
    )
    assert isinstance(cfg.model, RNNConfig) and cfg.model.cell == "gru"
    cfg = load_config({"data": {"source": "x.csv"}, "model": {"name": "transformer"}})
    assert isinstance(cfg.model, TransformerConfig) and cfg.model.ffn_dim is None
    with pytest.raises(ConfigError, match="pooling"):
        load_config({"data": {"source": "x.csv"}, "model": {"name": "rnn", "pooling": "cls"}})
    with pytest.raises(ValidationError, match="extra"):
        RNNConfig(hidden=4)
    with pytest.raises(ValidationError, match="extra"):
        TransformerConfig(embedding_dim=16)  # the text embedding width is d_model


# --------------------------------------------------------------------------- vectors files

VOCAB_TOKENS = ("<pad>", "<unk>", "good", "bad", "movie")
WORDS = SequenceInput("review", "text", max_length=6, vocab_size=5, vocab=VOCAB_TOKENS)


def write_vectors(path: Path, header: bool) -> Path:
    lines = [
        "good 0.1 0.2 0.3 0.4",
        "<pad> 9 9 9 9",  # the padding row must stay zero even if the file has the token
        "great 1 1 1 1",  # not in the vocab
        "bad -1 -2 -3 -4.5e-1",
        "",
    ]
    path.write_text(("4 4\n" if header else "") + "\n".join(lines))
    return path


@pytest.mark.parametrize("header", [True, False], ids=["word2vec", "glove"])
def test_vectors_initialise_found_tokens(tmp_path: Path, header: bool) -> None:
    path = write_vectors(tmp_path / "vectors.txt", header)
    torch.manual_seed(0)
    embed = TokenEmbedding(WORDS, 4, vectors=str(path))
    weight = embed.embedding.weight
    assert embed.vectors_found == 2
    assert weight[2].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert weight[3].tolist() == pytest.approx([-1, -2, -3, -0.45])
    assert (weight[0] == 0).all()
    torch.manual_seed(0)
    plain = TokenEmbedding(WORDS, 4)
    assert torch.equal(weight[[1, 4]], plain.embedding.weight[[1, 4]])  # kept the random init
    assert weight.requires_grad

    model = build(RNNConfig(embedding_dim=4, hidden_size=4, vectors=str(path)), make_spec((WORDS,)))
    assert model.vectors_found == {"review": 2}


def test_freeze_vectors_keeps_the_embedding_fixed(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "v.txt", header=False)
    spec = make_spec((WORDS,))
    cfg = TransformerConfig(d_model=4, num_heads=2, vectors=str(path), freeze_vectors=True)
    model = build(cfg, spec)
    weight = model.embedders[0].embedding.weight
    assert not weight.requires_grad
    assert (
        count_parameters(model)
        == count_parameters(build(cfg.model_copy(update={"freeze_vectors": False}), spec)) - 5 * 4
    )
    before = weight.clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(make_rows(spec).batch()).square().mean().backward()
    optimizer.step()
    assert weight.grad is None and torch.equal(weight, before)


def test_vectors_dim_mismatch_names_file_and_dims(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "glove.4d.txt", header=False)
    with pytest.raises(ConfigError) as exc:
        build_model(RNNConfig(embedding_dim=8, vectors=str(path)), make_spec((WORDS,)))
    message = str(exc.value)
    assert str(path) in message and "4-dimensional" in message and "embedding dim is 8" in message
    assert "model.embedding_dim=4" in message
    with pytest.raises(ConfigError, match="set model.d_model=4"):
        build_model(
            TransformerConfig(d_model=8, num_heads=2, vectors=str(path)), make_spec((WORDS,))
        )
    header = write_vectors(tmp_path / "w2v.txt", header=True)
    with pytest.raises(ConfigError, match=r"w2v.txt has 4-dimensional vectors \(line 1\)"):
        TokenEmbedding(WORDS, 6, vectors=str(header))


def test_missing_or_bad_vectors_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=f"cannot read vectors file {missing}"):
        TokenEmbedding(WORDS, 4, vectors=str(missing))
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("good 1 2 3 4\nbad 1 2 3\n")
    with pytest.raises(ConfigError, match=f"{ragged} line 2 has 3 values after the token"):
        TokenEmbedding(WORDS, 4, vectors=str(ragged))
    words = tmp_path / "words.txt"
    words.write_text("movie 1 2 3 4\ngood 1 two 3 4\n")
    with pytest.raises(ConfigError, match=f"{words} line 2 has a value that is not a number"):
        TokenEmbedding(WORDS, 4, vectors=str(words))
    binary = tmp_path / "vectors.bin"
    binary.write_bytes(b"2 4\ngood \xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match=f"{binary} line 2 is not UTF-8"):
        TokenEmbedding(WORDS, 4, vectors=str(binary))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match=f"{empty} holds no vectors"):
        TokenEmbedding(WORDS, 4, vectors=str(empty))


def test_vectors_need_a_text_column(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "v.txt", header=False)
    with pytest.raises(ConfigError, match="model.vectors is set, but the data has no text column"):
        build_model(RNNConfig(vectors=str(path)), make_spec((SIGNAL,)))


# --------------------------------------------------------------------------- learning


def contains_seven(n: int, seed: int) -> tuple[SequenceInput, dict[str, Tensor], Tensor]:
    """Text rows of 3..12 tokens from 1..19; label: does token 7 occur (half the rows)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 13, (n,), generator=gen)
    ids = torch.randint(1, 19, (n, 12), generator=gen)
    ids[ids >= 7] += 1  # 1..19 without 7
    y = torch.rand(n, generator=gen) < 0.5
    where = (torch.rand(n, generator=gen) * lengths).long()  # a real step
    ids[y, where[y]] = 7
    mask = torch.arange(12) < lengths[:, None]
    column = SequenceInput("t", "text", max_length=12, vocab_size=20)
    return column, {"text:t": ids * mask, "mask:t": mask}, y.float()


def mean_positive(n: int, seed: int) -> tuple[SequenceInput, dict[str, Tensor], Tensor]:
    """2-channel signals of 2..10 steps; label: is the mean of channel 0 over real steps > 0."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 11, (n,), generator=gen)
    mask = torch.arange(10) < lengths[:, None]
    x = torch.randn(n, 10, 2, generator=gen) + 0.5 * torch.randn(n, 1, 2, generator=gen)
    x = x * mask[..., None]
    y = x[..., 0].sum(1) / lengths > 0
    column = SequenceInput("s", "sequence", max_length=10, channels=2)
    return column, {"seq:s": x, "mask:s": mask}, y.float()


LEARNING = {
    "rnn-lstm-last-contains-7": (RNNConfig(hidden_size=24, embedding_dim=16), contains_seven),
    "rnn-gru-mean-mean-positive": (
        RNNConfig(cell="gru", pooling="mean", hidden_size=16),
        mean_positive,
    ),
    "transformer-cls-contains-7": (
        TransformerConfig(d_model=32, num_heads=2, num_layers=1, dropout=0.0),
        contains_seven,
    ),
    "cnn1d-contains-7": (
        CNNConfig(channels=[16], embedding_dim=16, head_hidden=[]),
        contains_seven,
    ),
}


def trimmed(inputs: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    """The rows, padded only to their own longest, as the loader batches them (L varies)."""
    (mask_key,) = (k for k in inputs if k.startswith("mask:"))
    length = int(inputs[mask_key][rows].sum(1).max())
    return {k: v[rows, :length] for k, v in inputs.items()}


@pytest.mark.parametrize("case", LEARNING)
def test_learns_a_synthetic_task(case: str) -> None:
    cfg, task = LEARNING[case]
    column, train_x, train_y = task(512, seed=0)
    _, test_x, test_y = task(512, seed=1)
    model = build(cfg, make_spec((column,), out_dim=1, task="binary"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        rows = torch.randint(0, 512, (32,), generator=gen)
        logits = model(trimmed(train_x, rows)).squeeze(1)  # (32,)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, train_y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = ((model.eval()(test_x).squeeze(1) > 0).float() == test_y).float().mean()
    assert accuracy > 0.9, f"held-out accuracy {accuracy:.3f} after 150 Adam steps"
