"""Training a language model: it learns, evaluates every N steps, samples, reports throughput,
runs in bf16, accumulates gradients exactly, and resumes byte-identically after a SIGKILL."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lm_helpers import ABC_BATCH, ABC_BLOCK, ABC_EVAL_EVERY, ABC_STEPS, TINY, merge
from safetensors.torch import load_file

import forgeml
from forgeml.models.registry import build_model
from forgeml.schema import TokenSpec
from forgeml.tasks.language_modeling import prepare as lm_prepare


def _e2e_helpers():
    """tests/e2e/test_kill_resume.py, for its subprocess helpers (killing at an exact step)."""
    name = "test_kill_resume"  # the name pytest gives it: collecting it later reuses this one
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "e2e" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


e2e = _e2e_helpers()


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


# --------------------------------------------------------------------------- the trained run


def test_the_loss_goes_to_near_zero_on_a_learnable_corpus(abc_run) -> None:
    metrics = json.loads((abc_run.dir / "metrics.json").read_text())
    assert metrics["val"]["loss"] < 0.05 and metrics["train"]["loss"] < 0.05
    assert metrics["steps"] == ABC_STEPS and metrics["stop_reason"] == "max_steps"
    assert metrics["tokens_trained"] == ABC_STEPS * ABC_BATCH * ABC_BLOCK
    manifest = json.loads((abc_run.dir / "forgeml.json").read_text())
    assert manifest["task"] == "language_modeling" and manifest["tokenizer"] == "char"
    assert manifest["vocab_size"] == 27 and manifest["context_length"] == ABC_BLOCK
    assert (abc_run.dir / "tokenizer" / "tokenizer.json").is_file()
    assert (abc_run.dir / "training_curves.png").is_file()


def test_eval_every_steps_writes_val_loss_and_perplexity_rows(abc_run) -> None:
    rows = [json.loads(line) for line in (abc_run.dir / "history.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    steps = list(range(ABC_EVAL_EVERY, ABC_STEPS + 1, ABC_EVAL_EVERY))
    assert [r["step"] for r in val] == steps
    assert [r["step"] for r in rows if r["split"] == "train"] == steps
    for row in val:
        loss, perplexity = row["metrics"]["loss"], row["metrics"]["perplexity"]
        assert perplexity == pytest.approx(math.exp(loss), rel=1e-9)
    losses = [r["metrics"]["loss"] for r in val]
    assert losses == sorted(losses, reverse=True) and losses[0] < math.log(27)
    assert abc_run.run.history == rows  # what forgeml.train returned


def test_samples_throughput_and_mfu_are_logged(abc_run) -> None:
    log = abc_run.log
    for step in range(ABC_EVAL_EVERY, ABC_STEPS + 1, ABC_EVAL_EVERY):
        assert f"sample at step {step}: '" in log
    # After "abc" (the sample prompt) the trained model writes the alphabet on.
    assert f"sample at step {ABC_STEPS}: 'defghijklmno'" in log
    params = re.search(r"model gpt: ([\d,]+) parameters, [\d.]+ MFLOPs per token", log)
    peak = re.search(r"matmul peak on this machine: fp32 ([\d,]+) GFLOP/s, bf16 [\d,]+", log)
    assert params and peak, log
    # A run that stops by step count counts steps, not batches of a huge first epoch.
    assert re.findall(r"step (\d+)/(\d+) loss", log) == [
        (str(s), str(ABC_STEPS)) for s in range(10, ABC_STEPS + 1, 10)
    ], log
    lines = re.findall(r"loss \S+ [\d,]+ samples/s ([\d,]+) tok/s MFU (\d+\.\d)%", log)
    assert len(lines) == ABC_STEPS // 10, log
    # MFU = training FLOPs per token x tok/s / the fp32 matmul peak, recomputed here from the
    # logged numbers. FLOPs per token, as nanoGPT counts them: 6 x the weights used per token (all
    # but the position table; the tied embedding is the output layer) + 12 x layers x n_embd x
    # context for attention; TINY has 1 layer, n_embd 32, context 16.
    flops = 6 * (number(params[1]) - 16 * 32) + 12 * 1 * 32 * 16
    gflops = number(peak[1])
    for tok, mfu in lines:
        expected = 100 * flops * number(tok) / (gflops * 1e9)  # percent
        assert 0 < expected <= 100
        # The log rounds MFU to 0.1 points, tok/s to 1 and the peak to 1 GFLOP/s.
        rounding = 0.05 + 1.01 * expected * (0.5 / number(tok) + 0.5 / gflops)
        assert abs(float(mfu) - expected) <= rounding, (tok, mfu, expected)


def number(text: str) -> float:
    return float(text.replace(",", ""))


# --------------------------------------------------------------------------- in-process runs


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    """Words in a random order: something to learn, but never learned to zero."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it"]
    lines = [" ".join(rng.choice(words) for _ in range(8)) + "\n" for _ in range(150)]
    path = tmp_path / "words.txt"
    path.write_text("".join(lines))
    return path


def test_bf16_autocast_runs(
    tiny_config, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dtypes: list[torch.dtype] = []
    build = lm_prepare.build_model

    def build_and_watch(cfg, spec, **options):
        model = build(cfg, spec, **options)
        model.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(lm_prepare, "build_model", build_and_watch)
    run = forgeml.train(tiny_config(corpus_file, train={"precision": "bf16"}), quiet=True)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and math.isfinite(metrics["val"]["loss"])
    assert torch.bfloat16 in dtypes  # the forward ran under bf16 autocast
    assert all(w.dtype == torch.float32 for w in weights(run.dir).values())  # fp32 master


def test_gradient_accumulation_equals_the_big_batch(tiny_config, corpus_file: Path) -> None:
    """Batches of 4 accumulated twice make the same optimizer steps as batches of 8 (SGD: Adam
    would blow float-rounding differences of tiny gradients up to whole steps)."""
    runs = {}
    for name, batch, accum in (("big", 8, 1), ("accumulated", 4, 2)):
        train = {"batch_size": batch, "grad_accum_steps": accum, "max_steps": 4}
        train["optimizer"] = {"name": "sgd", "lr": 0.5, "momentum": 0.0}
        cfg = tiny_config(corpus_file, train=train, output={"name": name})
        runs[name] = forgeml.train(cfg, quiet=True).dir
    big, accumulated = weights(runs["big"]), weights(runs["accumulated"])
    for key, value in big.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-4, atol=1e-5)
    vocab = json.loads((runs["big"] / "forgeml.json").read_text())["vocab_size"]
    torch.manual_seed(0)  # the config's seed: the weights the run started from
    initial = build_model(forgeml.load_config(tiny_config(corpus_file)).model, TokenSpec(vocab))
    assert not torch.equal(initial.state_dict()["wte.weight"], big["wte.weight"])  # it trained
    for run_dir in runs.values():
        assert json.loads((run_dir / "metrics.json").read_text())["tokens_trained"] == 4 * 8 * 16


def test_samples_do_not_perturb_training(tiny_config, corpus_file: Path) -> None:
    """With dropout, any draw from the training RNG would change the weights."""
    got = {}
    for name, tokens in (("silent", 0), ("sampling", 12)):
        cfg = tiny_config(
            corpus_file,
            data={"corpus": {"sample_tokens": tokens}},
            model={"dropout": 0.2},
            train={"eval_every_steps": 2},
            output={"name": name},
        )
        got[name] = forgeml.train(cfg, quiet=True).dir
    silent, sampling = ((got[n] / "model.safetensors").read_bytes() for n in got)
    assert silent == sampling


# --------------------------------------------------------------------------- kill and resume


def resume_config(corpus: Path) -> dict:
    return merge(
        TINY,
        {
            "seed": 3,
            "data": {"source": str(corpus), "corpus": {"eval_blocks": 4, "sample_tokens": 8}},
            "model": {"dropout": 0.1},
            "train": {
                "max_steps": 24,
                "eval_every_steps": 6,
                "scheduler": {"name": "cosine", "warmup_steps": 4},
                "checkpoint": {"every_steps": 5},
            },
            "output": {"dir": "runs"},
        },
    )


def test_sigkill_mid_run_then_resume_is_byte_identical(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed (SIGKILL, a real `forgeml train` subprocess) right before the step-15 checkpoint:
    the evaluation and sample of step 12 already happened; the resume starts again from step 10
    and must end byte-identical to the run that was never interrupted (trained in-process
    meanwhile: one thread, fp32, the same bytes as the CLI)."""
    config = resume_config(corpus_file)
    reference = e2e.workdir(tmp_path, "reference", config, "lm")
    interrupted = e2e.workdir(tmp_path, "interrupted", config, "lm")
    args = ["train", "lm.yaml", "--quiet"]
    with ThreadPoolExecutor(1) as pool:
        killing = pool.submit(e2e.run_killed, interrupted, "before", 15, *args)
        monkeypatch.chdir(reference)
        forgeml.train(reference / "lm.yaml", quiet=True)
        killed = killing.result()
    run_dir = interrupted / "runs" / "lm"
    assert killed.returncode == -signal.SIGKILL, killed.describe()
    assert e2e.checkpoints(run_dir) == ["step-00000005", "step-00000010"]
    assert [(r["step"], r["split"]) for r in e2e.history(run_dir)] == [
        (6, "train"),
        (6, "val"),
        (12, "train"),
        (12, "val"),
    ]
    assert not (run_dir / "forgeml.json").exists()
    resumed = e2e.run(interrupted, *args, "--resume").check()
    assert resumed.stderr == ""
    e2e.assert_same_run(run_dir, reference / "runs" / "lm")
    steps = [r["step"] for r in e2e.history(run_dir) if r["split"] == "val"]
    assert steps == [6, 12, 18, 24]
