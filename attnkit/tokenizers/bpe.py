"""Byte-level BPE tokenizer, trained locally with the Hugging Face ``tokenizers`` library.

Byte-level means the text is first turned into UTF-8 bytes (each shown as one
printable stand-in character) and BPE merges are learned over those. Because
all 256 byte symbols are forced into the initial alphabet, every Unicode
string can be encoded and decodes back exactly, and there is no unknown token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from attnkit.errors import AttnkitError
from attnkit.tokenizers.byte import check_utf8_encodable, write_text_atomic

#: Smallest allowed vocabulary: the 256 byte symbols plus at least one merge.
MIN_VOCAB_SIZE = 257

# Training text is fed to the trainer in pieces of about this many characters,
# so a large corpus is never copied or pre-tokenized as one giant string.
_TRAIN_CHUNK_CHARS = 1 << 20


def _training_chunks(text: str, chunk_chars: int = _TRAIN_CHUNK_CHARS) -> Iterator[str]:
    """Yield consecutive pieces of ``text`` (about ``chunk_chars`` long) cut after a newline.

    Cutting at newlines keeps words whole, so merge statistics match what one
    pass over the whole text would see (up to whitespace runs at the cuts).
    """
    start, n = 0, len(text)
    while start < n:
        cut = text.find("\n", start + chunk_chars)
        end = n if cut < 0 else cut + 1
        yield text[start:end]
        start = end


def _validate_vocab_size(vocab_size: object) -> int:
    """Return ``vocab_size`` as an int, or raise :class:`AttnkitError` if unusable for BPE."""
    if vocab_size is None:
        raise AttnkitError(
            "the bpe tokenizer needs a vocabulary size "
            f"(set --data.vocab_size, e.g. 1024; at least {MIN_VOCAB_SIZE})"
        )
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise AttnkitError(
            f"bpe vocab_size must be an integer, got {vocab_size!r} "
            f"(set --data.vocab_size to an integer >= {MIN_VOCAB_SIZE})"
        )
    if vocab_size < MIN_VOCAB_SIZE:
        raise AttnkitError(
            f"bpe vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens "
            f"plus merges (set --data.vocab_size >= {MIN_VOCAB_SIZE}, or use "
            "--data.tokenizer=byte)"
        )
    return vocab_size


class BPETokenizer:
    """Wraps a ``tokenizers.Tokenizer`` whose model is BPE.

    Trained tokenizers use the byte-level pre-tokenizer (no prefix space) and
    decoder; loading accepts any Hugging Face ``tokenizer.json`` with a BPE
    model. ``vocab_size`` is the vocabulary actually learned, which can be
    smaller than the size requested when the corpus runs out of pairs to merge.
    """

    kind: str = "bpe"

    def __init__(self, tokenizer: HFTokenizer) -> None:
        """Wrap an existing ``tokenizers.Tokenizer`` (its model must be BPE)."""
        model_type = json.loads(tokenizer.to_str()).get("model", {}).get("type")
        if model_type != "BPE":
            raise AttnkitError(
                f"tokenizer model is {model_type!r}, not BPE "
                "(train with --data.tokenizer=bpe or load a BPE tokenizer.json)"
            )
        self._tok = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None) -> BPETokenizer:
        """Learn byte-level BPE merges from ``text`` up to ``vocab_size`` tokens (>= 257)."""
        vocab_size = _validate_vocab_size(vocab_size)
        if not text:
            raise AttnkitError(
                "cannot train a bpe tokenizer on empty text (use a non-empty corpus)"
            )
        check_utf8_encodable(text, "training text")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            special_tokens=[],
            # All 256 byte symbols, even unseen ones, so any string stays encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_training_chunks(text), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the learned vocabulary (ids are ``0 .. vocab_size-1``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text`` (no special tokens are added)."""
        check_utf8_encodable(text, "text to encode")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text for ``ids``; bytes that do not form valid UTF-8 become U+FFFD.

        Ids outside ``[0, vocab_size)`` raise :class:`AttnkitError` (the library
        would silently drop them).
        """
        ids = [int(i) for i in ids]
        n = self.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise AttnkitError(
                f"token id {bad} is out of range for the bpe tokenizer (vocab_size {n}) "
                "(use the tokenizer.json saved with the checkpoint)"
            )
        return self._tok.decode(ids, skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``tokenizer.json`` content as a dict."""
        return json.loads(self._tok.to_str())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        """Inverse of :meth:`to_dict` (any HF tokenizer JSON with a BPE model)."""
        return cls.from_str(json.dumps(data))

    @classmethod
    def from_str(cls, text: str) -> BPETokenizer:
        """Load from Hugging Face ``tokenizer.json`` text."""
        try:
            tok = HFTokenizer.from_str(text)
        except Exception as exc:  # noqa: BLE001 -- the Rust side raises a bare Exception
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AttnkitError(
                f"invalid bpe tokenizer JSON: {first_line} "
                "(retrain the tokenizer or restore its tokenizer.json)"
            ) from None
        return cls(tok)

    @property
    def hf_tokenizer(self) -> HFTokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (shared, not a copy)."""
        return self._tok

    def save(self, path: str | Path) -> None:
        """Write the standard HF ``tokenizer.json`` to ``path`` (atomically)."""
        write_text_atomic(path, self._tok.to_str() + "\n", "tokenizer")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable wrapper: equality by content only

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"
