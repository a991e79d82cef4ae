"""Language-model training: corpus -> tokens -> the one training loop -> a run directory.

`forgeml.train(config)` comes here when the config has a `data.corpus` section. Everything the
loop offers applies (AdamW decay groups, warmup + cosine, accumulation, bf16 autocast, clipping,
checkpoints and exact resume, torchrun); this file adds what is particular to language models:
token blocks instead of table rows, the next-token loss, evaluation loss and perplexity every
`train.eval_every_steps`, a text sample at each evaluation, tokens/s and MFU in the log.

The run directory is the usual one, with `tokenizer/` in place of `preprocess/`:

    runs/NAME/ forgeml.json (task language_modeling) config.yaml model.safetensors tokenizer/
               metrics.json history.jsonl checkpoints/ training_curves.png
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from forgeml.config import Config
from forgeml.data.corpus import Corpus, TokenBlocks, load_corpus
from forgeml.errors import ConfigError, DataError
from forgeml.run_dir import read_manifest
from forgeml.runtime import pick_device
from forgeml.training.distributed import barrier, is_main
from forgeml.training.loop import evaluate, fit
from forgeml.training.resume import checkpointer_for, open_run
from forgeml.training.strategy import full_state_dict

TASK = "language_modeling"


def lm_loss(outputs: Tensor, target: Tensor) -> Tensor:
    """Mean next-token cross-entropy: outputs (B, T, V) logits, target (B, T) ids."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), target.reshape(-1))


def build_lm(cfg: Config, vocab_size: int, *, run_dir: Path | None = None) -> nn.Module:
    """The model of `cfg.model` for a tokenizer of `vocab_size` ids, seeded by `cfg.seed`.

    `run_dir`: rebuilding the model of this finished run (weights loaded next): a pretrained
    causal LM is then built from the files the run keeps (RUN/pretrained/), never `model.path`.
    """
    torch.manual_seed(cfg.seed)
    if cfg.model.name == "gpt":
        from forgeml.models.gpt import build_gpt

        return build_gpt(cfg.model, vocab_size)
    from forgeml.models.registry import build_model

    model = build_model(cfg.model, None, run_dir=run_dir)  # a pretrained causal LM
    rows = model.model.get_input_embeddings().num_embeddings
    if vocab_size > rows:
        raise ConfigError(
            f"the tokenizer has {vocab_size:,} ids but model.path {cfg.model.path} embeds only "
            f"{rows:,}; use the checkpoint's own tokenizer (data.corpus.tokenizer=pretrained, "
            "no data.corpus.tokenizer_path)"
        )
    return model


def context_length(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "block_size", None) or getattr(model, "context_length", None)
    if size is None:
        raise ConfigError(f"cannot tell the context length of {type(model).__name__}")
    return int(size)


def train_lm(
    cfg: Config,
    *,
    console: Console,
    log: Callable[[str], None],
    quiet: bool,
    callbacks: Sequence[Any] = (),
    resume: bool | str | Path | None = None,
):
    from forgeml.api import Run, _HistoryWriter

    corpus_cfg = cfg.data.corpus
    main = is_main()
    model_block = getattr(cfg.model, "block_size", None)
    if corpus_cfg.block_size and model_block and corpus_cfg.block_size > model_block:
        raise ConfigError(  # before tokenizing a corpus for nothing
            f"data.corpus.block_size={corpus_cfg.block_size} is larger than the model's "
            f"context of {model_block} positions; lower it or raise model.block_size"
        )
    pretrained = _pretrained_path(cfg)
    cache = Path(corpus_cfg.cache_dir or Path(cfg.output.dir) / ".cache")
    load = lambda build: load_corpus(  # noqa: E731
        cfg.data.source,
        cfg.data.val_source,
        corpus_cfg,
        cache_root=cache,
        pretrained_tokenizer=Path(pretrained) if pretrained else None,
        build=build,
        log=log,
    )
    corpus = load(True) if main else None
    barrier()  # rank 0 built the token cache; the others map it
    corpus = corpus or load(False)

    model = build_lm(cfg, corpus.tokenizer.vocab_size).to(pick_device())
    block = corpus_cfg.block_size or context_length(model)
    if block > context_length(model):
        raise ConfigError(
            f"data.corpus.block_size={block} is larger than the model's context of "
            f"{context_length(model)} positions; lower it or raise model.block_size"
        )
    train = TokenBlocks(corpus.train, block, split="train")
    val = (
        TokenBlocks.spread(corpus.val, block, corpus_cfg.eval_blocks) if _has(corpus.val) else None
    )
    sampler = Sampler(model, corpus, corpus_cfg, log) if main and val is not None else None
    # The run directory is opened once the data is known to be good: a data mistake must not
    # clear the directory of an earlier run (output.overwrite=true).
    run_dir, checkpoint = open_run(cfg, resume, log, writer=main)
    if main:
        run_dir.write_text("config.yaml", cfg.to_yaml())
        corpus.tokenizer.save(run_dir.path / "tokenizer")

    flops = model.flops_per_token() if hasattr(model, "flops_per_token") else None
    params = sum(p.numel() for p in model.parameters())
    log(
        f"model {cfg.model.name}: {params:,} parameters"
        + (f", {flops / 1e6:,.1f} MFLOPs per token (training)" if flops else "")
        + f"; vocabulary {corpus.tokenizer.vocab_size:,}; context {block}; "
        f"{len(corpus.train):,} train tokens"
        + (f", {len(val) * block:,} val tokens per evaluation" if val is not None else "")
    )
    throughput = Throughput(block, flops, cfg.train.precision, log) if not quiet else None
    extra = [c for c in (sampler,) if c is not None]
    result = fit(
        model,
        train,
        val,
        cfg.train,
        task=TASK,
        loss_fn=lm_loss,
        seed=cfg.seed,
        callbacks=[_HistoryWriter(run_dir), *extra, *callbacks] if main else [],
        console=console,
        quiet=quiet,
        checkpointer=checkpointer_for(run_dir, cfg, writer=main),
        resume=checkpoint,
        log_extras=throughput.describe if throughput else None,
    )
    log(
        f"stopped after {result.steps} steps "
        f"({result.steps * cfg.train.batch_size * cfg.train.grad_accum_steps * block:,} "
        f"tokens): {result.stop_reason}; precision {result.precision}"
    )
    eval_batch = cfg.train.eval_batch_size or 4 * cfg.train.batch_size
    splits = {
        "train": TokenBlocks.spread(corpus.train, block, corpus_cfg.eval_blocks, split="train")
    }
    if val is not None:
        splits["val"] = val
    metrics = {
        name: evaluate(
            model,
            blocks,
            task=TASK,
            loss_fn=lm_loss,
            batch_size=eval_batch,
            precision=result.precision,
        )
        for name, blocks in splits.items()
    }
    weights = full_state_dict(model)
    if main:
        from forgeml.lm.save import save_lm_run

        save_lm_run(run_dir, cfg, model, corpus, result, metrics, weights, block=block)
        read_manifest(run_dir.path)
    barrier()
    if not quiet:
        from forgeml.training.progress import summary_table

        console.print(summary_table(metrics, title="final metrics (val: the held-out tail)"))
        console.print(f"run directory: {run_dir.path}", highlight=False)
    return Run(run_dir.path, cfg, metrics, result.stop_reason, result.history)


def validate_lm(cfg: Config, log: Callable[[str], None]) -> str:
    """What `forgeml validate` says of a language-model config: corpus, tokenizer, model."""
    pretrained = _pretrained_path(cfg)
    corpus = load_corpus(
        cfg.data.source,
        cfg.data.val_source,
        cfg.data.corpus,
        cache_root=Path(cfg.data.corpus.cache_dir or Path(cfg.output.dir) / ".cache"),
        pretrained_tokenizer=Path(pretrained) if pretrained else None,
        log=log,
    )
    model = build_lm(cfg, corpus.tokenizer.vocab_size)
    block = cfg.data.corpus.block_size or context_length(model)
    if block > context_length(model):
        raise ConfigError(
            f"data.corpus.block_size={block} is larger than the model's context of "
            f"{context_length(model)} positions; lower it or raise model.block_size"
        )
    TokenBlocks(corpus.train, block)  # at least one block of train text
    if _has(corpus.val):
        TokenBlocks(corpus.val, block)
    params = sum(p.numel() for p in model.parameters())
    return (
        f"task {TASK}; {len(corpus.train):,} train and "
        f"{0 if corpus.val is None else len(corpus.val):,} val tokens "
        f"({corpus.tokenizer.kind} tokenizer, {corpus.tokenizer.vocab_size:,} ids); "
        f"model {cfg.model.name} with {params:,} parameters, context {block}"
    )


def _has(tokens) -> bool:
    return tokens is not None and len(tokens) > 0


def _pretrained_path(cfg: Config) -> str | None:
    """model.path of a pretrained causal LM (its tokenizer.json is the corpus's), else None.

    Raises:
        ConfigError: a pretrained model with a char or bpe corpus tokenizer, whose ids would
            mean nothing to the checkpoint's embeddings.
    """
    if cfg.model.name != "pretrained":
        return None
    kind = cfg.data.corpus.tokenizer
    if kind != "pretrained":
        raise ConfigError(
            f"data.corpus.tokenizer={kind}: model.name=pretrained reads text with its "
            "checkpoint's own tokenizer; set data.corpus.tokenizer=pretrained"
        )
    return cfg.model.path


class Throughput:
    """tokens/s and model-FLOPs utilisation for the periodic log line.

    MFU = training FLOPs per token x tokens/s / the machine's matmul peak, measured once per
    process (fp32 and bf16) with a large matmul on the training device.
    """

    def __init__(self, block: int, flops_per_token: int | None, precision: str, log) -> None:
        self.block, self.flops = block, flops_per_token
        self.peaks = measured_peaks() if flops_per_token else {}
        self.precision = precision
        if self.peaks:
            log(
                "matmul peak on this machine: "
                + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in self.peaks.items())
            )

    def describe(self, samples_per_s: float) -> str:
        tokens = samples_per_s * self.block
        text = f"{tokens:,.0f} tok/s"
        if self.flops and self.peaks:
            peak = self.peaks["bf16" if self.precision == "bf16" else "fp32"]
            text += f" MFU {self.flops * tokens / peak:.1%}"
        return text


_PEAKS: dict[str, float] = {}


def measured_peaks(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a (size x size) @ (size x size) matmul, fp32 and bf16, best of `repeats`."""
    if not _PEAKS:
        device = pick_device()
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            a @ b  # warm-up (and, on a GPU, kernel selection)
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                (a @ b).sum().item()
                best = min(best, time.perf_counter() - start)
            _PEAKS[name] = 2 * size**3 / best
    return dict(_PEAKS)


class Sampler:
    """Prints a short generated text after each validation evaluation (rank 0 only).

    Its sampling generator is seeded from the step, so a sample never draws from the training
    RNG: runs with and without samples train identically, and resumes stay exact.
    """

    def __init__(self, model: nn.Module, corpus: Corpus, cfg, log) -> None:
        self.model, self.tokenizer, self.cfg, self.log = model, corpus.tokenizer, cfg, log
        self.prompt: list[int] = []
        if cfg.sample_tokens:
            try:  # checked before training, not at the first evaluation
                self.prompt = self.tokenizer.encode(cfg.sample_prompt)
            except DataError as exc:
                raise ConfigError(
                    f"data.corpus.sample_prompt={cfg.sample_prompt!r}: {exc}"
                ) from None

    def on_eval_end(self, row: dict[str, Any]) -> None:
        if row["split"] != "val" or not self.cfg.sample_tokens:
            return
        from forgeml.generation.sampling import generate

        prompt = self.prompt or [self.tokenizer.eos_id or 0]
        room = context_length(self.model) - 1
        out = generate(
            self.model,
            [prompt],
            max_new_tokens=min(self.cfg.sample_tokens, room),
            temperature=0.8,
            top_k=200,
            seed=row["step"],
            eos_token_id=self.tokenizer.eos_id,
        )
        text = self.tokenizer.decode(out.tokens[0])
        self.log(f"sample at step {row['step']}: {text!r}")
