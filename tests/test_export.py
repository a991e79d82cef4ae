"""`forgeml export`: ONNX (run in onnxruntime) and TorchScript round trips of tiny real runs,
checked against the eager model on other batch sizes and lengths than the trace saw; the
mismatch, corruption and staleness failures; `OnnxBackend` in place of a Predictor's model, from
Python and from `forgeml predict --backend onnx`; pretrained text classifiers (tiny BERTs built
from a config with MiniLM's tokenizer); runs of your own nn.Module. Language models:
tests/test_export_lm.py."""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import forgeml
from forgeml.cli import main
from forgeml.cli.export import add_export_parser, cmd_export
from forgeml.data.splits import read_splits as load_splits
from forgeml.data.tensors import TensorData
from forgeml.errors import ForgeError
from forgeml.export import export_run
from forgeml.export.exporters import compare, export_onnx, run_onnx
from forgeml.inference.onnx_backend import EXPORT_MANIFEST, OnnxBackend, find_export
from forgeml.models.rnn import RNNConfig, build_rnn
from forgeml.run_dir import sha256_file
from forgeml.schema import InputSpec, SequenceInput
from forgeml.tasks.table.export import input_slots, table_graph
from forgeml.tasks.table.predictor import Predictor
from forgeml.tasks.table.trace import FinalStateFromOutputs

# Before the pretrained tests import transformers (forgeml imports it only when it needs it):
# nothing may download.
os.environ["HF_HUB_OFFLINE"] = "1"

TOL = 1e-4
WORDS = "good bad great awful fine poor nice terrible lovely horrible ok meh".split()
WAVES = "builtin:waves?n=120&length=23"  # odd max_length: cnn1d pools pad odd lengths

RUNS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (source, model, data extras)
    "mlp": ("builtin:tabular?n=200", {"name": "mlp", "hidden_sizes": [8], "norm": "batchnorm"}, {}),
    "cnn": ("builtin:digits", {"name": "cnn", "channels": [4], "head_hidden": [8]}, {}),
    "cnn1d": (WAVES, {"name": "cnn", "channels": [4, 4], "head_hidden": [8]}, {}),
    "transformer": (
        WAVES,
        {"name": "transformer", "d_model": 8, "num_heads": 2, "num_layers": 1},
        {},
    ),
    "rnn": (WAVES, {"name": "rnn", "hidden_size": 6}, {}),  # lstm, pooling last: the defaults
    "text": (
        "TEXT_CSV",
        {"name": "transformer", "d_model": 8, "num_heads": 2, "num_layers": 1, "pooling": "mean"},
        {"columns": {"review": {"type": "text", "text": {"max_length": 9}}}},
    ),
}


def write_texts(path: Path) -> None:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars", "label"])
        for _ in range(120):
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
            label = "pos" if sum(w in WORDS[::2] for w in words) * 2 > len(words) else "neg"
            writer.writerow([" ".join(words), rng.randint(1, 5), label])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Trains each tiny run on first use (a few optimizer steps: the check is about the export,
    not accuracy) and returns its directory."""
    out = tmp_path_factory.mktemp("export_runs")
    texts = out / "texts.csv"
    write_texts(texts)
    trained: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in trained:
            source, model, data = RUNS[name]
            config = {
                "seed": 0,
                "data": {"source": str(texts) if source == "TEXT_CSV" else source, **data},
                "model": model,
                "train": {"batch_size": 32, "max_steps": 4, "precision": "fp32"},
                "output": {"dir": str(out), "name": name},
            }
            trained[name] = forgeml.train(config, quiet=True).dir
        return trained[name]

    return get


def held_out(run: Path, rows: slice) -> tuple[Predictor, dict[str, torch.Tensor]]:
    """The eager predictor and a batch of test-split rows, trimmed as a loader trims it."""
    predictor = Predictor(run, precision="fp32")
    table = load_splits(predictor.config.data, predictor.config.seed)["test"]
    inputs, _ = predictor.preprocessor.transform(table, with_target=False)
    return predictor, TensorData(inputs, None).batch(rows)[0]


def eager(predictor: Predictor, batch: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return predictor.model.cpu().eval()(batch).numpy()


def onnx_export(run: Path) -> Path:
    """RUN/export/onnx as test_onnx_round_trip wrote it (written now when run alone)."""
    out = run / "export" / "onnx"
    if not (out / EXPORT_MANIFEST).exists():  # pragma: no cover - the test run alone
        export_run(run, format="onnx")
    return out


def is_sequence(key: str) -> bool:
    return key.startswith(("text:", "seq:", "mask:"))


def sequence_lengths(batch: dict[str, torch.Tensor]) -> set[int]:
    return {v.shape[1] for k, v in batch.items() if k.startswith("mask:")}


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_round_trip(run_dir: Callable[[str], Path], name: str) -> None:
    run = run_dir(name)
    result = export_run(run, format="onnx")
    out = run / "export" / "onnx"
    assert result.directory == out and result.file == out / "model.onnx"
    manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    assert manifest == json.loads(json.dumps(result.manifest))
    # the check ran in onnxruntime on several batches, and passed
    assert 0 <= manifest["check"]["max_abs_diff"] <= TOL
    assert len(manifest["check"]["batches"]) >= 3
    assert manifest["exporter"] in ("dynamo", "torchscript-based") and manifest["opset"] == 18
    assert manifest["sha256"] == sha256_file(out / "model.onnx")
    run_manifest = json.loads((run / "forgeml.json").read_text())
    assert manifest["weights_sha256"] == run_manifest["weights_sha256"]
    # self-contained: the preprocessing state next to the model
    for copied in ("config.yaml", "forgeml.json", "preprocess/features.json"):
        assert (out / copied).read_bytes() == (run / copied).read_bytes()
    # dynamic batch axis, and a dynamic length axis for text/sequence inputs
    for entry in manifest["inputs"]:
        assert entry["shape"][0] == "batch"
        if is_sequence(entry["key"]):
            assert entry["shape"][1] == "length_0" and entry["max_length"] >= 2

    # another batch size (and length) than the export was traced with (8 rows, max_length)
    predictor, batch = held_out(run, slice(3, 8))
    backend = OnnxBackend.for_run(run)
    got = backend.run(batch)
    assert got.shape == (5, predictor.preprocessor.spec.out_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, eager(predictor, batch), rtol=0, atol=TOL)
    if predictor.preprocessor.spec.sequences:
        short = {k: v[:, :3] if is_sequence(k) else v for k, v in batch.items()}
        assert sequence_lengths(short) == {3}
        np.testing.assert_allclose(backend.run(short), eager(predictor, short), atol=TOL, rtol=0)


def test_rnn_exports_packed_sequences_through_the_torchscript_exporter(
    run_dir: Callable[[str], Path],
) -> None:
    """What was found: torch.export cannot capture pack_padded_sequence (data-dependent sizes),
    so an rnn falls back to the TorchScript-based exporter, which exports packing correctly for
    variable lengths (checked above and here on rows of every length)."""
    run = run_dir("rnn")
    out = onnx_export(run)
    assert find_export(run, "onnx") == out
    manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    assert manifest["exporter"] == "torchscript-based"
    assert "dynamo" in manifest["exporter_failures"]
    predictor, batch = held_out(run, slice(0, 24))
    lengths = batch["mask:signal"].sum(1)
    assert len(set(lengths.tolist())) > 5  # rows of many lengths in one batch
    np.testing.assert_allclose(
        OnnxBackend.for_run(run).run(batch), eager(predictor, batch), atol=TOL, rtol=0
    )


def test_rnn_last_state_for_onnx_equals_the_packed_final_state(tmp_path: Path) -> None:
    """pooling "last" is exported from the per-step outputs (the exporter crashes on h_n alone):
    the same numbers, bidirectional and stacked too, in eager torch and in onnxruntime."""
    column = SequenceInput("s", "sequence", max_length=10, channels=2)
    spec = InputSpec(0, (), None, 3, "multiclass", (column,))
    torch.manual_seed(0)
    lengths = torch.tensor([5, 3, 10, 1, 7])
    mask = torch.arange(10) < lengths[:, None]
    batch = {"seq:s": torch.randn(5, 10, 2).masked_fill(~mask[..., None], 0), "mask:s": mask}
    for cell, layers in (("lstm", 1), ("gru", 2)):
        model = build_rnn(
            RNNConfig(cell=cell, hidden_size=4, num_layers=layers, bidirectional=True), spec
        ).eval()
        encoder = model.encoders[0]
        x = torch.randn(5, 10, 2)
        with torch.no_grad():
            torch.testing.assert_close(FinalStateFromOutputs(encoder)(x, mask), encoder(x, mask))
        path = tmp_path / f"{cell}.onnx"
        graph = table_graph(model, spec, batch)  # checked on batches of other sizes and lengths
        export_onnx(graph, path, dynamo=False)  # the TorchScript-based exporter
        diff, _ = compare(run_onnx(path, graph), graph)
        assert diff <= TOL


def test_onnx_backend_in_a_predictor_gives_the_same_predictions(
    run_dir: Callable[[str], Path],
) -> None:
    """`forgeml.load(run_dir, backend="onnx")`: raw text through the run's preprocessing, the
    ONNX model in place of the torch model; predict and evaluate agree."""
    run = run_dir("text")
    onnx_export(run)
    torch_predictor = Predictor(run, precision="fp32")
    table = load_splits(torch_predictor.config.data, torch_predictor.config.seed)["test"]
    records = held_out_records(table)
    onnx_predictor = forgeml.load(run, backend="onnx")
    assert isinstance(onnx_predictor.model, OnnxBackend)
    assert onnx_predictor.model.directory == run / "export" / "onnx"
    expected, got = torch_predictor.predict(records), onnx_predictor.predict(records)
    assert_same_predictions(got, expected)
    assert onnx_predictor.evaluate(table)["accuracy"] == torch_predictor.evaluate(table)["accuracy"]
    # the export directory alone is enough
    alone = forgeml.load(run / "export" / "onnx", backend="onnx")
    assert_same_predictions(alone.predict(records), expected)


def test_cli_predict_with_the_onnx_backend_matches_the_torch_backend(
    run_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """`forgeml predict RUN INPUT --backend onnx` in a process of its own."""
    run = run_dir("text")
    onnx_export(run)
    predictor = Predictor(run, precision="fp32")
    records = held_out_records(load_splits(predictor.config.data, predictor.config.seed)["test"])
    inputs = tmp_path / "reviews.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = subprocess.run(
        [sys.executable, "-m", "forgeml", "predict", str(run), str(inputs), "--backend", "onnx"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(got) == len(records) > 10
    # the run trains in fp32, so the torch backend predicts in fp32 too
    assert_same_predictions(got, predictor.predict(records))


def held_out_records(table: Any) -> list[dict[str, Any]]:
    """The text run's test split as the records a user would send."""
    return [
        {"review": table.columns["review"][i], "stars": table.columns["stars"][i]}
        for i in range(table.num_rows)
    ]


def assert_same_predictions(got: list[dict], expected: list[dict], tol: float = TOL) -> None:
    assert [r["prediction"] for r in got] == [r["prediction"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["probabilities"].keys() == b["probabilities"].keys()
        for cls, p in b["probabilities"].items():
            assert abs(a["probabilities"][cls] - p) <= tol


# --------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn1d", "transformer", "rnn", "text"])
def test_torchscript_round_trip(run_dir: Callable[[str], Path], tmp_path: Path, name: str) -> None:
    run = run_dir(name)
    result = export_run(run, format="torchscript", output=tmp_path / "ts")
    manifest = result.manifest
    assert result.file == tmp_path / "ts" / "model.pt" and manifest["format"] == "torchscript"
    assert manifest["exporter"] == "torch.jit.trace" and manifest["check"]["max_abs_diff"] <= TOL
    names = [e["key"] for e in manifest["inputs"]]
    module = torch.jit.load(str(result.file))
    predictor, batch = held_out(run, slice(2, 7))  # 5 rows, trimmed to their longest
    if predictor.preprocessor.spec.sequences:
        # an odd length shorter than the trace's: traced shape branches must not matter
        batch = {k: v[:, :5] if is_sequence(k) else v for k, v in batch.items()}
        assert sequence_lengths(batch) == {5}
    with torch.no_grad():
        got = module(*(batch[k] for k in names)).numpy()
    np.testing.assert_allclose(got, eager(predictor, batch), atol=TOL, rtol=0)


# --------------------------------------------------------------------------- failures


def test_a_mismatch_fails_naming_the_diff_and_writes_nothing(
    run_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    run = run_dir("mlp")
    out = tmp_path / "deploy"
    shutil.copytree(onnx_export(run), out)
    diff = json.loads((out / EXPORT_MANIFEST).read_text())["check"]["max_abs_diff"]
    if diff == 0:  # pragma: no cover - onnxruntime matched torch bit for bit
        pytest.skip("no float difference to undercut on this machine")
    before = (out / EXPORT_MANIFEST).read_bytes()
    with pytest.raises(ForgeError) as info:
        export_run(run, format="onnx", output=out, tolerance=diff / 2)
    message = str(info.value)
    assert f"max abs diff {diff:.3g} > tolerance {diff / 2:g}" in message
    assert f"nothing was written to {out} (its earlier export is unchanged)" in message
    # the earlier, valid export is untouched and no staging directory is left behind
    assert (out / EXPORT_MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


def test_corrupted_stale_and_missing_exports_are_refused(
    run_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    run = run_dir("mlp")
    out = tmp_path / "deploy"
    shutil.copytree(onnx_export(run), out)
    OnnxBackend.for_run(run, out)  # fine as written
    (out / EXPORT_MANIFEST).write_text(
        (out / EXPORT_MANIFEST).read_text().replace('"weights_sha256": "', '"weights_sha256": "0')
    )
    with pytest.raises(ForgeError, match="other weights"):
        OnnxBackend.for_run(run, out)
    with (out / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ForgeError, match="changed or corrupted"):
        OnnxBackend(out)
    with pytest.raises(ForgeError, match="forgeml export"):
        find_export(tmp_path / "nothing", "onnx")
    with pytest.raises(ForgeError, match="not a directory|does not exist"):
        export_run(tmp_path / "nothing")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ForgeError, match="holds no forgeml export"):
        export_run(run, output=tmp_path / "mine")
    with pytest.raises(ForgeError, match="would replace the run directory"):
        export_run(run, output=run)


def test_onnx_backend_checks_the_batch(run_dir: Callable[[str], Path]) -> None:
    run = run_dir("text")
    backend = OnnxBackend.for_run(onnx_export(run))  # the export dir as the run dir
    _, batch = held_out(run, slice(0, 4))
    with pytest.raises(ForgeError, match="the batch has no mask:review"):
        backend.run({k: v for k, v in batch.items() if k != "mask:review"})
    long = {k: torch.cat([v, v], dim=1) if k.endswith("review") else v for k, v in batch.items()}
    with pytest.raises(ForgeError, match="length_\\* <= 9"):
        backend.run(long)
    # numpy in, numpy out; the nn.Module face returns a tensor
    as_numpy = backend.run({k: v.numpy() for k, v in batch.items()})
    torch.testing.assert_close(backend(batch), torch.from_numpy(as_numpy))


def test_input_names_stay_plain_and_unique() -> None:
    columns = (
        SequenceInput("a.b", "text", max_length=5, vocab_size=9),
        SequenceInput("a_b", "sequence", max_length=4, channels=2),
    )
    slots = input_slots(InputSpec(2, (3,), None, 1, "regression", columns))
    assert [(s.key, s.name, s.dtype) for s in slots] == [
        ("numeric", "numeric", "float32"),
        ("category", "category", "int64"),
        ("text:a.b", "text_a_b", "int64"),
        ("mask:a.b", "mask_a_b", "bool"),
        ("seq:a_b", "seq_a_b", "float32"),
        ("mask:a_b", "mask_a_b_1", "bool"),
    ]
    assert slots[4].shape == ("batch", "length_1", 2)


# --------------------------------------------------------------------------- CLI, Python runs


def test_cli_export_writes_and_reports(
    run_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "ts"
    args = parser.parse_args(
        ["export", str(run_dir("cnn1d")), "--format", "torchscript", "--output", str(out)]
    )
    assert cmd_export(args) == 0
    captured = capsys.readouterr()
    assert f"to {out / 'model.pt'} (torchscript, torch.jit.trace exporter)" in captured.out
    assert "max abs diff vs the eager model" in captured.out
    assert "exporting to TorchScript" in captured.err
    assert (out / EXPORT_MANIFEST).is_file()


def test_cli_is_light_and_agrees_with_the_module() -> None:
    import forgeml.cli.export as export_cli
    import forgeml.export as export

    assert (export_cli.FORMATS, export_cli.TOLERANCE) == (export.FORMATS, export.TOLERANCE)
    # one interpreter: the CLI module pulls in no torch, the export module no onnx packages
    code = (
        "import sys, forgeml.cli.export; light = 'torch' not in sys.modules; "
        "import forgeml.export; print(light, 'onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["True", "False", "False"], result.stderr


def test_a_run_trained_from_arrays_is_checked_on_random_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    model = forgeml.Model("mlp", hidden_sizes=[4]).compile()
    model.fit(x, y, epochs=1, verbose=False)
    run = model.save(tmp_path / "arrays")
    result = export_run(run, format="onnx")
    assert result.manifest["check"]["data"] == "64 random rows"
    assert result.max_abs_diff <= TOL
    batch = {"numeric": torch.from_numpy(x[:5])}
    predictor = Predictor(run, precision="fp32")
    np.testing.assert_allclose(
        OnnxBackend.for_run(run).run(batch), eager(predictor, batch), atol=TOL, rtol=0
    )


# --------------------------------------------------------------------------- your own module


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 1): one logit, binary
        return self.body(x)


def test_a_run_of_your_own_module_exports_from_python_and_the_cli_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    torch.manual_seed(0)
    model = forgeml.Model(TwoLayer()).compile()
    model.fit(x, y, epochs=1, verbose=False)
    run = model.save(tmp_path / "mine")
    # The CLI cannot build the module: one line naming the Python call that can.
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "forgeml.load" not in err
    assert f"from forgeml.export import export_run; export_run('{run}', format='onnx', " in err
    assert "module=MyNet())" in err
    result = export_run(run, format="onnx", module=TwoLayer())
    assert result.max_abs_diff <= TOL and result.manifest["run"]["model"] == "custom"
    # Predicting with the export needs no module, from Python or the CLI.
    rows = [{f"x{j}": float(v) for j, v in enumerate(row)} for row in x[:9]]
    expected = forgeml.load(run, module=TwoLayer()).predict(rows)
    assert_same_predictions(forgeml.load(run, backend="onnx").predict(rows), expected)


# --------------------------------------------------------------------------- pretrained


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`model.name: pretrained` runs of a tiny BERT, 2 steps on the reviews ("sentence" or
    "auto" layout, see tiny_bert), trained on first use."""
    out = tmp_path_factory.mktemp("pretrained_runs")
    texts = out / "texts.csv"
    write_texts(texts)
    trained: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in trained:
            sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
            from test_pretrained import tiny_bert  # MiniLM's tokenizer on a random tiny BERT

            folder = tiny_bert(out / f"bert-{layout}", sentence=layout == "sentence")
            config = {
                "seed": 0,
                "data": {
                    "source": str(texts),
                    "exclude": ["stars"],  # a pretrained classifier reads one text column
                    "columns": {"review": {"text": {"max_length": 12}}},
                },
                "model": {"name": "pretrained", "path": str(folder)},
                "train": {
                    "batch_size": 16,
                    "max_steps": 2,
                    "precision": "fp32",
                    "checkpoint": {"every_epochs": None},
                },
                "output": {"dir": str(out), "name": layout},
            }
            trained[layout] = forgeml.train(config, quiet=True).dir
        return trained[layout]

    return get


def test_pretrained_classifier_onnx_round_trip(pretrained_run: Callable[[str], Path]) -> None:
    run = pretrained_run("sentence")
    result = export_run(run, format="onnx")
    manifest = result.manifest
    assert 0 <= manifest["check"]["max_abs_diff"] <= TOL
    assert [e["key"] for e in manifest["inputs"]] == ["text:review", "mask:review"]
    assert manifest["output"]["shape"] == ["batch", 1]  # binary: one logit
    # in onnxruntime, on another batch size and a shorter length than the trace's
    predictor, batch = held_out(run, slice(1, 6))
    short = {k: v[:, :4] for k, v in batch.items()}
    backend = OnnxBackend.for_run(run)
    for rows in (batch, short):
        np.testing.assert_allclose(backend.run(rows), eager(predictor, rows), atol=TOL, rtol=0)
    # raw text through the run's preprocessing (the checkpoint's tokenizer) to the ONNX model
    table = load_splits(predictor.config.data, predictor.config.seed)["test"]
    records = [{"review": text} for text in table.columns["review"]]
    expected = predictor.predict(records)
    assert_same_predictions(forgeml.load(run, backend="onnx").predict(records), expected)


@pytest.mark.parametrize("layout", ["sentence", "auto"])
def test_pretrained_classifier_torchscript_round_trip(
    pretrained_run: Callable[[str], Path], tmp_path: Path, layout: str
) -> None:
    """What was found: the traced model failed on any batch size but the example's ("The
    following operation failed in the TorchScript interpreter"), from an in-place write of the
    [CLS] prefix; the export traces a copy-free version of the input ids instead."""
    run = pretrained_run(layout)
    result = export_run(run, format="torchscript", output=tmp_path / "ts")
    assert result.exporter == "torch.jit.trace" and result.max_abs_diff <= TOL
    module = torch.jit.load(str(result.file))
    predictor, batch = held_out(run, slice(0, 3))  # 3 rows; the trace had 8
    for rows in (batch, {k: v[:, :5] for k, v in batch.items()}):
        with torch.no_grad():
            got = module(rows["text:review"], rows["mask:review"]).numpy()
        np.testing.assert_allclose(got, eager(predictor, rows), atol=TOL, rtol=0)
