"""Tests for forgeml.data.text: cleaning, tokenisers, vocabularies, tokenizer files, state."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from forgeml.data.text import TextConfig, TextEncoder, char_tokens, clean, word_tokens
from forgeml.errors import ConfigError, DataError

# Words sharing stems and endings, so sub-word tokenisers learn pieces that combine.
STEMS = ["play", "walk", "talk", "jump", "look", "work", "call", "help"]
ENDINGS = ["", "s", "ed", "ing", "er"]
CORPUS = [
    " ".join(f"{STEMS[(i + j) % len(STEMS)]}{ENDINGS[(i * j) % len(ENDINGS)]}" for j in range(6))
    for i in range(60)
] + ["東京 と 京都 に 行きました。", "我爱北京"]


def fit(texts, column="review", base_dir=None, **cfg) -> TextEncoder:
    return TextEncoder.fit(texts, TextConfig(**cfg), column=column, base_dir=base_dir)


def encode_tokens(enc: TextEncoder, text: str) -> list[str]:
    """The token strings `enc` turns `text` into."""
    out = enc.encode([text])
    vocab = enc.vocab()
    return [vocab[i] for i in out.ids[0, : out.lengths[0]]]


# --- cleaning -----------------------------------------------------------------------------------


def test_every_cleaning_option_on_its_own():
    off = {"normalize": False, "lowercase": False}
    assert clean("Ｔｏｋｙｏ ﬁle", TextConfig(**off)) == "Ｔｏｋｙｏ ﬁle"
    assert clean("Ｔｏｋｙｏ ﬁle", TextConfig(lowercase=False)) == "Tokyo file"
    assert clean("Hello WORLD", TextConfig(normalize=False)) == "hello world"
    text = "See https://x.com/a?b=1, WWW.foo.org or http://y.io now"
    assert clean(text, TextConfig(**off)) == text
    assert clean(text, TextConfig(strip_urls=True, **off)) == "See or now"
    text = "pi is 3.14, about 1,000 items in mp3s"
    assert clean(text, TextConfig(strip_numbers=True, **off)) == "pi is , about items in mp s"
    text = "hello, world! «quoted» $5 + 東京。『本』"
    assert clean(text, TextConfig(**off)) == text
    assert clean(text, TextConfig(strip_punctuation=True, **off)) == "hello world quoted 5 東京 本"


def test_whitespace_is_always_collapsed_and_options_combine():
    assert clean("  a \t\n  b\u3000c  ", TextConfig()) == "a b c"
    cfg = TextConfig(strip_urls=True, strip_numbers=True, strip_punctuation=True)
    # URL before numbers/punctuation (none of it is left), numbers before punctuation ("3.14").
    assert clean("Visit https://a.b/c-1.html: Pi=3.14!", cfg) == "visit pi"


# --- tokenisers ---------------------------------------------------------------------------------


def test_word_tokens_english_chinese_japanese_korean():
    cfg = TextConfig()
    assert word_tokens(clean("I love 東京!", cfg)) == ["i", "love", "東", "京", "!"]
    assert word_tokens("don't stop") == ["don", "'", "t", "stop"]
    assert word_tokens("我爱北京天安门") == ["我", "爱", "北", "京", "天", "安", "门"]
    assert word_tokens("東京タワーに行きました。") == list("東京タワーに行きました。")
    assert word_tokens("서울 좋아") == ["서", "울", "좋", "아"]
    # Combining vowel signs stay inside their word (Python's \w alone would cut it in three).
    assert word_tokens("हिन्दी text") == ["हिन्दी", "text"]
    assert word_tokens("snake_case x2") == ["snake_case", "x2"]


def test_char_tokens_keep_spaces():
    assert char_tokens("ab c") == ["a", "b", " ", "c"]
    enc = fit(["ab c", "a"], tokenizer="char")
    assert enc.vocab() == ["[PAD]", "[UNK]", "a", " ", "b", "c"]
    assert encode_tokens(enc, "c a!") == ["c", " ", "a", "[UNK]"]


# --- word/char vocabularies ---------------------------------------------------------------------


def test_vocab_order_min_frequency_vocab_size_and_unknown_ids():
    texts = ["b a", "a c", "a b d", "e"]  # a: 3, b: 2, c, d, e: 1
    assert fit(texts).vocab() == ["[PAD]", "[UNK]", "a", "b", "c", "d", "e"]  # count, then token
    assert fit(texts, min_frequency=2).vocab() == ["[PAD]", "[UNK]", "a", "b"]
    enc = fit(texts, vocab_size=1)
    assert enc.vocab() == ["[PAD]", "[UNK]", "a"] and enc.vocab_size == 3
    out = fit(texts).encode(["a zebra b"])
    assert out.ids.tolist() == [[2, 1, 3]] and out.lengths.tolist() == [3]


def test_padding_lengths_and_truncation():
    enc = fit(["a b c d e"], max_length=3)  # ids a=2 .. e=6
    out = enc.encode(["a b c d e", "a", "", "b c d", None, "   ", "e d c b"])
    assert out.ids.dtype == np.int64 and out.lengths.dtype == np.int64
    assert out.ids.tolist() == [
        [2, 3, 4],  # the beginning is kept
        [2, 0, 0],
        [0, 0, 0],
        [3, 4, 5],
        [0, 0, 0],
        [0, 0, 0],
        [6, 5, 4],
    ]
    assert out.lengths.tolist() == [3, 1, 0, 3, 0, 0, 3]
    assert out.truncated == 2  # "b c d" is exactly max_length: not cut
    short = enc.encode(["a", "b c"])
    assert short.ids.shape == (2, 2) and short.truncated == 0  # padded to the longest in the call
    assert enc.encode([]).ids.shape == (0, 1)
    assert enc.encode(["", ""]).ids.shape == (2, 1)  # L is at least 1


def test_empty_vocabulary_names_the_column_and_the_setting():
    with pytest.raises(DataError, match=r"column 'review': all 2 training texts are empty") as e:
        fit(["!!! ???", "..."], strip_punctuation=True)
    assert "strip_punctuation" in str(e.value)
    with pytest.raises(DataError, match=r"column 'review': no token occurs at least 5 times"):
        fit(["a b", "a c"], min_frequency=5)
    with pytest.raises(DataError, match=r"data\.columns\.review\.text\.min_frequency"):
        fit(["a b"], tokenizer="char", min_frequency=9)
    with pytest.raises(DataError, match=r"column 'notes': all 1 training texts are empty"):
        fit(["https://a.b"], column="notes", tokenizer="bpe", strip_urls=True)


# --- stop words ---------------------------------------------------------------------------------


def test_english_stop_words():
    enc = fit(["The cat is on the mat", "a dog and THE bird"], stopwords="english")
    assert enc.vocab() == ["[PAD]", "[UNK]", "bird", "cat", "dog", "mat"]
    out = enc.encode(["the cat", "the and is", "Don't"])
    assert out.lengths.tolist() == [1, 0, 1]  # only stop words: length 0; "don", "t" dropped
    assert 100 < len(enc.stopwords) < 200 and {"the", "is", "and"} <= enc.stopwords


def test_custom_stop_word_file_relative_to_base_dir(tmp_path):
    (tmp_path / "stop.txt").write_text("# my list\nFoo\n\n  bar  \n", encoding="utf-8")
    enc = fit(["foo bar baz", "Baz qux"], stopwords="stop.txt", base_dir=tmp_path)
    assert enc.stopwords == frozenset({"foo", "bar"})  # lowercased like the texts
    assert enc.vocab() == ["[PAD]", "[UNK]", "baz", "qux"]
    with pytest.raises(ConfigError, match=r"stopwords: .*nope\.txt does not exist"):
        fit(["a"], stopwords="nope.txt", base_dir=tmp_path)


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece", "char"])
def test_stop_words_need_the_word_tokenizer(tokenizer):
    with pytest.raises(ConfigError, match=r"^data\.columns\.review\.text\.stopwords: .*word"):
        fit(["a b"], tokenizer=tokenizer, stopwords="english")


# --- bpe / wordpiece ----------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece"])
def test_subword_training(tokenizer):
    enc = fit(CORPUS, tokenizer=tokenizer, vocab_size=150)
    vocab = enc.vocab()
    assert 50 < enc.vocab_size <= 150 and len(vocab) == enc.vocab_size
    assert vocab[:2] == ["[PAD]", "[UNK]"]
    # Unseen words made of seen pieces: several sub-tokens, none unknown.
    for word in ["callings", "lookered"]:
        pieces = encode_tokens(enc, word)
        assert len(pieces) > 1 and "[UNK]" not in pieces, pieces
    assert encode_tokens(enc, "東京") == ["東", "京"]  # CJK split one character per token
    smaller = fit(CORPUS, tokenizer=tokenizer, vocab_size=80)
    assert smaller.vocab_size <= 80 < enc.vocab_size


def test_bpe_min_frequency_limits_merges():
    many = fit(CORPUS, tokenizer="bpe", vocab_size=500)
    few = fit(CORPUS, tokenizer="bpe", vocab_size=500, min_frequency=40)
    assert few.vocab_size < many.vocab_size


# --- a given tokenizer.json ---------------------------------------------------------------------


def save_word_level(path, *, pad: bool = False) -> None:
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if pad:
        tok.enable_padding(length=10, pad_id=0)
        tok.enable_truncation(max_length=1)
    tok.save(str(path))


def test_tokenizer_file_ids_are_shifted_by_one(tmp_path):
    save_word_level(tmp_path / "tok.json", pad=True)  # its own padding/truncation are ignored
    enc = fit([], tokenizer_file="tok.json", base_dir=tmp_path, tokenizer="bpe")
    assert enc.kind == "file" and enc.vocab_size == 4
    assert enc.vocab() == ["[PAD]", "<unk>", "hello", "world"]
    out = enc.encode(["Hello world zzz", "world"])
    assert out.ids.tolist() == [[2, 3, 1], [3, 0, 0]] and out.lengths.tolist() == [3, 1]


def test_missing_and_broken_tokenizer_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.columns\.review\.text\.tokenizer_file: .*"):
        fit(["a"], tokenizer_file=str(tmp_path / "missing.json"))
    try:
        fit(["a"], tokenizer_file=str(tmp_path / "missing.json"))
    except ConfigError as e:
        assert str(tmp_path / "missing.json") in str(e) and "does not exist" in str(e)
    (tmp_path / "broken.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot load .*broken\.json as a Hugging Face") as e:
        fit(["a"], tokenizer_file="broken.json", base_dir=tmp_path)
    assert "\n" not in str(e.value)


# --- state --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"tokenizer": "word", "stopwords": "stop.txt", "max_length": 4},
        {"tokenizer": "char", "strip_punctuation": True},
        {"tokenizer": "bpe", "vocab_size": 120},
        {"tokenizer": "wordpiece", "vocab_size": 120, "lowercase": False},
        {"tokenizer_file": "tok.json", "stopwords": None},
    ],
    ids=["word", "char", "bpe", "wordpiece", "file"],
)
def test_state_round_trip_encodes_identically(tmp_path, settings):
    (tmp_path / "stop.txt").write_text("play\nthe\n", encoding="utf-8")
    save_word_level(tmp_path / "tok.json")
    enc = fit(CORPUS, base_dir=tmp_path, **settings)
    state = json.loads(json.dumps(enc.state()))
    (tmp_path / "stop.txt").unlink()  # the state must not need the files any more
    (tmp_path / "tok.json").unlink()
    again = TextEncoder.from_state(state)
    texts = [*CORPUS[:5], "Played THE hello world 東京!", "", "unseen zzz qqq"]
    a, b = enc.encode(texts), again.encode(texts)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    assert a.truncated == b.truncated
    assert again.vocab() == enc.vocab() and again.vocab_size == enc.vocab_size
    assert again.stopwords == enc.stopwords and again.cfg == enc.cfg
    assert a.ids.max() < enc.vocab_size


def test_config_is_strict():
    with pytest.raises(pydantic.ValidationError):
        TextConfig(max_length="64")
    with pytest.raises(pydantic.ValidationError):
        TextConfig(lowercas=False)
    with pytest.raises(pydantic.ValidationError):
        TextConfig(tokenizer="sentencepiece")
    with pytest.raises(pydantic.ValidationError):
        TextConfig(vocab_size=0)


@pytest.mark.parametrize("tokenizer", ["word", "char", "bpe"])
def test_many_texts_encode_as_a_text_by_text_reference(tokenizer):
    """encode's batch path (one flat stream of ids, one masked fill of the padded array) gives
    what encoding each text on its own gives: unknown tokens, stop words, truncation, empty and
    missing texts included. Its speed: bench/data_transform.py."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)] + ["The", "and", "東京"]
    texts = [" ".join(rng.choice(words, rng.integers(0, 14))) + "." for _ in range(2000)]
    texts += ["", None, "   ", "zzz qqq unseen"]
    # Fewer ids than words (unknown ones), and rows longer than max_length (cut).
    settings = {"max_length": 10, "vocab_size": 200}
    if tokenizer == "word":
        settings["stopwords"] = "english"
    enc = fit(texts[:500], tokenizer=tokenizer, **settings)
    out = enc.encode(texts)
    vocab, stop = enc.vocab(), enc.stopwords or frozenset()
    subword = Tokenizer.from_str(enc.state()["tokenizer"]) if tokenizer == "bpe" else None
    rows = []
    for text in texts:
        cleaned = clean("" if text is None else text, enc.cfg)
        if subword is not None:
            rows.append(subword.encode(cleaned, add_special_tokens=False).ids)
            continue
        tokens = word_tokens(cleaned) if tokenizer == "word" else char_tokens(cleaned)
        rows.append([vocab.index(t) if t in vocab[2:] else 1 for t in tokens if t not in stop])
    lengths = [min(len(row), 10) for row in rows]
    expected = np.zeros((len(rows), max(lengths)), dtype=np.int64)
    for i, row in enumerate(rows):
        expected[i, : lengths[i]] = row[:10]
    np.testing.assert_array_equal(out.ids, expected)
    assert out.lengths.tolist() == lengths
    assert out.truncated == sum(len(row) > 10 for row in rows) > 0
    assert 1 in expected and lengths[-4:-1] == [0, 0, 0]  # unknown tokens; empty and missing
