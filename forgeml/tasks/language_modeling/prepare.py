"""The language-modelling task's data: a corpus as tokens, cut into blocks of the model's context.

The model is built here too: a pretrained causal LM's context comes from its checkpoint, and the
blocks are as long as the model's context unless `data.corpus.block_size` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from forgeml.config import Config
from forgeml.data.corpus import Corpus, TokenBlocks, load_corpus
from forgeml.distributed import barrier, is_main
from forgeml.errors import ConfigError
from forgeml.models.registry import build_model, context_length
from forgeml.runtime import pick_device
from forgeml.schema import TokenSpec

Log = Callable[[str], None]


@dataclass
class LMPrepared:
    config: Config
    corpus: Corpus
    model: nn.Module  # built for the tokenizer's vocabulary, on the training device
    block: int  # tokens per training row
    train: TokenBlocks
    val: TokenBlocks | None  # a fixed spread of `eval_blocks` blocks of the held-out tail

    @property
    def eval_splits(self) -> dict[str, TokenBlocks]:
        """Final metrics: a spread of train blocks as large as the val set, and val."""
        cfg = self.config.data.corpus
        splits = {"train": TokenBlocks.spread(self.corpus.train, self.block, cfg.eval_blocks)}
        if self.val is not None:
            splits["val"] = self.val
        return splits


def prepare(config: Config, *, log: Log) -> LMPrepared:
    """Tokenize the corpus of `config` into its token cache (rank 0 builds it, the other ranks
    map it once it is there), build the model, and cut the corpus into blocks."""
    corpus_cfg = config.data.corpus
    model_block = getattr(config.model, "block_size", None)
    if corpus_cfg.block_size and model_block and corpus_cfg.block_size > model_block:
        raise ConfigError(  # before tokenizing a corpus for nothing
            f"data.corpus.block_size={corpus_cfg.block_size} is larger than the model's "
            f"context of {model_block} positions; lower it or raise model.block_size"
        )
    corpus = _load(config, log, build=True) if is_main() else None
    barrier()  # rank 0 built the token cache; the others map it
    corpus = corpus or _load(config, log, build=False)
    torch.manual_seed(config.seed)  # the same seed always builds the same weights
    model = build_model(config.model, TokenSpec(corpus.tokenizer.vocab_size)).to(pick_device())
    block = corpus_cfg.block_size or context_length(model)
    if block > context_length(model):
        raise ConfigError(
            f"data.corpus.block_size={block} is larger than the model's context of "
            f"{context_length(model)} positions; lower it or raise model.block_size"
        )
    train = TokenBlocks(corpus.train, block, split="train")  # at least one block of train text
    val = None
    if corpus.val is not None and len(corpus.val) > 0:
        val = TokenBlocks.spread(corpus.val, block, corpus_cfg.eval_blocks)
    return LMPrepared(config, corpus, model, block, train, val)


def _load(config: Config, log: Log, *, build: bool) -> Corpus:
    corpus_cfg = config.data.corpus
    pretrained = _pretrained_path(config)
    return load_corpus(
        config.data.source,
        config.data.val_source,
        corpus_cfg,
        cache_root=Path(corpus_cfg.cache_dir or Path(config.output.dir) / ".cache"),
        pretrained_tokenizer=Path(pretrained) if pretrained else None,
        build=build,
        log=log,
    )


def _pretrained_path(config: Config) -> str | None:
    """model.path of a pretrained causal LM (its tokenizer.json is the corpus's), else None.

    Raises:
        ConfigError: a pretrained model with a char or bpe corpus tokenizer, whose ids would
            mean nothing to the checkpoint's embeddings.
    """
    if config.model.name != "pretrained":
        return None
    kind = config.data.corpus.tokenizer
    if kind != "pretrained":
        raise ConfigError(
            f"data.corpus.tokenizer={kind}: model.name=pretrained reads text with its "
            "checkpoint's own tokenizer; set data.corpus.tokenizer=pretrained"
        )
    return config.model.path
