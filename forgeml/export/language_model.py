"""Export a language-model run (`model.name: gpt`) to ONNX or TorchScript, checked like the others.

    export_run("runs/gpt-char", format="onnx")   # -> runs/gpt-char/export/onnx/
      model.onnx     tokens (B, T) int64 -> logits (B, T, V) float32: the plain causal forward
                     over the whole input; B and T (1..block_size) are dynamic
      export.json    as for the other families, plus the tokenizer, the context length and
                     "kv_cache": false
      forgeml.json, config.yaml, tokenizer/   copied from the run: text -> ids and ids -> text

The graph has no KV cache: every call recomputes all T positions, so n new tokens cost n full
forwards (fine for scoring text and short continuations; `forgeml generate` and `forgeml serve`
run the torch model with its cache). `export_run` (forgeml/export.py) sends language-model runs
here; the staging, the copy of the run's files and export.json's common fields are its own.

The check: windows of the run's corpus (the start of data.val_source, else of data.source), of
`data` (a text file, folder or glob, read as a corpus is) when given, or random ids when the
corpus is not readable any more, cut into batches of different sizes and lengths (the trace
example, the full context, one token, about half the context) and compared with the eager model
in fp32. A max abs diff above the tolerance fails and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from forgeml.errors import ConfigError, DataError, ForgeError
from forgeml.export.harness import (
    OPSET,
    ExportResult,
    Log,
    _check_output,
    _run_torchscript,
    checked_torchscript_export,
    first_passing_onnx_export,
    write_export,
)
from forgeml.inference.onnx_backend import (
    EXPORT_FORMAT_VERSION,
    _need_onnx,
    _session,
    default_output,
)
from forgeml.run_dir import MANIFEST, load_weights, read_config_dict, sha256_file, versions

INPUT_NAME = "tokens"  # (B, T) int64
OUTPUT_NAME = "logits"  # (B, T, V) float32
COPIED = ("config.yaml", "tokenizer", MANIFEST)  # tokenizer/: text <-> ids for the graph
EXAMPLE_LENGTH = 8  # tokens per row of the example the export is traced with
CHECK_BYTES = 1 << 16  # corpus text read for the check windows (tiled when it is shorter)


class TokensToLogits(nn.Module):
    """tokens (B, T) int64 -> logits (B, T, V): GPT.forward without a cache, one positional
    input (ONNX has no keyword or dict inputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens)  # (B, T, V)


def export_lm_run(
    run_dir: Path,
    manifest: dict[str, Any],
    *,
    format: str,
    output: str | Path | None,
    data: Any,
    tolerance: float,
    log: Log,
) -> ExportResult:
    """`export_run` for a language-model run: see the module docstring."""
    from forgeml.config import load_config
    from forgeml.data.tokenizer import LMTokenizer
    from forgeml.models.gpt import build_gpt
    from forgeml.schema import TokenSpec

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
    if format == "onnx":
        _need_onnx()  # before any work
    out = Path(output) if output is not None else default_output(run_dir, format)
    _check_output(out, run_dir)
    tokenizer = LMTokenizer.from_file(
        run_dir / "tokenizer", kind=manifest.get("tokenizer", "pretrained")
    )
    model = build_gpt(cfg.model, TokenSpec(tokenizer.vocab_size))
    load_weights(run_dir, manifest, model)
    wrapper = TokensToLogits(model.eval()).eval()
    block = int(model.config.block_size)
    shapes = check_shapes(block)
    stream, where = check_tokens(cfg, tokenizer, data, sum(b * t for b, t in shapes), log)
    batches = cut_batches(stream, shapes)
    example = batches[0]
    export = _export_checked_onnx if format == "onnx" else _export_checked_torchscript

    def manifest_for(path: Path, exporter: str, diff: float, notes: dict[str, str]) -> dict:
        return {
            "export_format_version": EXPORT_FORMAT_VERSION,
            "format": format,
            "file": path.name,
            "sha256": sha256_file(path),
            "exporter": exporter,
            **({"opset": OPSET} if format == "onnx" else {}),
            **({"exporter_failures": notes} if notes else {}),
            "task": manifest.get("task"),
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "key": INPUT_NAME,
                    "dtype": "int64",
                    "shape": ["batch", _sequence_dim(block)],
                    "max_length": block,
                }
            ],
            "output": {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "shape": ["batch", _sequence_dim(block), int(model.config.vocab_size)],
            },
            "context_length": block,
            "kv_cache": False,
            "tokenizer": {
                "file": "tokenizer/tokenizer.json",
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "eos_token": tokenizer.eos_token,
                "eos_id": tokenizer.eos_id,
            },
            "check": {
                "max_abs_diff": diff,
                "tolerance": tolerance,
                "data": where,
                "batches": [_describe(b) for b in batches],
            },
            "run": {
                "directory": str(run_dir.resolve()),
                "model": manifest.get("model"),
                "task": manifest.get("task"),
                "weights_sha256": manifest.get("weights_sha256"),
            },
            "weights_sha256": manifest.get("weights_sha256"),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(format),
        }

    return write_export(
        run_dir,
        out,
        format,
        COPIED,
        lambda path: export(wrapper, example, batches, block, path, tolerance, log),
        manifest_for,
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
    from forgeml.data.corpus import iter_text, resolve_files

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


def compare_logits(
    run: Callable[[Tensor], np.ndarray], model: nn.Module, batches: Sequence[Tensor]
) -> tuple[float, str]:
    """Max abs diff between `run(tokens)` and the eager `model(tokens)` over `batches`, and the
    batch where it is largest. Non-finite or misshapen outputs count as inf."""
    worst, where = -1.0, ""
    for tokens in batches:
        with torch.no_grad():
            expected = model(tokens).float().numpy()  # (B, T, V)
        got = np.asarray(run(tokens))
        if got.shape != expected.shape:
            diff = float("inf")
        else:
            # float32: a (B, T, V) array of a real vocabulary is large, and the difference of
            # two close float32 numbers is exact.
            diff = float(np.abs(got.astype(np.float32, copy=False) - expected).max())
            diff = diff if np.isfinite(diff) else float("inf")
        if diff > worst:
            worst, where = diff, _describe(tokens)
    return worst, where


# --------------------------------------------------------------------------- exporters


def _export_onnx_dynamo(wrapper: nn.Module, example: Tensor, block: int, path: Path) -> None:
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if block >= 2:
        dims[1] = torch.export.Dim("sequence", min=1, max=block)
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(dims,),
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )


def _export_onnx_torchscript(wrapper: nn.Module, example: Tensor, block: int, path: Path) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if block >= 2:
        axes[INPUT_NAME][1] = axes[OUTPUT_NAME][1] = "sequence"
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        opset_version=OPSET,
        do_constant_folding=True,
    )


def _run_onnx(path: Path) -> Callable[[Tensor], np.ndarray]:
    session = _session(path)

    def run(tokens: Tensor) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: tokens.numpy()})[0]

    return run


def _export_checked_onnx(
    wrapper: nn.Module,
    example: Tensor,
    batches: Sequence[Tensor],
    block: int,
    path: Path,
    tolerance: float,
    log: Log,
) -> tuple[str, float, dict[str, str]]:
    """Each ONNX exporter in turn until one passes the check, as for the other families."""
    return first_passing_onnx_export(
        {
            "dynamo": lambda: _export_onnx_dynamo(wrapper, example, block, path),
            "torchscript-based": lambda: _export_onnx_torchscript(wrapper, example, block, path),
        },
        lambda: compare_logits(_run_onnx(path), wrapper, batches),
        path,
        tolerance,
        log,
    )


def _export_checked_torchscript(
    wrapper: nn.Module,
    example: Tensor,
    batches: Sequence[Tensor],
    block: int,
    path: Path,
    tolerance: float,
    log: Log,
) -> tuple[str, float, dict[str, str]]:
    def export() -> None:
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(wrapper, (example,), check_trace=False), str(path))

    def check() -> tuple[float, str]:
        run = _run_torchscript(path)  # takes the positional inputs: here the tokens alone
        return compare_logits(lambda tokens: run((tokens,)), wrapper, batches)

    return checked_torchscript_export(export, check, tolerance, log)


def _versions(format: str) -> dict[str, str]:
    library = dict(versions())
    if format == "onnx":
        import onnx
        import onnxruntime

        library.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return library
