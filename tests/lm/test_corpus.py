"""The corpus of a language model: sources, the train/val split, tokenizers, the token cache,
and the blocks the loop trains on (forgeml/data/corpus.py, forgeml/data/tokenizer.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from forgeml.config import CorpusConfig
from forgeml.data import corpus as corpus_module
from forgeml.data.corpus import TokenBlocks, load_corpus, resolve_files
from forgeml.data.tokenizer import EOT
from forgeml.errors import ConfigError, DataError


def load(tmp_path: Path, source, val_source=None, log=None, **settings):
    """load_corpus with a cache under tmp_path; returns the Corpus."""
    messages = log if log is not None else []
    return load_corpus(
        str(source),
        str(val_source) if val_source else None,
        CorpusConfig(**settings),
        cache_root=tmp_path / "cache",
        log=messages.append,
    )


def text_of(corpus, split: str = "train") -> str:
    return corpus.tokenizer.decode(np.asarray(getattr(corpus, split)).tolist())


# --------------------------------------------------------------------------- sources


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("first document\n")
    (root / "sub" / "b.txt").write_text("second document\n")
    (root / ".hidden.txt").write_text("HIDDEN\n")
    (root / "sub" / ".also-hidden.txt").write_text("HIDDEN\n")
    (root / ".git" / "config.txt").write_text("HIDDEN\n")
    return root


def test_a_folder_is_read_recursively_without_hidden_files(folder: Path) -> None:
    assert resolve_files(str(folder)) == [folder / "a.txt", folder / "sub" / "b.txt"]


def test_a_glob_matches_files_recursively(folder: Path) -> None:
    assert resolve_files(str(folder / "**" / "*.txt")) == [
        folder / "a.txt",
        folder / "sub" / "b.txt",
    ]
    assert resolve_files(str(folder / "sub" / "*.txt")) == [folder / "sub" / "b.txt"]


def test_a_single_file(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("hello\n")
    assert resolve_files(str(path)) == [path]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("{root}/*.md", DataError, "matches no file"),
        ("{root}/missing.txt", DataError, "does not exist"),
        ("{root}/empty-folder", DataError, "folder without files"),
        ("builtin:shakespeare", ConfigError, "builtin:pystdlib"),
    ],
)
def test_sources_that_name_nothing_are_clear_errors(
    tmp_path: Path, spec: str, error: type, message: str
) -> None:
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(error, match=message):
        resolve_files(spec.format(root=tmp_path))


def test_builtin_pystdlib_is_the_standard_library_source_and_tokenizes(tmp_path: Path) -> None:
    files = resolve_files("builtin:pystdlib")
    assert len(files) > 50 and all(f.suffix == ".py" for f in files)
    assert "os.py" in {f.name for f in files}
    corpus = load(tmp_path, "builtin:pystdlib", val_fraction=0.01)  # every file is UTF-8
    assert len(corpus.train) > 1_000_000 and len(corpus.val) > 10_000
    assert text_of(corpus)[:2000] in files[0].read_text() + "\n" + files[1].read_text()


def test_jsonl_documents_come_from_the_field_separated_by_newlines(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    records = [{"body": "hello", "id": 1}, {"body": "world"}, {"body": "two\nlines"}]
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n" + json.dumps(records[2]))
    corpus = load(tmp_path, path, field="body", val_fraction=0)
    assert text_of(corpus) == "hello\nworld\ntwo\nlines"  # the docs never end with "\n" here
    assert corpus.val is None


def test_bpe_separates_documents_with_the_end_of_text_token(folder: Path, tmp_path: Path) -> None:
    corpus = load(tmp_path, folder, tokenizer="bpe", vocab_size=300, val_fraction=0)
    tokenizer = corpus.tokenizer
    assert tokenizer.eos_id is not None and tokenizer.eos_token == EOT
    assert text_of(corpus) == f"first document\n{EOT}second document\n"
    assert list(corpus.train).count(tokenizer.eos_id) == 1


# --------------------------------------------------------------------------- split


def test_val_is_the_tail_fraction_cut_at_a_line_start(tmp_path: Path) -> None:
    lines = [f"line {i:04d}\n" for i in range(50)]  # 10 bytes each, 500 in all
    path = tmp_path / "lines.txt"
    path.write_text("".join(lines))
    corpus = load(tmp_path, path, val_fraction=0.15)
    # The cut at byte 425 falls inside line 42 (bytes 420-429): it stays whole in train.
    assert text_of(corpus, "train") == "".join(lines[:43])
    assert text_of(corpus, "val") == "".join(lines[43:])


def test_a_separate_val_source_is_all_of_val(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("to be or not to be\n" * 5)
    (tmp_path / "val.txt").write_text("that is the question\n")
    corpus = load(tmp_path, tmp_path / "train.txt", tmp_path / "val.txt", val_fraction=0.5)
    assert text_of(corpus, "train") == "to be or not to be\n" * 5
    assert text_of(corpus, "val") == "that is the question\n"


def test_char_vocabulary_is_sorted_and_val_only_characters_do_not_crash(tmp_path: Path) -> None:
    """The decision: characters only the val text has get ids too (after a note), so val always
    encodes; the model never trains on them and its val loss says so."""
    (tmp_path / "train.txt").write_text("abba\n" * 20)
    (tmp_path / "val.txt").write_text("abczz\n")
    log: list[str] = []
    corpus = load(tmp_path, tmp_path / "train.txt", tmp_path / "val.txt", log=log)
    assert corpus.tokenizer.chars == ["\n", "a", "b", "c", "z"]
    assert text_of(corpus, "val") == "abczz\n"
    assert any("2 characters appear only in the validation text ('cz')" in m for m in log)
    assert 0 in corpus.train  # "\n" is id 0 and trained


def test_char_vocabulary_always_holds_the_document_separator(tmp_path: Path) -> None:
    """Files without a newline are still joined by one: it must be in the vocabulary."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("abc")
    (tmp_path / "d" / "b.txt").write_text("cab")
    corpus = load(tmp_path, tmp_path / "d", val_fraction=0)
    assert text_of(corpus) == "abc\ncab"


def test_bpe_is_fitted_on_the_train_text_only(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("hello world\n" * 200)
    (tmp_path / "val.txt").write_text("zyxwvut\n" * 200)
    corpus = load(
        tmp_path, tmp_path / "train.txt", tmp_path / "val.txt", tokenizer="bpe", vocab_size=300
    )
    tokenizer = corpus.tokenizer
    assert len(tokenizer.encode("hello")) == 1  # merged: a train word
    assert len(tokenizer.encode("zyxwvut")) == 7  # bytes: never seen while fitting
    assert text_of(corpus, "val") == "zyxwvut\n" * 200


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_non_utf8_text_names_the_file_and_line(tmp_path: Path, tokenizer: str) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\n" * 2 + "caf\u00e9\n".encode("latin-1") + b"good line\n")
    with pytest.raises(DataError, match=rf"{path}, line 3: not valid UTF-8.*iconv"):
        load(tmp_path, path, tokenizer=tokenizer, vocab_size=300)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_an_empty_corpus_is_a_clear_error(tmp_path: Path, tokenizer: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(DataError, match=rf"the corpus {path} is empty"):
        load(tmp_path, path, tokenizer=tokenizer)


def test_a_jsonl_line_without_the_field_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no text key"}\n')
    with pytest.raises(
        DataError, match=rf"{path}, line 2: no text field 'text'.*data.corpus.field"
    ):
        load(tmp_path, path)


# --------------------------------------------------------------------------- the token cache


def test_the_cache_is_memory_mapped_reused_and_rebuilt_when_the_file_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "text.txt"
    path.write_text("the cat sat on the mat\n" * 50)
    log: list[str] = []
    first = load(tmp_path, path, log=log)
    assert isinstance(first.train, np.memmap) and first.train.dtype == np.uint16
    assert json.loads((first.folder / "meta.json").read_text())["dtype"] == "uint16"
    bin_file = first.folder / "train.bin"
    assert bin_file.stat().st_size == 2 * len(first.train)
    written = bin_file.stat().st_mtime_ns
    assert sum("tokenized the corpus" in m for m in log) == 1

    log.clear()
    again = load(tmp_path, path, log=log)  # the same files and settings: mapped, not rebuilt
    assert again.folder == first.folder and bin_file.stat().st_mtime_ns == written
    assert not any("tokenized" in m for m in log)
    assert any("using the token cache" in m for m in log)
    assert np.array_equal(again.train, first.train)

    other = load(tmp_path, path, log=log, val_fraction=0.3)  # other settings: another cache
    assert other.folder != first.folder

    log.clear()
    with path.open("a") as f:
        f.write("the dog sat on the log\n")
    changed = load(tmp_path, path, log=log)
    assert changed.folder != first.folder
    assert any("tokenized the corpus" in m for m in log)
    assert "the dog sat on the log\n" in text_of(changed, "train") + text_of(changed, "val")


def word_tokenizer(path: Path, size: int) -> Path:
    """A pretrained-style tokenizer.json: whole words w0 .. w{size-2}, then [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 1)} | {"[UNK]": size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))
    return path


@pytest.mark.parametrize(("size", "dtype"), [(65_536, np.uint16), (70_000, np.uint32)])
def test_ids_are_uint16_up_to_65536_ids_then_uint32(tmp_path: Path, size: int, dtype: type) -> None:
    tokenizer = word_tokenizer(tmp_path / "tokenizer.json", size)
    top = size - 2
    (tmp_path / "text.txt").write_text(f"w{top} w1 w{top - 1} nope\n" * 10)
    corpus = load(
        tmp_path,
        tmp_path / "text.txt",
        tokenizer="pretrained",
        tokenizer_path=str(tokenizer),
        val_fraction=0,
    )
    assert corpus.tokenizer.vocab_size == size
    assert corpus.train.dtype == dtype
    assert list(corpus.train[:4]) == [top, 1, top - 1, size - 1]  # nothing wrapped around


def test_the_writer_picks_the_dtype_it_is_given(tmp_path: Path) -> None:
    from forgeml.data.tokenizer import LMTokenizer

    tokenizer = LMTokenizer("char", chars=["a", "b", "\n"])
    count = corpus_module._write_tokens(
        tmp_path / "t.bin", iter(["ab\x00", "ba\n\x00"]), tokenizer, np.uint32
    )
    ids = np.fromfile(tmp_path / "t.bin", dtype=np.uint32)
    assert count == 6 and ids.tolist() == [0, 1, 2, 1, 0, 2]  # "ab" "\n" "ba\n"


# --------------------------------------------------------------------------- blocks


def test_rows_are_blocks_and_targets_are_shifted_by_one() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    blocks = TokenBlocks(tokens, 8)
    assert len(blocks) == 92  # every start with a full target: 0 .. 91
    inputs, target = blocks.batch(torch.tensor([0, 5, 91]))
    assert inputs["tokens"].dtype == torch.int64 and inputs["tokens"].shape == (3, 8)
    assert inputs["tokens"][1].tolist() == list(range(5, 13))
    assert torch.equal(target, inputs["tokens"] + 1)
    assert target[2, -1].item() == 99  # the last row ends on the last token


def test_eval_blocks_are_fixed_and_spread_over_the_split() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    first, second = TokenBlocks.spread(tokens, 16, 10), TokenBlocks.spread(tokens, 16, 10)
    assert len(first) == 10
    a, _ = first.batch(slice(0, None))
    b, _ = second.batch(slice(0, None))
    assert torch.equal(a["tokens"], b["tokens"])
    starts = a["tokens"][:, 0].tolist()
    assert starts[0] == 0 and starts[-1] == 1000 - 16 - 1 and starts == sorted(set(starts))
    assert len(TokenBlocks.spread(np.arange(20), 16, 240)) == 4  # never more than there are


def test_long_corpora_use_a_stride(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_module, "MAX_ROWS", 10)
    blocks = TokenBlocks(np.arange(1000), 8)
    assert blocks.stride == 100 and len(blocks) == 10
    inputs, target = blocks.batch(torch.tensor([9]))
    assert inputs["tokens"][0, 0].item() == 900 and target[0, -1].item() == 908


@pytest.mark.parametrize(
    ("split", "hint"), [("train", "more text"), ("val", "more validation text")]
)
def test_a_split_shorter_than_one_block_is_named(split: str, hint: str) -> None:
    with pytest.raises(DataError, match=rf"the {split} split .* 9 tokens.*= 10; use {hint}"):
        if split == "train":
            TokenBlocks(np.arange(9), 9)
        else:
            TokenBlocks.spread(np.arange(9), 9, 4)
