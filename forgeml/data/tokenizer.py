"""Tokenizers of a language model: characters, byte-level BPE, or a pretrained tokenizer.json.

All three are one `LMTokenizer`: `encode(text) -> ids`, `decode(ids) -> text`, saved in the run
as `tokenizer/tokenizer.json` (a Hugging Face `tokenizers` file for bpe/pretrained, or
`{"kind": "char", "chars": [...]}` for char) and loaded back by generate/serve.

- char: one id per distinct character of the training text, in code-point order (as nanoGPT's
  shakespeare_char: 65 ids for Tiny Shakespeare). No unknown token: a prompt with a character
  the model never saw is an error that names it.
- bpe: byte-level BPE (GPT-2's scheme) trained on the training text with `tokenizers`; every
  byte is in the alphabet, so nothing is ever unknown. Id 0 is `<|endoftext|>`, written between
  documents, and is the end-of-sequence token for generation.
- pretrained: a checkpoint's tokenizer.json used as is; its eos token is read from the
  checkpoint's tokenizer_config.json / config.json where present.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from forgeml.errors import ConfigError, DataError

EOT = "<|endoftext|>"
FILE = "tokenizer.json"


class LMTokenizer:
    """Text <-> token ids for a language model. Build with `fit_char`, `fit_bpe`, `from_file`."""

    def __init__(
        self,
        kind: str,
        *,
        chars: Sequence[str] | None = None,
        tokenizer: Tokenizer | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.kind = kind
        self.chars = list(chars) if chars is not None else None
        self._ids = {c: i for i, c in enumerate(self.chars)} if self.chars is not None else None
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        self.eos_id: int | None = None
        if eos_token is not None and tokenizer is not None:
            self.eos_id = tokenizer.token_to_id(eos_token)

    # ------------------------------------------------------------------ building

    @classmethod
    def fit_char(cls, texts: Iterable[str]) -> LMTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise DataError("the corpus is empty: there is no character to build a vocabulary")
        return cls("char", chars=sorted(seen))

    @classmethod
    def fit_bpe(cls, texts: Iterable[str], vocab_size: int) -> LMTokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls("bpe", tokenizer=tok, eos_token=EOT)

    @classmethod
    def from_file(cls, path: str | Path, kind: str = "pretrained") -> LMTokenizer:
        """A tokenizer.json (or a folder holding one; its tokenizer_config.json names eos)."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = path / FILE if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(
                f"no tokenizer at {file}; pass a Hugging Face tokenizer.json or a folder with one"
            )
        try:
            text = file.read_text(encoding="utf-8")
            if kind == "char" or '"kind": "char"' in text[:64]:
                state = json.loads(text)
                return cls("char", chars=state["chars"])
            tok = Tokenizer.from_str(text)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file} is not a valid tokenizer file ({exc})") from None
        eos = EOT if tok.token_to_id(EOT) is not None else _eos_from_config(folder)
        return cls(kind, tokenizer=tok, eos_token=eos)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "char":
            text = json.dumps({"kind": "char", "chars": self.chars}, ensure_ascii=False)
        else:
            text = self.tokenizer.to_str()
        (folder / FILE).write_text(text, encoding="utf-8")
        if self.eos_token is not None:
            (folder / "tokenizer_config.json").write_text(
                json.dumps({"eos_token": self.eos_token}), encoding="utf-8"
            )

    # ------------------------------------------------------------------ use

    @property
    def vocab_size(self) -> int:
        if self.chars is not None:
            return len(self.chars)
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self._ids is not None:
            try:
                return [self._ids[c] for c in text]
            except KeyError:
                unknown = sorted({c for c in text if c not in self._ids})
                raise DataError(
                    f"the text has characters this character-level model never saw: "
                    f"{''.join(unknown)!r}; remove them (the vocabulary has {len(self._ids)} "
                    "characters)"
                ) from None
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._ids is not None:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        if self.chars is not None:
            return "".join(self.chars[i] for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _eos_from_config(folder: Path) -> str | None:
    """The eos token a Hugging Face checkpoint folder names, if any."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            try:
                eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                return eos
    return None
