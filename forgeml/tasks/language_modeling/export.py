"""A language-model run (`model.name: gpt`) as an exported graph, checked like the others.

    export_run("runs/gpt-char", format="onnx")   # -> runs/gpt-char/export/onnx/
      model.onnx     tokens (B, T) int64 -> logits (B, T, V) float32: the plain causal forward
                     over the whole input; B and T (1..block_size) are dynamic
      export.json    as for the other families, plus the tokenizer, the context length and
                     "kv_cache": false
      forgeml.json, config.yaml, tokenizer/   copied from the run: text -> ids and ids -> text

The graph has no KV cache: every call recomputes all T positions, so n new tokens cost n full
forwards (fine for scoring text and short continuations; `forgeml generate` and `forgeml serve`
run the torch model with its cache). The export harness (forgeml/export/) does the rest, as for
every task.

The check: windows of the run's corpus (the start of data.val_source, else of data.source), of
`data` (a text file, folder or glob, read as a corpus is) when given, or random ids when the
corpus is not readable any more, cut into batches of different sizes and lengths (the trace
example, the full context, one token, about half the context) and compared with the eager model
in fp32. A max abs diff above the tolerance fails and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from forgeml.config import load_config
from forgeml.data.corpus import iter_text, resolve_files
from forgeml.data.tokenizer import LMTokenizer
from forgeml.errors import ConfigError, DataError, ForgeError
from forgeml.inference.graph import GraphInput, GraphOutput, GraphSpec
from forgeml.models.registry import build_model
from forgeml.run_dir import MANIFEST, load_weights, read_config_dict, read_manifest
from forgeml.schema import TokenSpec

Log = Callable[[str], None]
INPUT_NAME = "tokens"  # (B, T) int64
OUTPUT_NAME = "logits"  # (B, T, V) float32
COPIED = ("config.yaml", "tokenizer", MANIFEST)  # tokenizer/: text <-> ids for the graph
EXAMPLE_LENGTH = 8  # tokens per row of the example the export is traced with
CHECK_BYTES = 1 << 16  # corpus text read for the check windows (tiled when it is shorter)


class TokensToLogits(nn.Module):
    """tokens (B, T) int64 -> logits (B, T, V): GPT.forward without a cache, positional inputs
    (ONNX has no keyword or dict inputs; `*tensors`, as every task's graph takes them)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *tensors: Tensor) -> Tensor:
        (tokens,) = tensors
        return self.model(tokens)  # (B, T, V)


def export_spec(run_dir: Path, *, data: Any, log: Log) -> GraphSpec:
    """The run's GPT as tokens -> logits, checked on windows of its corpus (see the docstring)."""
    manifest = read_manifest(run_dir)
    cfg = load_config(read_config_dict(run_dir))
    if cfg.model.name != "gpt":
        # A pretrained causal LM's run keeps no copy of the checkpoint's config.json: it is
        # rebuilt from model.path, which export must not depend on.
        raise ForgeError(
            f"{run_dir} is a language model of model.name: {cfg.model.name} (head: "
            f"{getattr(cfg.model, 'head', '?')}); forgeml exports language models of "
            "model.name: gpt only; export this checkpoint with Hugging Face tooling (e.g. "
            "optimum-cli export onnx), or train a model.name: gpt model to export it"
        )
    tokenizer = LMTokenizer.from_file(
        run_dir / "tokenizer", kind=manifest.get("tokenizer", "pretrained")
    )
    model = build_model(cfg.model, TokenSpec(tokenizer.vocab_size))
    load_weights(run_dir, manifest, model)
    wrapper = TokensToLogits(model.eval()).eval()
    block = int(model.config.block_size)
    shapes = check_shapes(block)
    stream, where = check_tokens(cfg, tokenizer, data, sum(b * t for b, t in shapes), log)
    batches = cut_batches(stream, shapes)
    length = _sequence_dim(block)
    return GraphSpec(
        inputs=[GraphInput(INPUT_NAME, INPUT_NAME, "int64", ("batch", length), block)],
        output=GraphOutput(OUTPUT_NAME, "float32", ("batch", length, int(model.config.vocab_size))),
        eager=wrapper,
        traced=wrapper,
        onnx_traced=wrapper,
        example=(batches[0],),
        batches=[(tokens,) for tokens in batches],
        described=[_describe(tokens) for tokens in batches],
        data=where,
        copied=COPIED,
        fields={
            "context_length": block,
            "kv_cache": False,
            "tokenizer": {
                "file": "tokenizer/tokenizer.json",
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "eos_token": tokenizer.eos_token,
                "eos_id": tokenizer.eos_id,
            },
        },
    )


def _sequence_dim(block: int) -> int | str:
    return "sequence" if block >= 2 else 1  # a context of one position is a constant


# --------------------------------------------------------------------------- check data


def check_shapes(block: int) -> list[tuple[int, int]]:
    """(rows, tokens) of the check batches: the trace example first (at least 2 rows: a size of
    1 would be taken as a constant), the full context, one token per row, ~half the context."""
    shapes = [(2, min(EXAMPLE_LENGTH, block)), (1, block), (3, 1), (4, block // 2 + 1)]
    return [s for i, s in enumerate(shapes) if s not in shapes[:i] and s[1] <= block]


def check_tokens(cfg: Any, tokenizer: Any, data: Any, needed: int, log: Log) -> tuple[Tensor, str]:
    """At least `needed` token ids (1-D int64) to cut the check batches from, and their origin.

    `data` (a text file, folder or glob) must be readable and encodable; the run's own corpus
    may have moved since training, and then random ids (any id is a valid input) stand in.
    """
    source = str(data) if data is not None else (cfg.data.val_source or cfg.data.source)
    try:
        files = resolve_files(source)
        # Documents end with "\x00" in iter_text; a newline is in every tokenizer's alphabet.
        text = "".join(iter_text(files, cfg.data.corpus.field, 0, CHECK_BYTES))
        ids = tokenizer.encode(text.replace("\x00", "\n"))
    except (ConfigError, DataError) as exc:
        if data is not None:
            raise DataError(f"--data {data}: {exc}") from None
        log(f"the run's corpus is not readable ({exc}); checking on random token ids")
        ids = []
    if not ids:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, tokenizer.vocab_size, (needed,), generator=gen), "random ids"
    stream = torch.tensor(ids, dtype=torch.long)
    where = f"{min(len(ids), needed)} tokens of {source}"
    if len(stream) < needed:  # a short text: repeat it
        stream = stream.repeat(-(-needed // len(stream)))
        where += " (repeated)"
    return stream, where


def cut_batches(stream: Tensor, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """(rows, T) int64 batches of consecutive windows of `stream`, in `shapes` order."""
    batches, start = [], 0
    for rows, length in shapes:
        batches.append(stream[start : start + rows * length].view(rows, length))
        start += rows * length
    return batches


def _describe(tokens: Tensor) -> str:
    rows, length = tokens.shape
    return f"{rows} row{'s' if rows != 1 else ''} of {length} token{'s' if length != 1 else ''}"
