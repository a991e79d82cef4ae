"""Bad input to language-model training and generation: a clear ForgeError in Python, and through
the CLI one `error: ...` line on stderr with exit code 2 and no traceback.

The CLI cases run in one subprocess (`DRIVER`), each as `python -m forgeml ...` would run it
(`runpy` of forgeml/__main__.py, its SystemExit code, its stderr): one start-up instead of one per
case. Generation's own bad input is in test_generate_cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lm_helpers import TINY, merge

import forgeml
from forgeml.errors import ForgeError

DRIVER = """
import contextlib, io, json, runpy, sys, traceback
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    sys.argv = ["forgeml", *argv]
    code = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            runpy.run_module("forgeml", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc(file=err)
    results.append({"code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print(json.dumps(results))
"""

GOOD = "to be or not to be, that is the question\n" * 20


def write_files(root: Path) -> None:
    (root / "good.txt").write_text(GOOD)
    (root / "empty.txt").write_text("")
    (root / "short.txt").write_text("to be\n")
    (root / "latin1.txt").write_bytes(b"fine\nfine\ncaf\xe9\nfine\n")
    (root / "docs.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n')


def no_corpus(cfg: dict[str, Any]) -> dict[str, Any]:
    del cfg["data"]["corpus"]
    return cfg


def mlp(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg["model"] = {"name": "mlp"}
    return cfg


# name: (source, changes to TINY or a function of the config, what the message must say)
CASES: dict[str, tuple[str, Any, str]] = {
    "empty corpus": ("empty.txt", {}, "the corpus {root}/empty.txt is empty (0 bytes)"),
    "shorter than a block": (
        "short.txt",
        {},
        "the train split of the corpus has 6 tokens, fewer than one block of block_size + 1 = 17",
    ),
    "block larger than the model's": (
        "good.txt",
        {"data": {"corpus": {"block_size": 32}}},
        "data.corpus.block_size=32 is larger than the model's context of 16 positions",
    ),
    "non-UTF-8": ("latin1.txt", {}, "{root}/latin1.txt, line 3: not valid UTF-8"),
    "gpt without a corpus": ("good.txt", no_corpus, "add a data.corpus section"),
    "corpus with a non-LM model": ("good.txt", mlp, "data.corpus trains a language model"),
    "source matching nothing": ("{root}/*.md", {}, "data.source '{root}/*.md' matches no file"),
    "JSONL line without the field": (
        "docs.jsonl",
        {},
        "{root}/docs.jsonl, line 2: no text field 'text' (a string); set data.corpus.field",
    ),
    "unknown builtin": ("builtin:books", {}, "unknown corpus 'builtin:books'"),
    "sample prompt the vocabulary lacks": (
        "good.txt",
        {"data": {"corpus": {"sample_prompt": "ROMEO:"}}},
        "data.corpus.sample_prompt='ROMEO:': the text has characters",
    ),
}


def config(root: Path, name: str) -> tuple[dict[str, Any], str]:
    source, change, message = CASES[name]
    cfg = merge(TINY, {"output": {"dir": str(root / "runs")}})
    source = source.format(root=root)
    cfg["data"]["source"] = source if source.startswith("builtin:") else str(root / source)
    cfg = change(cfg) if callable(change) else merge(cfg, change)
    return cfg, message.format(root=root)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm-bad-input")
    write_files(root)
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_python_raises_a_clear_forge_error(root: Path, name: str) -> None:
    cfg, message = config(root, name)
    with pytest.raises(ForgeError) as raised:
        forgeml.train(cfg, quiet=True)
    assert message in " ".join(str(raised.value).split())


@pytest.fixture(scope="module")
def cli_results(root: Path) -> dict[str, dict[str, Any]]:
    argvs = []
    for i, name in enumerate(CASES):
        cfg, _ = config(root, name)
        path = root / f"case{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        argvs.append(["train", str(path), "--quiet"])
    run = str(root / "no-such-run")
    extra = {
        "generate: no run directory": ["generate", run, "--prompt", "x"],
        "generate: no new tokens": ["generate", run, "--prompt", "x", "--max-new-tokens", "0"],
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argvs + list(extra.values()))],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    return dict(zip([*CASES, *extra], results, strict=True))


EXTRA_MESSAGES = {
    "generate: no run directory": "no-such-run does not exist",
    "generate: no new tokens": "--max-new-tokens 0: expected at least 1",
}


@pytest.mark.parametrize("name", [*CASES, *EXTRA_MESSAGES])
def test_cli_prints_one_error_line_and_exits_2(
    root: Path, cli_results: dict[str, dict[str, Any]], name: str
) -> None:
    result = cli_results[name]
    message = EXTRA_MESSAGES.get(name) or config(root, name)[1]
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
    assert message in lines[0]
    assert "Traceback" not in result["stdout"]


def test_a_data_error_keeps_the_previous_run(
    tiny_config: Callable[..., dict[str, Any]], root: Path, tmp_path: Path
) -> None:
    """output.overwrite=true replaces a finished run only once the new data is known good."""
    good = tiny_config(root / "good.txt", train={"max_steps": 2})
    run = forgeml.train(good, quiet=True)
    weights = (run.dir / "model.safetensors").read_bytes()
    for source in ("empty.txt", "short.txt", "latin1.txt"):
        bad = merge(good, {"data": {"source": str(root / source)}, "output": {"overwrite": True}})
        with pytest.raises(ForgeError):
            forgeml.train(bad, quiet=True)
        assert (run.dir / "forgeml.json").is_file()
        assert (run.dir / "model.safetensors").read_bytes() == weights
    assert isinstance(forgeml.load(run.dir).generate("to be", max_new_tokens=3), str)
