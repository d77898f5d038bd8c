"""Tests for attnkit.tokenizers: round-trips, persistence and user-facing errors."""

from __future__ import annotations

import functools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from attnkit.errors import AttnkitError
from attnkit.tokenizers import (
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)


def _sample_text(n_words: int = 4000, seed: int = 0) -> str:
    """Small multilingual text with repetition, so BPE has merges to learn."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "über", "naïve", "日本語", "😀", "tokens"]
    seps = [" ", " ", " ", "\n", ", ", ".\n\n"]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(n_words))


@functools.cache
def _bpe() -> BPETokenizer:
    # Trained once per module: hypothesis re-runs the tests many times.
    tok = train_tokenizer("bpe", _sample_text(), vocab_size=300)
    assert isinstance(tok, BPETokenizer)
    return tok


def _all_kinds() -> list[Tokenizer]:
    text = _sample_text()
    return [train_tokenizer("char", text), train_tokenizer("byte", text), _bpe()]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["char", "byte", "bpe"])
def test_round_trip_on_training_text(index: int) -> None:
    tok = _all_kinds()[index]
    text = _sample_text(500, seed=1)  # different text, same characters
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert isinstance(tok, Tokenizer)
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_char_vocabulary_is_sorted_distinct_characters() -> None:
    tok = CharTokenizer.train("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]


def test_byte_tokenizer_is_utf8() -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.encode("é") == [0xC3, 0xA9]
    # A partial multi-byte sequence decodes to U+FFFD instead of failing.
    assert tok.decode([0xC3]) == "\ufffd"


def test_bpe_learns_merges_and_respects_requested_size() -> None:
    tok = _bpe()
    assert 256 < tok.vocab_size <= 300
    text = "the cat sat on the mat"
    assert len(tok.encode(text)) < len(text.encode("utf-8"))


def test_bpe_training_is_deterministic() -> None:
    again = train_tokenizer("bpe", _sample_text(), vocab_size=300)
    assert again == _bpe()


def test_bpe_decodes_partial_utf8_to_replacement_char() -> None:
    tok = _bpe()
    ids = tok.encode("€")  # not in the corpus: three byte tokens
    assert len(ids) == 3
    assert tok.decode(ids[:1]) == "\ufffd"


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_any_string_round_trips_through_byte(text: str) -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_any_string_round_trips_through_bpe(text: str) -> None:
    tok = _bpe()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_char_unseen_characters_error_lists_them() -> None:
    tok = CharTokenizer.train("abc")
    with pytest.raises(AttnkitError) as exc:
        tok.encode("abé€é")
    msg = str(exc.value)
    assert "prompt contains characters the char tokenizer never saw: 'é', '€'" in msg
    assert "--data.tokenizer=byte" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("bad", [[3], [-1], [0, 99]])
def test_char_decode_out_of_range(bad: list[int]) -> None:
    with pytest.raises(AttnkitError, match="out of range"):
        CharTokenizer.train("abc").decode(bad)


def test_byte_and_bpe_decode_out_of_range() -> None:
    with pytest.raises(AttnkitError, match="out of range"):
        ByteTokenizer().decode([256])
    with pytest.raises(AttnkitError, match="out of range"):
        _bpe().decode([_bpe().vocab_size])


def test_lone_surrogate_is_a_user_error() -> None:
    for tok in (ByteTokenizer(), _bpe()):
        with pytest.raises(AttnkitError, match="surrogate"):
            tok.encode("a\udc80b")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["char", "byte", "bpe"])
def test_save_load_round_trip(tmp_path, index: int) -> None:
    tok = _all_kinds()[index]
    path = tmp_path / "run" / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok)
    assert loaded.kind == tok.kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.to_dict() == tok.to_dict()
    text = _sample_text(200, seed=2)
    assert loaded.encode(text) == tok.encode(text)
    assert tokenizer_from_dict(json.loads(path.read_text())).to_dict() == tok.to_dict()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp litter


def test_saved_json_formats(tmp_path) -> None:
    CharTokenizer.train("ba").save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == {"kind": "char", "chars": ["a", "b"]}
    ByteTokenizer().save(tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text()) == {"kind": "byte"}
    _bpe().save(tmp_path / "bpe.json")
    data = json.loads((tmp_path / "bpe.json").read_text())
    assert data["model"]["type"] == "BPE"
    # Standard HF format: the library itself can load it.
    hf = HFTokenizer.from_str((tmp_path / "bpe.json").read_text())
    assert hf.encode("the cat").ids == _bpe().encode("the cat")


def test_tokenizers_table_and_bad_kind() -> None:
    assert set(TOKENIZERS) == {"char", "byte", "bpe"}
    with pytest.raises(AttnkitError, match="char, byte, bpe"):
        train_tokenizer("wordpiece", "text")


def test_char_and_byte_ignore_vocab_size() -> None:
    assert train_tokenizer("byte", "abc", vocab_size=10).vocab_size == 256
    assert train_tokenizer("char", "abc", vocab_size=1000).vocab_size == 3


@pytest.mark.parametrize("size", [None, 0, 100, 256])
def test_bpe_vocab_too_small_or_missing(size: int | None) -> None:
    with pytest.raises(AttnkitError, match="257"):
        train_tokenizer("bpe", "some text", vocab_size=size)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"kind": "sentencepiece"}', "unknown tokenizer"),
        ('{"something": "else"}', "unrecognised"),
        ('{"kind": "char", "chars": []}', "empty vocabulary"),
        ('{"kind": "char", "chars": ["ab"]}', "single characters"),
        ('{"model": {"type": "BPE", "vocab": 3}}', "invalid bpe tokenizer JSON"),
        ("\udcff", "cannot read"),
    ],
)
def test_corrupt_tokenizer_file(tmp_path, content: str, match: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(AttnkitError, match=match) as exc:
        load_tokenizer(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_tokenizer_file(tmp_path) -> None:
    with pytest.raises(AttnkitError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")
