"""The `data:` section of a config: sources, columns, splits, images, a text corpus.

Part of the config tree (forgeml/config.py assembles it); it lives with the data layer, which
reads it, so that nothing below the config layer imports the config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgeml.data.sequence import SequenceConfig
from forgeml.data.text import TextConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnConfig(Strict):
    """How to read one column. Leave `type` out to have it inferred from the training split."""

    # labels: a target whose value is a list of labels (multi-label classification)
    type: Literal["numeric", "category", "image", "text", "sequence", "labels"] | None = None
    # Missing values are an error unless a fill rule is chosen. mean/median: numeric only.
    fill: Literal["error", "mean", "median", "constant"] = "error"
    fill_value: float | str | None = None  # with fill=constant; default 0 / "<missing>"
    text: TextConfig | None = None  # cleaning and tokenizer of a text column (implies type text)
    sequence: SequenceConfig | None = None  # shape of a numeric sequence (implies sequence)

    @model_validator(mode="before")
    @classmethod
    def _options_fit_type(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        for kind in ("text", "sequence"):
            if raw.get(kind) is not None:
                if raw.get("type") not in (None, kind):
                    raise ValueError(
                        f"{kind} options are given but type is {raw['type']}; set type: {kind} "
                        f"or remove the {kind} section"
                    )
                raw = {**raw, "type": kind}
        return raw


class SplitConfig(Strict):
    """Ratios of one source into train/val/test; ignored for splits given as separate files."""

    train: float = Field(0.8, gt=0, le=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    seed: int | None = None  # None: the top-level seed
    stratify: bool = True  # classification only: keep class proportions in every split

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split ratios train+val+test must add up to 1, got {total:g}; "
                "adjust data.split.train/val/test"
            )
        return self


class ImageConfig(Strict):
    size: tuple[int, int] | None = None  # (H, W) to resize to; None: the first training image's
    channels: Literal[1, 3] | None = None  # None: 1 if the first training image is grayscale
    crop_padding: int = Field(0, ge=0)  # augmentation: pad by N px, then random-crop back
    flip: bool = False  # augmentation: random horizontal flip


class CorpusConfig(Strict):
    """`data.corpus`: the data is a text corpus and the task is language modelling.

    `data.source` (and `data.val_source`) then name text files: a file, a folder (its files,
    recursively), a glob, a JSONL file (one document per line in `field`), or
    `builtin:pystdlib` (the Python standard library's own source files). See forgeml/tasks/language_modeling/.
    """

    # char: one token per character seen; bpe: byte-level BPE trained on the train split;
    # pretrained: the tokenizer.json of model.path (or of `tokenizer_path`).
    tokenizer: Literal["char", "bpe", "pretrained"] = "char"
    tokenizer_path: str | None = None  # a tokenizer.json or a folder holding one
    vocab_size: int = Field(8192, ge=64, le=2**32 - 1)  # bpe: the trained vocabulary's size
    field: str = "text"  # JSONL sources: the document's key
    val_fraction: float = Field(0.1, ge=0, lt=1)  # the tail of the token stream, no val_source
    block_size: int | None = Field(None, ge=1)  # tokens per training row; None: the model's
    eval_blocks: int = Field(240, ge=1)  # validation blocks per evaluation (fixed, spread out)
    sample_tokens: int = Field(200, ge=0)  # a text sample at each evaluation; 0: none
    sample_prompt: str = "\n"
    # Where token caches live (memory-mapped, reused by later runs of the same corpus and
    # tokenizer); None: OUTPUT_DIR/.cache.
    cache_dir: str | None = None


class DataConfig(Strict):
    source: str  # file, folder of images, or builtin:NAME[?k=v&...]
    val_source: str | None = None  # given: the split ratios no longer apply to validation
    test_source: str | None = None
    target: str = "label"
    columns: dict[str, ColumnConfig] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list)  # columns that are not features (ids, ...)
    # New sequence columns made of a run of numeric columns: {NAME: "x*"} (a glob on column names,
    # in column order) or {NAME: [x0, x1, ...]}; options in data.columns.NAME.sequence.
    sequences: dict[str, str | list[str]] = Field(default_factory=dict)
    delimiter: str | None = None  # CSV/TSV: None picks from the extension
    split: SplitConfig = Field(default_factory=SplitConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    # Bad rows (unparsable, wrong field count, bad value, unreadable image): fail naming the
    # file/line/column, or skip and count them, failing once more than max_bad_fraction are bad.
    on_bad_rows: Literal["error", "skip"] = "error"
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    corpus: CorpusConfig | None = None  # set: a language model on a text corpus (see above)
