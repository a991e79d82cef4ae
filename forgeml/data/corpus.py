"""A text corpus as memory-mapped token ids, and the random blocks a language model trains on.

    sources (files / folder / glob / JSONL / builtin:pystdlib)
      -> UTF-8 lines, split into train and val by byte position (val: the tail fraction)
      -> tokenizer fitted on the train text only (bpe), or loaded (pretrained); char: the
         characters of the train text, plus "\\n" (the document separator) and any character
         only the val text has (an id the model never trains on: val stays encodable)
      -> train.bin / val.bin: uint16 ids (uint32 for vocabularies past 65,536), written once
         into a cache folder keyed by the files (paths, sizes, mtimes) and the tokenizer
         settings, and memory-mapped: a corpus larger than memory trains fine
      -> TokenBlocks: row i is the block tokens[s : s + T] with target tokens[s + 1 : s + T + 1]

Documents (files; JSONL records) are joined with the tokenizer's end-of-text token where it has
one (bpe, most pretrained tokenizers), else with a newline.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from forgeml.data.config import CorpusConfig
from forgeml.data.tokenizer import LMTokenizer
from forgeml.errors import ConfigError, DataError

CACHE_VERSION = 2  # 2: char vocabularies hold "\n" and the val-only characters
CHUNK_BYTES = 1 << 20  # text handed to the tokenizer at once (whole lines)
MAX_ROWS = 1 << 24  # training rows (block starts) per epoch; longer corpora use a stride


# --------------------------------------------------------------------------- sources


def resolve_files(spec: str) -> list[Path]:
    """The files a `data.source` names, in a fixed order."""
    if spec == "builtin:pystdlib":
        # The standard library's own top-level modules: on every machine that runs forgeml.
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        return sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if spec.startswith("builtin:"):
        raise ConfigError(f"unknown corpus {spec!r}; the built-in corpus is builtin:pystdlib")
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"data.source {spec!r} matches no file; check the pattern")
        return files
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"data.source {spec} is a folder without files; put text files in it")
        return files
    if not path.is_file():
        raise DataError(
            f"data.source {spec} does not exist; give a text file, a folder, a glob or "
            "builtin:pystdlib (paths are relative to the current directory)"
        )
    return [path]


def iter_text(
    files: list[Path], field: str, start: int = 0, end: int | None = None
) -> Iterator[str]:
    """Chunks of whole lines (~CHUNK_BYTES) whose first byte, counted over all files in order,
    lies in [start, end). A document ends with "\\x00" (a marker `tokenize` turns into eos)."""
    offset = 0
    for path in files:
        size = path.stat().st_size
        if offset + size <= start or (end is not None and offset >= end):
            offset += size
            continue
        jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
        chunk: list[str] = []
        chunk_bytes = 0
        with path.open("rb") as handle:
            position = offset
            for lineno, raw in enumerate(handle, 1):
                here, position = position, position + len(raw)
                if here < start:
                    continue
                if end is not None and here >= end:
                    break
                line = _decode(raw, path, lineno)
                if jsonl:
                    line = _json_text(line, path, lineno, field)
                    if line is None:
                        continue
                chunk.append(line)
                chunk_bytes += len(raw)
                if chunk_bytes >= CHUNK_BYTES:
                    yield "".join(chunk)
                    chunk, chunk_bytes = [], 0
        if chunk:
            yield "".join(chunk)
        yield "\x00"  # end of this file's document (JSONL: records already end with one)
        offset += size


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}, line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start} of the "
            "line); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _json_text(line: str, path: Path, lineno: int, field: str) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {lineno}: invalid JSON ({exc.msg}); fix the line") from None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(
            f"{path}, line {lineno}: no text field {field!r} (a string); set "
            "data.corpus.field to the key that holds the document"
        )
    return text + "\x00"


# --------------------------------------------------------------------------- token cache


@dataclass
class Corpus:
    """The tokenizer and the memory-mapped train/val token ids of a corpus."""

    tokenizer: LMTokenizer
    train: np.ndarray  # (N,) uint16/uint32 memmap
    val: np.ndarray | None  # None without a validation split
    folder: Path  # the cache folder holding them


def load_corpus(
    data_source: str,
    val_source: str | None,
    cfg: CorpusConfig,
    *,
    cache_root: Path,
    pretrained_tokenizer: Path | None = None,
    build: bool = True,
    log=print,
) -> Corpus:
    """Tokenize the corpus into the cache (unless it is there) and map it.

    `build=False` (ranks other than 0 under torchrun) waits for nothing: the caller puts a
    barrier between rank 0's build and the others' load.
    """
    files = resolve_files(data_source)
    val_files = resolve_files(val_source) if val_source else None
    tokenizer_file = None
    if cfg.tokenizer == "pretrained":
        tokenizer_file = Path(cfg.tokenizer_path) if cfg.tokenizer_path else pretrained_tokenizer
        if tokenizer_file is None:
            raise ConfigError(
                "data.corpus.tokenizer=pretrained needs data.corpus.tokenizer_path (a "
                "tokenizer.json or its folder) or a pretrained model.path"
            )
    key = _cache_key(files, val_files, cfg, tokenizer_file)
    folder = cache_root / f"tokens-{key[:16]}"
    reused = (folder / "meta.json").is_file()
    if build and not reused:
        _build(folder, files, val_files, cfg, tokenizer_file, log)
    meta = json.loads((folder / "meta.json").read_text())
    if build and reused:
        log(f"using the token cache {folder} ({meta['train']:,} train, {meta['val']:,} val tokens)")
    tokenizer = LMTokenizer.from_file(folder / "tokenizer", kind=meta["tokenizer"])
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(folder / "train.bin", dtype=dtype, mode="r", shape=(meta["train"],))
    val = None
    if meta["val"]:
        val = np.memmap(folder / "val.bin", dtype=dtype, mode="r", shape=(meta["val"],))
    return Corpus(tokenizer, train, val, folder)


def _cache_key(files, val_files, cfg: CorpusConfig, tokenizer_file: Path | None) -> str:
    digest = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        "field": cfg.field,
        "val_fraction": None if val_files else cfg.val_fraction,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for group in (files, val_files or []):
        for path in group:
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        digest.update(b"--")
    if tokenizer_file is not None:
        file = tokenizer_file / "tokenizer.json" if tokenizer_file.is_dir() else tokenizer_file
        digest.update(file.read_bytes() if file.is_file() else str(file).encode())
    return digest.hexdigest()


def _build(folder, files, val_files, cfg: CorpusConfig, tokenizer_file, log) -> None:
    total = sum(p.stat().st_size for p in files)
    if total == 0:
        raise DataError(f"the corpus {_names(files)} is empty (0 bytes); give it some text")
    # Without val files the tail val_fraction of the bytes is validation, cut at a line start.
    cut = total if val_files or not cfg.val_fraction else int(total * (1 - cfg.val_fraction))
    train_text = lambda: iter_text(files, cfg.field, 0, cut)  # noqa: E731
    if val_files:
        val_text = lambda: iter_text(val_files, cfg.field)  # noqa: E731
    else:
        val_text = (lambda: iter_text(files, cfg.field, cut)) if cut < total else None

    if cfg.tokenizer == "char":
        tokenizer = _fit_char(train_text, val_text, files, log)
    elif cfg.tokenizer == "bpe":
        log(f"training a byte-level BPE tokenizer ({cfg.vocab_size:,} tokens) on the train text")
        tokenizer = LMTokenizer.fit_bpe(
            (c.replace("\x00", "") for c in train_text()), cfg.vocab_size
        )
    else:
        tokenizer = LMTokenizer.from_file(tokenizer_file)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save(tmp / "tokenizer")
    counts = {"train": _write_tokens(tmp / "train.bin", train_text(), tokenizer, dtype)}
    counts["val"] = _write_tokens(tmp / "val.bin", val_text(), tokenizer, dtype) if val_text else 0
    if counts["train"] == 0:
        shutil.rmtree(tmp)
        raise DataError(f"the corpus {_names(files)} holds no text")
    meta = {"tokenizer": tokenizer.kind, "dtype": np.dtype(dtype).name, **counts}
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)  # the cache appears whole or not at all
    except OSError:
        if not (folder / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process built the same cache meanwhile
    log(f"tokenized the corpus: {counts['train']:,} train and {counts['val']:,} val tokens")
    if not val_files and cfg.val_fraction and not counts["val"]:
        log(
            f"note: no validation split: the last {cfg.val_fraction:.0%} of the corpus holds no "
            "line start to cut at; give data.val_source or raise data.corpus.val_fraction"
        )


def _names(files: list[Path]) -> str:
    return ", ".join(map(str, files[:3])) + (
        f" and {len(files) - 3} more" if len(files) > 3 else ""
    )


def _fit_char(train_text, val_text, files: list[Path], log) -> LMTokenizer:
    """Characters of the train text, "\\n" (what `_write_tokens` puts between documents), and
    the characters only the val text has, so that it encodes (the model never trains them)."""
    seen: set[str] = set()
    for chunk in train_text():
        seen.update(chunk)
    seen.discard("\x00")
    if not seen:
        raise DataError(f"the corpus {_names(files)} holds no text for training")
    val_only: set[str] = set()
    for chunk in val_text() if val_text else ():
        val_only.update(set(chunk) - seen)
    val_only.discard("\x00")
    if val_only:
        shown = "".join(sorted(val_only))
        log(
            f"note: {len(val_only)} characters appear only in the validation text "
            f"({shown[:40]!r}); they get ids the model never trains on"
        )
    return LMTokenizer.fit_char([*seen, *val_only, "\n"])


def _write_tokens(path: Path, chunks: Iterator[str], tokenizer: LMTokenizer, dtype) -> int:
    eos = tokenizer.eos_id
    separator = [eos] if eos is not None else tokenizer.encode("\n")
    count, pending_end = 0, False
    with path.open("wb") as out:
        for chunk in chunks:
            for j, piece in enumerate(chunk.split("\x00")):
                if j > 0:
                    pending_end = True  # a document ended: separate it from the next one
                if not piece:
                    continue
                ids = ([] if not (pending_end and count) else separator) + tokenizer.encode(piece)
                pending_end = False
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                count += len(ids)
    return count


# --------------------------------------------------------------------------- blocks


class TokenBlocks:
    """Blocks of T tokens and their next-token targets, as rows for the training loop.

    Training (`starts=None`): row i starts at token i * stride, every start that leaves room for
    the target; an epoch is one permutation of them (the loop shuffles rows). Evaluation: the
    given `starts`, fixed, so every evaluation scores the same tokens.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        starts: np.ndarray | None = None,
        *,
        split: str = "train",
    ):
        self.tokens, self.block_size = tokens, block_size
        self.device = torch.device("cpu")
        room = len(tokens) - block_size  # starts 0 .. room-1 have a full target
        if room < 1:
            more = (
                "more text"
                if split == "train"
                else "more validation text (data.val_source, or a larger data.corpus.val_fraction)"
            )
            raise DataError(
                f"the {split} split of the corpus has {len(tokens):,} tokens, fewer than one "
                f"block of block_size + 1 = {block_size + 1}; use {more} or a smaller "
                "data.corpus.block_size"
            )
        self.stride = max(1, -(-room // MAX_ROWS))
        self.starts = starts
        self.rows = len(starts) if starts is not None else -(-room // self.stride)
        self._offsets = np.arange(block_size + 1)  # (T + 1,)

    @classmethod
    def spread(
        cls, tokens: np.ndarray, block_size: int, count: int, *, split: str = "val"
    ) -> TokenBlocks:
        """`count` blocks spread evenly over `tokens` (the validation set)."""
        room = max(len(tokens) - block_size, 1)
        starts = np.unique(np.linspace(0, room - 1, num=min(count, room)).round().astype(np.int64))
        return cls(tokens, block_size, starts, split=split)

    def __len__(self) -> int:
        return self.rows

    def batch(self, index: Tensor | slice) -> tuple[dict[str, Tensor], Tensor]:
        rows = np.arange(self.rows)[index] if isinstance(index, slice) else index.cpu().numpy()
        starts = self.starts[rows] if self.starts is not None else rows * self.stride
        window = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64)
        window = torch.from_numpy(window).to(self.device, non_blocking=True)  # (B, T + 1)
        return {"tokens": window[:, :-1]}, window[:, 1:]

    def to(self, device: torch.device) -> TokenBlocks:
        moved = TokenBlocks.__new__(TokenBlocks)
        moved.__dict__.update(self.__dict__)
        moved.device = torch.device(device)
        return moved
