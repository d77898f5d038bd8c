"""Tests for attnkit.data: corpus reading, token caching, splitting and batching."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from attnkit.data import (
    BUILTIN_NAMES,
    TokenData,
    batch_generator,
    check_length,
    corpus_fingerprint,
    default_cache_dir,
    get_batch,
    prepare_tokens,
    read_corpus,
    split_sizes,
    token_dtype,
    tokenize_to_arrays,
)
from attnkit.data.tokens import text_chunks
from attnkit.errors import AttnkitError
from attnkit.tokenizers import ByteTokenizer, CharTokenizer, train_tokenizer

# ---------------------------------------------------------------- corpus


def test_builtin_corpus_size_and_determinism() -> None:
    text = read_corpus(None)
    assert 400_000 < len(text) < 550_000
    assert "pydoc" in BUILTIN_NAMES
    assert read_corpus("") == text
    assert read_corpus("pydoc") == text
    assert corpus_fingerprint(None).startswith("pydoc:")
    assert corpus_fingerprint("pydoc") == corpus_fingerprint(None)


def test_read_file(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffhéllo\r\nworld\n".encode())
    # BOM dropped; everything else (including CRLF) kept verbatim.
    assert read_corpus(str(path)) == "héllo\r\nworld\n"


def test_read_folder_sorted_recursive(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.md").write_text("B")
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "sub" / "c.RST").write_text("C")
    (tmp_path / "empty.text").write_text("")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00")  # ignored by suffix
    (tmp_path / ".hidden" / "d.txt").write_text("D")  # hidden: skipped
    assert read_corpus(str(tmp_path)) == "A\n\nB\n\nC"


def test_folder_without_text_files(tmp_path) -> None:
    (tmp_path / "x.bin").write_bytes(b"data")
    with pytest.raises(AttnkitError, match="no non-empty text files") as exc:
        read_corpus(str(tmp_path))
    assert str(tmp_path) in str(exc.value)


def test_folder_with_bad_file_names_it(tmp_path) -> None:
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"abc\x00def")
    with pytest.raises(AttnkitError, match="binary") as exc:
        read_corpus(str(tmp_path))
    assert str(tmp_path / "bad.txt") in str(exc.value)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "not found"),
        (b"", "is empty"),
        (b"  \n\t\n", "only whitespace"),
        (b"text\x00more", "binary"),
        (b"abc\xff\xfe", "not valid UTF-8 \\(bad byte at offset 3\\)"),
    ],
    ids=["missing", "empty", "whitespace", "binary", "latin1"],
)
def test_file_errors_name_the_path(tmp_path, content: bytes | None, match: str) -> None:
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AttnkitError, match=match) as exc:
        read_corpus(str(path))
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg


def test_fingerprint_tracks_changes(tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("one")
    first = corpus_fingerprint(str(path))
    assert corpus_fingerprint(str(path)) == first
    path.write_text("three")
    assert corpus_fingerprint(str(path)) != first
    folder_fp = corpus_fingerprint(str(tmp_path))
    (tmp_path / "d.txt").write_text("new")
    assert corpus_fingerprint(str(tmp_path)) != folder_fp
    with pytest.raises(AttnkitError, match="not found"):
        corpus_fingerprint(str(tmp_path / "missing"))


# ---------------------------------------------------------------- tokens


def _corpus_file(tmp_path, n_lines: int = 300) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(n_lines)))
    return str(path)


def test_token_dtype() -> None:
    assert token_dtype(256) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_split_is_deterministic_tail() -> None:
    text = "abcdefghij" * 10
    tok = CharTokenizer.train(text)
    data = tokenize_to_arrays(text, tok, val_fraction=0.1)
    ids = np.asarray(tok.encode(text))
    assert len(data.val) == 10 and len(data.train) == 90
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), ids)
    np.testing.assert_array_equal(data.val, ids[-10:])
    assert data.train.dtype == np.uint16 and data.vocab_size == 10
    assert split_sizes(1000, 0.25) == (750, 250)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.1"])
def test_bad_val_fraction(fraction) -> None:
    with pytest.raises(AttnkitError, match="val_fraction"):
        tokenize_to_arrays("abc", ByteTokenizer(), val_fraction=fraction)


def test_chunking_does_not_change_bpe_tokens() -> None:
    text = read_corpus(None)[:60_000]
    tok = train_tokenizer("bpe", text, vocab_size=400)
    pieces = list(text_chunks(text, chunk_chars=2_000))
    assert len(pieces) > 10 and "".join(pieces) == text
    chunked = [i for piece in pieces for i in tok.encode(piece)]
    assert chunked == tok.encode(text)


def test_prepare_tokens_caches_and_memory_maps(tmp_path, monkeypatch) -> None:
    source = _corpus_file(tmp_path)
    tok = CharTokenizer.train(read_corpus(source))
    cache = tmp_path / "cache"
    first = prepare_tokens(source, tok, cache, val_fraction=0.2)
    expected = tokenize_to_arrays(read_corpus(source), tok, val_fraction=0.2)
    np.testing.assert_array_equal(first.train, expected.train)
    np.testing.assert_array_equal(first.val, expected.val)
    assert first.path is not None and first.path.parent == cache
    assert sorted(p.name for p in first.path.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["n_train"] == len(expected.train) and meta["dtype"] == "uint16"

    def forbidden(text: str) -> list[int]:
        raise AssertionError("re-tokenized a cached corpus")

    monkeypatch.setattr(tok, "encode", forbidden)
    second = prepare_tokens(source, tok, cache, val_fraction=0.2)
    assert isinstance(second.train, np.memmap) and isinstance(second.val, np.memmap)
    np.testing.assert_array_equal(second.train, expected.train)
    np.testing.assert_array_equal(second.val, expected.val)
    assert second.path == first.path
    monkeypatch.undo()

    # A different split fraction is a different cache entry.
    third = prepare_tokens(source, tok, cache, val_fraction=0.1)
    assert third.path != first.path
    assert len(third.val) < len(first.val)


def test_prepare_tokens_notices_corpus_change(tmp_path) -> None:
    source = _corpus_file(tmp_path)
    tok = ByteTokenizer()
    first = prepare_tokens(source, tok, tmp_path / "cache")
    with open(source, "a") as f:
        f.write("one more line\n")
    second = prepare_tokens(source, tok, tmp_path / "cache")
    assert second.path != first.path
    assert len(second.train) + len(second.val) == os.path.getsize(source)


def test_prepare_tokens_rebuilds_damaged_entry(tmp_path) -> None:
    source = _corpus_file(tmp_path)
    tok = ByteTokenizer()
    first = prepare_tokens(source, tok, tmp_path / "cache")
    assert first.path is not None
    expected = np.array(first.train)
    (first.path / "train.bin").write_bytes(b"\x01")  # truncated by some accident
    again = prepare_tokens(source, tok, tmp_path / "cache")
    np.testing.assert_array_equal(again.train, expected)


def test_default_cache_dir_respects_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tokens"
    monkeypatch.delenv("ATTNKIT_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "attnkit", "tokens")


def test_check_length() -> None:
    data = TokenData(train=np.zeros(500, np.uint16), val=np.zeros(40, np.uint16), vocab_size=10)
    check_length(data, 39)
    with pytest.raises(AttnkitError) as exc:
        check_length(data, 64)
    assert str(exc.value).startswith(
        "corpus too short: validation split has 40 tokens but context_length is 64"
    )
    assert "--model.context_length" in str(exc.value)
    with pytest.raises(AttnkitError, match="training split has 500 tokens"):
        check_length(data, 500)


# ---------------------------------------------------------------- batches


def test_get_batch_shapes_and_shift() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 16, batch_generator(0, 0, 0, "train"))
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # tokens are consecutive, so the shift is +1
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(y.max()) <= 999


def test_get_batch_covers_last_window() -> None:
    tokens = np.arange(9, dtype=np.uint16)  # exactly one window for T=8
    x, y = get_batch(tokens, 3, 8, batch_generator(1, 2, 3, "val"))
    assert torch.equal(x, torch.arange(8).expand(3, 8))
    assert torch.equal(y, torch.arange(1, 9).expand(3, 8))
    with pytest.raises(AttnkitError, match="corpus too short"):
        get_batch(tokens, 1, 9, batch_generator(1, 2, 3, "val"))


def test_get_batch_reproducible_per_step() -> None:
    tokens = np.random.default_rng(0).integers(0, 60000, 10_000).astype(np.uint16)

    def batch(*key) -> torch.Tensor:
        return get_batch(tokens, 8, 32, batch_generator(*key))[0]

    assert torch.equal(batch(7, 10, 0, "train"), batch(7, 10, 0, "train"))
    assert not torch.equal(batch(7, 10, 0, "train"), batch(7, 11, 0, "train"))
    assert not torch.equal(batch(7, 10, 0, "train"), batch(7, 10, 1, "train"))
    assert not torch.equal(batch(7, 10, 0, "train"), batch(7, 10, 0, "val"))
    assert not torch.equal(batch(7, 10, 0, "train"), batch(8, 10, 0, "train"))
    assert not torch.equal(batch(7, 10, 0, "train"), batch(7, 10, 0, "train", 1))


def test_get_batch_from_memmap(tmp_path) -> None:
    source = _corpus_file(tmp_path)
    data = prepare_tokens(source, ByteTokenizer(), tmp_path / "cache")
    check_length(data, 64)
    x, y = get_batch(data.val, 2, 64, batch_generator(0, 0, 0, "val"))
    assert x.shape == (2, 64) and torch.equal(x[:, 1:], y[:, :-1])
