"""Text columns: cleaning, tokenisation and the fitted vocabulary (`TextEncoder`).

One text goes through these steps, in this order (each optional per `TextConfig`):

 1. NFKC normalisation: full-width letters and digits, ligatures and other compatibility forms
    become their plain form, so "Ｔｏｋｙｏ" and "Tokyo" are the same token.
 2. lowercase.
 3. URLs removed: "http://", "https://" or "www." up to the next whitespace.
 4. numbers removed: every run of digits, with "." or "," between digits ("3.14", "1,000").
    Digits inside words go too ("mp3" -> "mp"). Before step 5, which would split "3.14".
 5. punctuation and symbols (Unicode categories P* and S*, CJK punctuation included) -> space.
 6. whitespace collapsed to single spaces, both ends stripped (always).

Then it is tokenised, stop words are dropped (word tokenizer only), tokens become ids, the row is
truncated to `max_length` (the beginning is kept) and zero-padded at the end.

Ids: 0 is padding in every kind, so a model can use `padding_idx=0` and the mask (see schema.py).
Vocabularies we build (word, char, bpe, wordpiece) have 1 = "[UNK]" and tokens from 2 on. A
given `tokenizer_file` keeps its own ids shifted by +1 (its id k is our k + 1): its own unknown
token, if any, is wherever that file put it, not necessarily 1.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from forgeml.errors import ConfigError, DataError
from forgeml.packages import PREFIX, package_folder

STATE_VERSION = 1
PAD, UNK = "[PAD]", "[UNK]"


class TextConfig(BaseModel):
    """`data.columns.<col>.text`: how a text column is cleaned, tokenised and cut."""

    # As config.py's `Strict` (unknown keys rejected, assignments validated), and strict types:
    # `max_length: "64"` is an error, not silently 64.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    normalize: bool = True  # Unicode NFKC
    lowercase: bool = True
    strip_urls: bool = False
    strip_numbers: bool = False
    strip_punctuation: bool = False  # Unicode P* and S* -> space
    # None: keep all; "english": the shipped list; else a UTF-8 file, one word per line (relative
    # to the current directory, like data.source). Word tokenizer only.
    stopwords: str | None = None
    tokenizer: Literal["char", "word", "bpe", "wordpiece"] = "word"
    # A Hugging Face tokenizer.json used as it is (no training); `tokenizer` is then ignored.
    tokenizer_file: str | None = None
    # word/char: the N most frequent tokens are kept (plus [PAD], [UNK]); bpe/wordpiece: the
    # trainer's target size, specials included (it can be exceeded when the training texts have
    # more distinct characters: every character seen is kept).
    vocab_size: int = Field(20000, ge=1)
    min_frequency: int = Field(1, ge=1)  # word/char: count; bpe/wordpiece: of a merged pair
    max_length: int = Field(256, ge=1)  # tokens kept per text; the beginning of longer ones


# --------------------------------------------------------------------------- cleaning

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class _PunctuationTable(dict):
    """str.translate table: P* and S* code points -> space, others unchanged (cached lazily,
    so the C loop of translate does the work, without a category call per character)."""

    def __missing__(self, code: int) -> int:
        value = 32 if unicodedata.category(chr(code))[0] in "PS" else code
        self[code] = value
        return value


_PUNCTUATION = _PunctuationTable()


def clean(text: str, cfg: TextConfig) -> str:
    """The cleaning steps of the module docstring, in that order."""
    if cfg.normalize and not text.isascii():  # ASCII is already NFKC
        text = unicodedata.normalize("NFKC", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_urls:
        text = _URL.sub(" ", text)
    if cfg.strip_numbers:
        text = _NUMBER.sub(" ", text)
    if cfg.strip_punctuation:
        text = text.translate(_PUNCTUATION)
    return " ".join(text.split())


# --------------------------------------------------------------------------- tokenising

# Scripts written without spaces between words: every character is a token of its own (what BERT
# does for Chinese). CJK ideographs with extensions A-H and compatibility forms, Hiragana,
# Katakana (full and half width) and Hangul syllables.
_CJK_RANGES = [
    (0x3040, 0x30FF),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F),
    (0x20000, 0x323AF),
]
CJK_CLASS = "[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _CJK_RANGES) + "]"


@cache
def _word_pattern() -> re.Pattern[str]:
    # Python's \w leaves out combining marks (Mn/Mc/Me), which would cut Hindi, Thai or Arabic
    # words apart at every vowel sign; a word run takes them too. Built once (BMP scan, ~10 ms).
    marks = [c for c in range(0x10000) if unicodedata.category(chr(c))[0] == "M"]
    ranges: list[list[int]] = []
    for c in marks:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    mark_class = "".join(f"{chr(a)}-{chr(b)}" for a, b in ranges)
    cjk = CJK_CLASS[1:-1]
    # One CJK character | a run of other word characters | any other non-space character.
    return re.compile(rf"{CJK_CLASS}|(?:[^\W{cjk}]|[{mark_class}])+|\S")


def word_tokens(text: str) -> list[str]:
    """Tokens of a cleaned text: "i love 東京!" -> ["i", "love", "東", "京", "!"]."""
    return _word_pattern().findall(text)


def count_words(text: str) -> int:
    """Words of a raw text as the word tokenizer sees them, punctuation left out: "i love
    東京!" -> 4. Column type inference counts with it, so text without spaces is text too."""
    return sum(1 for token in _word_pattern().findall(text) if token.isalnum() or len(token) > 1)


def char_tokens(text: str) -> list[str]:
    """Every character of a cleaned text, spaces included (" " marks the word boundaries a
    char-level model needs; cleaning leaves only single spaces)."""
    return list(text)


# --------------------------------------------------------------------------- encoding


@dataclass
class EncodedText:
    ids: np.ndarray  # (N, L) int64, 0-padded at the end; L = min(max_length, longest), >= 1
    # (N,) int64 real tokens per row. 0: nothing left (empty or whitespace-only text, a missing
    # value, or only stop words); the caller decides whether that is an error or a skip.
    lengths: np.ndarray
    truncated: int  # rows that were longer than max_length and cut to it


class TextEncoder:
    """A fitted text column: cleaning settings, stop words and the vocabulary or tokenizer.

    Build it with `fit` (train texts) or `from_state` (a saved run); `encode` turns texts into
    ids for the batch key "text:<col>".
    """

    def __init__(
        self,
        cfg: TextConfig,
        *,
        column: str,
        vocab: list[str] | None = None,
        tokenizer: Tokenizer | None = None,
        stopwords: frozenset[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.column = column
        self.stopwords = stopwords
        self._vocab = vocab  # word/char: token per id, [PAD] and [UNK] first
        self._tokenizer = tokenizer  # bpe/wordpiece/file
        self._shift = 1 if cfg.tokenizer_file else 0  # a given file's ids move up past padding
        if vocab is not None:
            self._index = {tok: i for i, tok in enumerate(vocab) if i >= 2}
            self._size = len(vocab)
        else:
            assert tokenizer is not None
            tokenizer.no_padding()  # a given tokenizer.json may pad or truncate by itself; we do
            tokenizer.no_truncation()
            self._size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1 + self._shift

    @property
    def kind(self) -> str:
        """'word' | 'char' | 'bpe' | 'wordpiece' | 'file'."""
        return "file" if self.cfg.tokenizer_file else self.cfg.tokenizer

    @property
    def vocab_size(self) -> int:
        """Ids are in [0, vocab_size); for a given file the file's vocabulary size + 1."""
        return self._size

    @classmethod
    def fit(
        cls,
        texts: Sequence[Any],
        cfg: TextConfig,
        *,
        column: str,
        base_dir: Path | None = None,
    ) -> TextEncoder:
        """Learn the vocabulary from the TRAIN texts (or load `cfg.tokenizer_file`).

        Args:
            base_dir: what relative `stopwords` and `tokenizer_file` paths are resolved against;
                None (what training passes): the current directory, as for `data.source`.

        Raises:
            ConfigError: stop words without tokenizer: word; a missing or unreadable stop-word
                or tokenizer file.
            DataError: the vocabulary is empty (no text left after cleaning, or min_frequency
                above every count).
        """
        key = f"data.columns.{column}.text"
        if cfg.stopwords is not None and (cfg.tokenizer_file or cfg.tokenizer != "word"):
            got = "a tokenizer_file" if cfg.tokenizer_file else f"tokenizer: {cfg.tokenizer}"
            raise ConfigError(
                f"{key}.stopwords: stop words need tokenizer: word, got {got}; remove "
                f"{key}.stopwords, or use {key}.tokenizer=word without tokenizer_file"
            )
        if cfg.tokenizer_file is not None:
            return cls(cfg, column=column, tokenizer=_load_tokenizer(cfg, key, base_dir))
        stopwords = _load_stopwords(cfg, key, base_dir) if cfg.stopwords is not None else None
        cleaned = [clean(_as_text(t), cfg) for t in texts]
        if cfg.tokenizer in ("word", "char"):
            counts: Counter[str] = Counter()
            for text in cleaned:
                counts.update(_own_tokens(text, cfg.tokenizer, stopwords))
            kept = sorted(
                (item for item in counts.items() if item[1] >= cfg.min_frequency),
                key=lambda item: (-item[1], item[0]),
            )[: cfg.vocab_size]
            if kept:
                return cls(
                    cfg,
                    column=column,
                    vocab=[PAD, UNK, *(tok for tok, _ in kept)],
                    stopwords=stopwords,
                )
            any_text = bool(counts)
        else:
            tokenizer = _train(cleaned, cfg)
            if tokenizer.get_vocab_size(with_added_tokens=True) > 2:
                return cls(cfg, column=column, tokenizer=tokenizer)
            any_text = any(cleaned)
        if not any_text:
            raise DataError(
                f"column '{column}': all {len(cleaned)} training texts are empty after cleaning"
                f"{' and stop-word removal' if stopwords else ''}; expected text to build a "
                f"vocabulary from; check the column, or relax the cleaning in {key} "
                "(strip_urls, strip_numbers, strip_punctuation, stopwords)"
            )
        raise DataError(
            f"column '{column}': no token occurs at least {cfg.min_frequency} times in the "
            f"{len(cleaned)} training texts, so the vocabulary is empty; lower "
            f"{key}.min_frequency"
        )

    def encode(self, texts: Sequence[Any]) -> EncodedText:
        """Texts -> padded ids. None/NaN encode as empty (length 0); other non-strings as str(v)."""
        cleaned = [clean(_as_text(t), self.cfg) for t in texts]
        if self._tokenizer is not None:
            tok = self._tokenizer  # encode_batch_fast (tokenizers >= 0.20) skips the offsets
            encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
            rows = [e.ids for e in encode_batch(cleaned, add_special_tokens=False)]
        else:
            kind, stop = self.cfg.tokenizer, self.stopwords
            rows = [_own_tokens(text, kind, stop) for text in cleaned]
        max_length = self.cfg.max_length
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))  # (N,)
        long = lengths > max_length
        truncated = int(long.sum())
        if truncated:
            rows = [
                r[:max_length] if cut else r for r, cut in zip(rows, long.tolist(), strict=True)
            ]
            lengths = np.minimum(lengths, max_length)
        flat = chain.from_iterable(rows)
        if self._tokenizer is None:
            flat = map(self._index.get, flat, repeat(1))  # unknown token -> 1
        total = int(lengths.sum())
        width = max(1, int(lengths.max(initial=0)))
        ids = np.zeros((len(rows), width), dtype=np.int64)  # (N, L)
        # Row-major boolean assignment fills each row's first `length` slots, in order.
        ids[np.arange(width) < lengths[:, None]] = (
            np.fromiter(flat, np.int64, count=total) + self._shift
        )
        return EncodedText(ids=ids, lengths=lengths, truncated=truncated)

    def vocab(self) -> list[str]:
        """The token string of every id (index = id); vocab()[0] is "[PAD]"."""
        if self._vocab is not None:
            return list(self._vocab)
        assert self._tokenizer is not None
        out = [""] * self._size  # "" for ids a given file leaves unused
        for tok, i in self._tokenizer.get_vocab(with_added_tokens=True).items():
            out[i + self._shift] = tok
        out[0] = PAD
        return out

    def state(self) -> dict[str, Any]:
        """JSON-serialisable fitted state; no file is read again by `from_state`."""
        return {
            "version": STATE_VERSION,
            "column": self.column,
            "config": self.cfg.model_dump(),
            "stopwords": sorted(self.stopwords) if self.stopwords is not None else None,
            "vocab": list(self._vocab) if self._vocab is not None else None,
            "tokenizer": self._tokenizer.to_str() if self._tokenizer is not None else None,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TextEncoder:
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"text column '{state.get('column')}': saved state version "
                f"{state.get('version')!r}, this forgeml reads {STATE_VERSION}; retrain, or use "
                "the forgeml version that wrote it"
            )
        stop = state["stopwords"]
        return cls(
            TextConfig.model_validate(state["config"]),
            column=state["column"],
            vocab=state["vocab"],
            tokenizer=Tokenizer.from_str(state["tokenizer"]) if state["tokenizer"] else None,
            stopwords=frozenset(stop) if stop is not None else None,
        )


# --------------------------------------------------------------------------- helpers


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN: missing
        return ""
    return value if isinstance(value, str) else str(value)


def _own_tokens(text: str, kind: str, stopwords: frozenset[str] | None) -> list[str]:
    """Our own tokenisers (word/char) on a cleaned text, stop words dropped (word only)."""
    if kind == "char":
        return char_tokens(text)
    tokens = word_tokens(text)
    return [t for t in tokens if t not in stopwords] if stopwords else tokens


def _resolve(path: str, base_dir: Path | None) -> tuple[Path, str]:
    """The path, and what a relative one is relative to (for messages)."""
    p = Path(path).expanduser()
    if base_dir is None:
        return p, "the current directory"
    return (p if p.is_absolute() else Path(base_dir) / p), str(base_dir)


def _must_exist(path: Path, key: str, expected: str, relative_to: str, fix: str) -> None:
    if not path.is_file():
        raise ConfigError(
            f"{key}: {path} does not exist; expected {expected} (a relative path is relative to "
            f"{relative_to}); {fix}"
        )


def _load_stopwords(cfg: TextConfig, key: str, base_dir: Path | None) -> frozenset[str]:
    """The stop-word list, normalised and lowercased as the texts are (so "The" in a file still
    drops "the"). Blank lines and lines starting with "#" are skipped."""
    assert cfg.stopwords is not None
    if cfg.stopwords == "english":
        text = resources.files("forgeml.data").joinpath("stopwords/english.txt").read_text("utf-8")
    else:
        path, relative_to = _resolve(cfg.stopwords, base_dir)
        expected = "'english' or a UTF-8 file with one stop word per line"
        _must_exist(path, f"{key}.stopwords", expected, relative_to, "fix the path")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{key}.stopwords: cannot read {path} ({' '.join(str(exc).split())}); expected a "
                "UTF-8 file with one stop word per line"
            ) from None
    words = set()
    for line in text.splitlines():
        word = line.strip()
        if word and not word.startswith("#"):
            word = unicodedata.normalize("NFKC", word) if cfg.normalize else word
            words.add(word.lower() if cfg.lowercase else word)
    return frozenset(words)


def _load_tokenizer(cfg: TextConfig, key: str, base_dir: Path | None) -> Tokenizer:
    assert cfg.tokenizer_file is not None
    if cfg.tokenizer_file.startswith(PREFIX):  # pkg:NAME[/SUB]: that checkpoint's tokenizer.json
        path = package_folder(cfg.tokenizer_file, f"{key}.tokenizer_file") / "tokenizer.json"
        relative_to = "the package"
    else:
        path, relative_to = _resolve(cfg.tokenizer_file, base_dir)
    fix = "fix the path or remove tokenizer_file to train one"
    _must_exist(path, f"{key}.tokenizer_file", "a Hugging Face tokenizer.json", relative_to, fix)
    try:
        tokenizer = Tokenizer.from_file(str(path))
        problem = "it has an empty vocabulary" if not tokenizer.get_vocab_size() else None
    except Exception as exc:  # the Rust parser raises plain Exception
        problem = " ".join(str(exc).split())
    if problem is not None:
        raise ConfigError(
            f"{key}.tokenizer_file: cannot load {path} as a Hugging Face tokenizer.json "
            f"({problem}); expected a file saved by tokenizers' Tokenizer.save"
        )
    return tokenizer


def _train(cleaned: list[str], cfg: TextConfig) -> Tokenizer:
    """A BPE or WordPiece tokenizer trained on the cleaned train texts; [PAD]=0, [UNK]=1.

    No HF normalizer: the texts are already cleaned by `clean`. CJK characters are split one by
    one first, as the word tokenizer does (BertPreTokenizer alone keeps "東京" together).
    """
    cjk = pre_tokenizers.Split(Regex(CJK_CLASS), behavior="isolated")
    common: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "min_frequency": cfg.min_frequency,
        "special_tokens": [PAD, UNK],
        "show_progress": False,
    }
    if cfg.tokenizer == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [cjk, pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
        )
        trainer: Any = trainers.BpeTrainer(**common)
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([cjk, pre_tokenizers.BertPreTokenizer()])
        trainer = trainers.WordPieceTrainer(**common)
    tokenizer.train_from_iterator(cleaned, trainer, length=len(cleaned))
    return tokenizer
