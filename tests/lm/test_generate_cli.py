"""Generation from a trained run: `forgeml.load(run)` is a LanguageModel (generate / stream /
complete, stop strings, seeds, batches of prompts of different lengths, prompts longer than the
context), and `forgeml generate` streams it to the terminal."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lm_helpers import ABC_BLOCK, ALPHABET

import forgeml
from forgeml.cli import main
from forgeml.errors import DataError
from forgeml.generation.language_model import LanguageModel
from forgeml.models.gpt import GPTConfig, build_gpt

LONG = ALPHABET * 2  # 54 characters: more than the context of 16


@pytest.fixture(scope="module")
def lm(abc_run) -> LanguageModel:
    return forgeml.load(abc_run.dir)


@pytest.fixture(scope="module")
def random_lm(lm: LanguageModel) -> LanguageModel:
    """Random (untied) weights with the run's tokenizer: sampling and batching are not trivial."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, tie_embeddings=False)
    return LanguageModel(build_gpt(config, lm.tokenizer.vocab_size), lm.tokenizer)


# --------------------------------------------------------------------------- Python


def test_load_gives_a_language_model(abc_run, lm: LanguageModel) -> None:
    assert isinstance(lm, LanguageModel) and lm.context_length == ABC_BLOCK
    assert isinstance(abc_run.run.load(), LanguageModel)  # the Run forgeml.train returned


def test_greedy_generation_continues_what_it_learned(lm: LanguageModel) -> None:
    assert lm.generate("abc", max_new_tokens=10, temperature=0) == "defghijklm"
    assert lm.generate("xyz", max_new_tokens=3, temperature=0) == "\nab"
    assert lm.generate("", max_new_tokens=3, temperature=0) == "abc"  # empty: from "\n"
    assert lm.generate(["abc", "pq"], max_new_tokens=2, temperature=0) == ["de", "rs"]
    [done] = lm.complete(["abc"], max_new_tokens=10, temperature=0)
    assert (done.text, done.finish_reason) == ("defghijklm", "length")
    assert (done.prompt_tokens, done.completion_tokens, done.prompt_dropped) == (3, 10, 0)


def test_stop_strings_end_the_text_before_them(lm: LanguageModel) -> None:
    assert lm.generate("abc", max_new_tokens=12, temperature=0, stop=["ij"]) == "defgh"
    assert lm.generate("abc", max_new_tokens=12, temperature=0, stop=["zz", "g"]) == "def"
    [done] = lm.complete(["abc"], max_new_tokens=12, temperature=0, stop=["ij"])
    assert (done.text, done.finish_reason) == ("defgh", "stop")


def test_stream_yields_the_text_piece_by_piece(lm: LanguageModel) -> None:
    pieces = list(lm.stream("abc", max_new_tokens=10, temperature=0))
    assert pieces == list("defghijklm")
    # The "i" that could start the stop string "ij" is held back, then dropped with it.
    assert list(lm.stream("abc", max_new_tokens=12, temperature=0, stop=["ij"])) == list("defgh")


def test_the_same_seed_gives_the_same_text(random_lm: LanguageModel) -> None:
    options = {"max_new_tokens": 24, "temperature": 1.0}
    first = random_lm.generate("abc", seed=5, **options)
    assert len(first) == 24 and random_lm.generate("abc", seed=5, **options) == first
    assert random_lm.generate("abc", seed=6, **options) != first
    assert "".join(random_lm.stream("abc", seed=5, **options)) == first


def test_batched_prompts_of_different_lengths_equal_one_by_one(random_lm: LanguageModel) -> None:
    prompts = ["a", "mnopqrs", "zz\nabcdefghij", "q"]
    options = {"max_new_tokens": 12, "temperature": 0}
    alone = [random_lm.generate(p, **options) for p in prompts]
    assert len(set(alone)) == len(prompts)  # not one text repeated: the comparison means something
    assert random_lm.generate(prompts, **options) == alone


def test_a_prompt_longer_than_the_context_is_cut_from_the_left(lm: LanguageModel) -> None:
    [done] = lm.complete([LONG], max_new_tokens=4, temperature=0)
    assert done.prompt_dropped == len(LONG) - (ABC_BLOCK - 4)
    assert done.prompt_tokens == ABC_BLOCK - 4
    assert done.text == "abcd"  # continued from the kept end of the prompt


def test_a_prompt_character_the_model_never_saw_is_named(lm: LanguageModel) -> None:
    with pytest.raises(DataError, match=r"never saw: '!'"):
        lm.generate("abc!", max_new_tokens=2)


class Recorder:
    """A stdout that records writes and flushes in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def write(self, text: str) -> int:
        self.events.append(text)
        return len(text)

    def flush(self) -> None:
        self.events.append("<flush>")


def test_the_cli_flushes_each_piece_as_it_comes(abc_run, monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    args = ["generate", str(abc_run.dir), "--prompt", "abc", "--max-new-tokens", "4"]
    assert main([*args, "--temperature", "0"]) == 0
    assert out.events == [
        "abc",
        "d",
        "<flush>",
        "e",
        "<flush>",
        "f",
        "<flush>",
        "g",
        "<flush>",
        "\n",
    ]


# --------------------------------------------------------------------------- CLI


def forgeml_cli(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forgeml", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_calls(abc_run) -> dict[str, subprocess.CompletedProcess]:
    """The real CLI in subprocesses, started together (each pays seconds of imports)."""
    run = str(abc_run.dir)
    calls = {
        "seeded": (
            [run, "--prompt", "abc", "--max-new-tokens", "12", "--temperature", "1.5"]
            + ["--seed", "7", "--stop", "ij"],
            None,
        ),
        "stdin": ([run, "--prompt", "-", "--max-new-tokens", "4", "--temperature", "0"], LONG),
        "unseen": ([run, "--prompt", "abc!"], None),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {
            name: pool.submit(forgeml_cli, abc_run.dir.parent, "generate", *args, stdin=stdin)
            for name, (args, stdin) in calls.items()
        }
        return {name: future.result() for name, future in futures.items()}


def test_cli_generates_what_python_generates(cli_calls, lm: LanguageModel) -> None:
    done = cli_calls["seeded"]
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = lm.generate("abc", max_new_tokens=12, temperature=1.5, seed=7, stop=["ij"])
    assert "ij" not in text and done.stdout == f"abc{text}\n"


def test_cli_reads_the_prompt_from_stdin_and_notes_the_cut(cli_calls) -> None:
    done = cli_calls["stdin"]
    assert done.returncode == 0, done.stderr
    assert done.stdout == LONG + "abcd\n"
    dropped = len(LONG) - (ABC_BLOCK - 4)
    assert done.stderr == (
        f"note: the prompt ({len(LONG)} tokens) and 4 new tokens do not fit the context of "
        f"{ABC_BLOCK} tokens; the prompt's first {dropped} tokens were left out\n"
    )


def test_cli_names_a_prompt_character_the_model_never_saw(cli_calls) -> None:
    done = cli_calls["unseen"]
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the text has characters"), done.stderr
    assert "'!'" in lines[0]
