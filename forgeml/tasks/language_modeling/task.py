"""The language-modelling task: a text corpus -> tokens -> next-token prediction -> generation.

A config with a `data.corpus` section trains a language model (model.name: gpt, or a pretrained
checkpoint with head: causal_lm) on blocks of the corpus's token stream: one long epoch with an
evaluation every `train.eval_every_steps`, a text sample at each evaluation, tokens/s and MFU in
the log. Its runs keep the tokenizer in RUN/tokenizer/ and load as a `LanguageModel`
(generate / stream), are served by the OpenAI-compatible routes and export as tokens -> logits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from forgeml.config import Config
from forgeml.data.corpus import TokenBlocks
from forgeml.errors import ConfigError, ForgeError
from forgeml.generation.language_model import LanguageModel
from forgeml.models.registry import is_generative
from forgeml.tasks.base import Log, RunRecord, TaskSteps
from forgeml.tasks.language_modeling.callbacks import Sampler, Throughput
from forgeml.tasks.language_modeling.evaluate import evaluate, lm_loss
from forgeml.tasks.language_modeling.prepare import LMPrepared, prepare

KIND = "language_modeling"


class LanguageModelingTask:
    """Next-token prediction on a text corpus, and text generation from the trained model."""

    name = KIND
    history_axis = "step"
    run_kinds = frozenset({KIND})

    def accepts(self, config: Config) -> bool:
        return config.data.corpus is not None or is_generative(config.model)

    # ------------------------------------------------------------------ training

    def prepare(self, config: Config, *, log: Log) -> LMPrepared:
        return prepare(config, log=log)

    def build_model(self, prepared: LMPrepared, module: nn.Module | None = None) -> nn.Module:
        if module is not None:
            raise ConfigError(
                "module= is for tabular/text/image models; a data.corpus config "
                "trains model.name=gpt or a pretrained causal LM"
            )
        return prepared.model  # built by prepare: the blocks follow the model's context

    def describe(self, prepared: LMPrepared, model: nn.Module) -> str:
        flops = model.flops_per_token() if hasattr(model, "flops_per_token") else None
        params = sum(p.numel() for p in model.parameters())
        vocab = prepared.corpus.tokenizer.vocab_size
        val = prepared.val
        return (
            f"model {prepared.config.model.name}: {params:,} parameters"
            + (f", {flops / 1e6:,.1f} MFLOPs per token (training)" if flops else "")
            + f"; vocabulary {vocab:,}; context {prepared.block}; "
            f"{len(prepared.corpus.train):,} train tokens"
            + (f", {len(val) * prepared.block:,} val tokens per evaluation" if val else "")
        )

    def summary(self, prepared: LMPrepared, model: nn.Module) -> str:
        corpus, cfg = prepared.corpus, prepared.config
        if corpus.val is not None and len(corpus.val):
            TokenBlocks(corpus.val, prepared.block)  # at least one block of val text
        params = sum(p.numel() for p in model.parameters())
        return (
            f"task {KIND}; {len(corpus.train):,} train and "
            f"{0 if corpus.val is None else len(corpus.val):,} val tokens "
            f"({corpus.tokenizer.kind} tokenizer, {corpus.tokenizer.vocab_size:,} ids); "
            f"model {cfg.model.name} with {params:,} parameters, context {prepared.block}"
        )

    def steps(self, prepared: LMPrepared, model: nn.Module, *, log: Log, quiet: bool) -> TaskSteps:
        cfg = prepared.config

        def evaluate_split(net: nn.Module, data: Any, precision: str) -> dict[str, Any]:
            return evaluate(net, data, batch_size=cfg.train.eval_batch, precision=precision)

        flops = model.flops_per_token() if hasattr(model, "flops_per_token") else None
        throughput = None if quiet else Throughput(prepared.block, flops, cfg.train.precision, log)
        # A sample at each validation evaluation (rank 0 only: callbacks run there).
        sampler = Sampler(model, prepared.corpus, cfg.data.corpus, log) if prepared.val else None
        return TaskSteps(
            loss=lm_loss,
            evaluate=evaluate_split,
            describe_rate=throughput.describe if throughput else None,
            callbacks=[sampler] if sampler else [],
        )

    def save_state(self, prepared: LMPrepared, directory: Path) -> None:
        prepared.corpus.tokenizer.save(directory / "tokenizer")

    def record(
        self, prepared: LMPrepared, model: nn.Module, result: Any, metrics: dict
    ) -> RunRecord:
        cfg, tokenizer = prepared.config.train, prepared.corpus.tokenizer
        tokens = result.steps * cfg.batch_size * cfg.grad_accum_steps * prepared.block
        corpus = prepared.corpus
        return RunRecord(
            kind=KIND,
            manifest={
                "num_params": sum(p.numel() for p in model.parameters()),
                "tokenizer": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "eos_token": tokenizer.eos_token,
                "context_length": prepared.block,
                "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            metrics={"tokens_trained": tokens},
            data_summary={
                "train_tokens": len(corpus.train),
                "val_tokens": 0 if corpus.val is None else len(corpus.val),
            },
            headline=f"{tokens:,} tokens",
        )

    def report(self, directory: Path, prepared: LMPrepared, metrics: dict, manifest: dict) -> None:
        return None  # the training curves (against the step) are all

    # ------------------------------------------------------------------ finished runs

    def load(self, run_dir: Path, *, backend: str = "torch", **options: Any) -> LanguageModel:
        if backend != "torch":
            raise ForgeError(
                f"{run_dir} is a language model (task {KIND}); --backend {backend} runs table "
                "models, not text generation: generate with forgeml generate "
                f"{run_dir} --prompt TEXT (Python: forgeml.load(run_dir).generate(TEXT)), "
                "or run the export's tokens -> logits graph yourself (see docs/export.md)"
            )
        if options.get("module") is not None:
            raise ForgeError(f"{run_dir} is a language model; module= is for table runs")
        options.pop("module", None)
        return LanguageModel.load(run_dir, **options)

    def evaluate_run(self, run_dir: Path, data: Any, *, module: nn.Module | None) -> dict:
        """Loss and perplexity of the run on a text file, folder or glob (default: its own
        validation text)."""
        raise ForgeError(
            f"{run_dir} is a language model; forgeml evaluate scores table models: its "
            "metrics.json holds the validation loss and perplexity it was trained to"
        )

    def served(self, run_dir: Path, name: str) -> Any:
        from forgeml.tasks.language_modeling.serving import ServedLM

        return ServedLM(run_dir, name)

    def export_spec(self, run_dir: Path, *, data: Any, module: Any, log: Log) -> Any:
        from forgeml.tasks.language_modeling.export import export_spec

        return export_spec(run_dir, data=data, log=log)
