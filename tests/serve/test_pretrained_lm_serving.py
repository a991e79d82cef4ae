"""A fine-tuned pretrained causal LM (`model.name: pretrained`, `head: causal_lm`) behind
`forgeml serve`: the official `openai` client completes and streams from it, with the same
greedy text as `forgeml.load(RUN).generate` in this process, after the checkpoint directory
the run was trained from is gone (the server reads only the run directory).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from serve_helpers import ServerProcess  # noqa: E402

import forgeml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_pretrained import tiny_causal  # noqa: E402

TEXT = "hello world, the quick brown fox\n" * 200
PROMPT = "hello world, the"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hf-serve")
    (root / "corpus.txt").write_text(TEXT)
    folder = tiny_causal(root / "gpt2", "gpt2")
    config = {
        "seed": 0,
        "data": {
            "source": str(root / "corpus.txt"),
            "corpus": {"tokenizer": "pretrained", "block_size": 16, "eval_blocks": 4},
        },
        "model": {"name": "pretrained", "path": str(folder), "head": "causal_lm"},
        "train": {
            "batch_size": 8,
            "max_steps": 30,
            "precision": "fp32",
            "eval_every_steps": 30,
            "optimizer": {"name": "adamw", "lr": 1.0e-2},
        },
        "output": {"dir": str(root / "runs"), "name": "hf-lm"},
    }
    run = forgeml.train(config, quiet=True).dir
    shutil.rmtree(folder)
    server = ServerProcess(root / "server.log", [str(run), "--max-tokens", "16"])
    try:
        server.wait_ready()
        yield run, server
    finally:
        assert server.stop() == 0, server.log


def test_openai_client_completes_and_streams_what_the_run_generates(served) -> None:
    run, server = served
    expected = forgeml.load(run).generate(PROMPT, max_new_tokens=8, temperature=0)
    assert expected.startswith(" quick brown fox"), expected  # it learned the corpus
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["hf-lm"]

    done = client.completions.create(model="hf-lm", prompt=PROMPT, max_tokens=8, temperature=0)
    assert done.choices[0].text == expected
    assert done.usage.completion_tokens == 8

    chunks = client.completions.create(
        model="hf-lm", prompt=PROMPT, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == expected

    # Over --max-tokens: a 4xx naming the field, and the server goes on serving.
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        client.completions.create(model="hf-lm", prompt=PROMPT, max_tokens=17)
    again = client.completions.create(model="hf-lm", prompt=PROMPT, max_tokens=8, temperature=0)
    assert again.choices[0].text == expected
