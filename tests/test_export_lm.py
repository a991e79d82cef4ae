"""`forgeml export` of language models (`model.name: gpt`): ONNX run in onnxruntime and
TorchScript, tokens (B, T) -> logits (B, T, V) against the eager model on batch sizes and lengths
the trace never saw (one token to the full context), learned and rotary positions; the tokenizer
travels with the export; a failed check writes nothing; what is refused with one clear line:
`predict --backend onnx` on a language model, and pretrained causal LMs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

import forgeml
from forgeml.cli import main
from forgeml.data.tokenizer import LMTokenizer
from forgeml.errors import DataError, ForgeError
from forgeml.export import export_run
from forgeml.inference.onnx_backend import EXPORT_MANIFEST, OnnxBackend
from forgeml.run_dir import sha256_file
from forgeml.tasks.table.predictor import Predictor

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may download

TOL = 1e-4
ALPHABET = "abcdefghijklmnopqrstuvwxyz\n"
BLOCK = 16
VOCAB = len(ALPHABET)  # the char tokenizer of the alphabet corpus
# (rows, tokens) the export check does not use (it uses 2x8, 1x16, 3x1, 4x9)
UNSEEN = [(5, BLOCK), (2, 3), (1, 1), (7, 11)]


def gpt_config(corpus: Path, out: Path, name: str, **model: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "source": str(corpus),
            "corpus": {"tokenizer": "char", "eval_blocks": 4, "sample_tokens": 0},
        },
        "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": BLOCK}
        | model,
        "train": {"batch_size": 8, "max_steps": 4, "precision": "fp32", "log_every_steps": 1000},
        "output": {"dir": str(out), "name": name},
    }


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny character-level GPT runs ("learned" or "rotary" positions, untied for rotary), 4
    steps on the alphabet, trained on first use."""
    root = tmp_path_factory.mktemp("lm_export")
    corpus = root / "abc.txt"
    corpus.write_text(ALPHABET * 100)
    trained: dict[str, Path] = {}

    def get(positions: str) -> Path:
        if positions not in trained:
            model = {"positions": positions, "tie_embeddings": positions == "learned"}
            config = gpt_config(corpus, root / "runs", positions, **model)
            trained[positions] = forgeml.train(config, quiet=True).dir
        return trained[positions]

    return get


def random_tokens(rows: int, length: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (rows, length), generator=gen)


def eager_logits(run: Path, tokens: torch.Tensor) -> np.ndarray:
    """(B, T, V) logits of the run's model as `forgeml generate` loads it."""
    lm = forgeml.load(run)
    with torch.no_grad():
        return lm.model.cpu()(tokens).numpy()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_onnx_round_trip(lm_run: Callable[[str], Path], positions: str) -> None:
    run = lm_run(positions)
    result = export_run(run, format="onnx")
    out = run / "export" / "onnx"
    assert result.directory == out and result.file == out / "model.onnx"
    manifest = result.manifest
    assert manifest["task"] == "language_modeling" and manifest["exporter"] == "dynamo"
    assert manifest["inputs"] == [
        {
            "name": "tokens",
            "key": "tokens",
            "dtype": "int64",
            "shape": ["batch", "sequence"],
            "max_length": BLOCK,
        }
    ]
    assert manifest["output"] == {
        "name": "logits",
        "dtype": "float32",
        "shape": ["batch", "sequence", VOCAB],
    }
    assert manifest["context_length"] == BLOCK and manifest["kv_cache"] is False
    assert manifest["tokenizer"]["kind"] == "char"
    assert manifest["tokenizer"]["vocab_size"] == VOCAB
    # the check ran in onnxruntime on the run's own corpus: one token up to the full context
    check = manifest["check"]
    assert 0 <= check["max_abs_diff"] <= TOL
    assert check["data"].endswith(f"tokens of {run.parent.parent / 'abc.txt'}")
    assert {"1 row of 16 tokens", "3 rows of 1 token"} <= set(check["batches"])
    assert manifest["sha256"] == sha256_file(out / "model.onnx")
    assert (
        manifest["weights_sha256"]
        == json.loads((run / "forgeml.json").read_text())["weights_sha256"]
    )
    # self-contained: the tokenizer and the run's manifest and config, no preprocess/
    for copied in ("config.yaml", "forgeml.json", "tokenizer/tokenizer.json"):
        assert (out / copied).read_bytes() == (run / copied).read_bytes()
    assert not (out / "preprocess").exists()

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["tokens"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for rows, length in UNSEEN:
        tokens = random_tokens(rows, length)
        got = session.run(["logits"], {"tokens": tokens.numpy()})[0]
        assert got.shape == (rows, length, VOCAB) and got.dtype == np.float32
        np.testing.assert_allclose(got, eager_logits(run, tokens), atol=TOL, rtol=0)


def test_text_goes_through_the_exported_tokenizer(lm_run: Callable[[str], Path]) -> None:
    """What a deployment does with the export directory alone: encode with its tokenizer, run
    the graph (here through OnnxBackend), read the next token off the last position."""
    run = lm_run("learned")
    out = run / "export" / "onnx"
    if not (out / EXPORT_MANIFEST).is_file():  # pragma: no cover - the test run alone
        export_run(run, format="onnx")
    tokenizer = LMTokenizer.from_file(out / "tokenizer")
    ids = torch.tensor([tokenizer.encode("hello\nworld")])  # (1, 11)
    backend = OnnxBackend(out)
    logits = backend.run({"tokens": ids})  # (1, 11, V)
    np.testing.assert_allclose(logits, eager_logits(run, ids), atol=TOL, rtol=0)
    lm = forgeml.load(run)
    greedy = lm.generate("hello\nworld", max_new_tokens=1, temperature=0)
    assert tokenizer.decode([int(logits[0, -1].argmax())]) == greedy
    with pytest.raises(ForgeError, match=f"<= {BLOCK}"):
        backend.run({"tokens": random_tokens(1, BLOCK + 1)})


def test_torchscript_round_trip(lm_run: Callable[[str], Path], tmp_path: Path) -> None:
    run = lm_run("learned")
    result = export_run(run, format="torchscript", output=tmp_path / "ts")
    assert result.exporter == "torch.jit.trace" and result.max_abs_diff <= TOL
    assert result.manifest["output"]["shape"] == ["batch", "sequence", VOCAB]
    assert (tmp_path / "ts" / "tokenizer" / "tokenizer.json").is_file()
    module = torch.jit.load(str(result.file))
    for rows, length in UNSEEN:
        tokens = random_tokens(rows, length)
        with torch.no_grad():
            got = module(tokens).numpy()
        np.testing.assert_allclose(got, eager_logits(run, tokens), atol=TOL, rtol=0)


# --------------------------------------------------------------------------- the check


def test_a_failed_check_says_by_how_much_and_writes_nothing(
    lm_run: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import forgeml.export.exporters as exporters

    run = lm_run("learned")
    monkeypatch.setattr(exporters, "compare", lambda *_: (0.5, "1 row of 16 tokens"))
    out = tmp_path / "deploy" / "ts"
    with pytest.raises(ForgeError) as info:
        export_run(run, format="torchscript", output=out)
    message = str(info.value)
    assert "max abs diff 0.5 > tolerance 0.0001 on 1 row of 16 tokens" in message
    assert f"nothing was written to {out}" in message and "\n" not in message
    assert not out.exists() and not list((tmp_path / "deploy").iterdir())  # no staging left


def test_the_check_data(lm_run: Callable[[str], Path], tmp_path: Path) -> None:
    run = tmp_path / "moved"
    shutil.copytree(lm_run("learned"), run)
    # --data: another text, repeated to fill the check batches
    text = tmp_path / "other.txt"
    text.write_text("zyxwv\n")
    result = export_run(run, format="torchscript", data=text, output=tmp_path / "a")
    # five letters, the file's newline and the end-of-document newline
    assert result.manifest["check"]["data"] == f"7 tokens of {text} (repeated)"
    # ... which must be encodable
    text.write_text("ABC")
    with pytest.raises(DataError, match=f"--data {text}: .*never saw: 'ABC'"):
        export_run(run, format="torchscript", data=text, output=tmp_path / "b")
    # the corpus is gone: random ids, and the log says why
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["source"] = str(tmp_path / "gone.txt")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    said: list[str] = []
    result = export_run(run, format="torchscript", output=tmp_path / "c", log=said.append)
    assert result.manifest["check"]["data"] == "random ids"
    assert any("corpus is not readable" in line for line in said)


# --------------------------------------------------------------------------- refused


def test_cli_exports_a_language_model_and_predict_onnx_refuses_it(
    lm_run: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = lm_run("learned")
    out = tmp_path / "ts"
    assert main(["export", str(run), "--format", "torchscript", "--output", str(out)]) == 0
    assert (
        f"to {out / 'model.pt'} (torchscript, torch.jit.trace exporter)" in capsys.readouterr().out
    )
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "abc"}\n')
    for where in (run, out):  # the run, or its export directory
        assert main(["predict", str(where), str(inputs), "--backend", "onnx"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a language model" in err
        assert f"forgeml generate {where} --prompt TEXT" in err
    with pytest.raises(ForgeError, match="forgeml generate"):
        forgeml.load(run, backend="onnx")
    with pytest.raises(ForgeError, match="forgeml generate"):
        Predictor(run, backend="onnx")


def test_a_pretrained_causal_lm_is_refused(tmp_path: Path, capsys) -> None:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
    from test_pretrained import tiny_causal

    folder = tiny_causal(tmp_path / "gpt2", "gpt2")
    corpus = tmp_path / "hello.txt"
    corpus.write_text("hello world, the quick brown fox\n" * 50)
    cfg = gpt_config(corpus, tmp_path / "runs", "hf")
    cfg["data"]["corpus"] |= {"tokenizer": "pretrained", "block_size": 16}
    cfg["model"] = {"name": "pretrained", "path": str(folder), "head": "causal_lm"}
    cfg["train"]["max_steps"] = 1
    run = forgeml.train(cfg, quiet=True).dir
    capsys.readouterr()  # transformers' own output while the test built the checkpoint
    for format in ("onnx", "torchscript"):
        assert main(["export", str(run), "--format", format]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "model.name: pretrained (head: causal_lm)" in err
        assert "forgeml exports language models of model.name: gpt only" in err
    assert not (run / "export").exists()
