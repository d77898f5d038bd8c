"""Tokenizers backed by the Hugging Face ``tokenizers`` library, and the ``hf`` kind.

:class:`HFBackedTokenizer` holds what every such tokenizer shares: the
vocabulary size, special tokens read from the added tokens, encoding that never
turns plain text into a special token, decoding that skips them, and the
standard ``tokenizer.json`` as the saved form. The ``bpe`` and ``gpt2`` kinds
build on it; :class:`HuggingFaceTokenizer` (kind ``hf``) wraps any
``tokenizer.json`` as it is - WordPiece (BERT, MiniLM), BPE (GPT-2, Llama,
BART) or Unigram.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from attnkit.errors import AttnkitError
from attnkit.tokenizers.byte import check_utf8_encodable, write_text_atomic
from attnkit.tokenizers.specials import check_ids, check_specials, missing, specials_from_added, spelling


class HFBackedTokenizer:
    """The shared behaviour of tokenizers that wrap a ``tokenizers.Tokenizer``."""

    kind: str = "hf"
    _what: str = "Hugging Face"  # how error messages name this kind

    def __init__(self, tokenizer: HFTokenizer) -> None:
        # Text that happens to spell "<|endoftext|>" or "[CLS]" is encoded as text:
        # special tokens come only from add_special=True or from the caller's ids.
        tokenizer.encode_special_tokens = True
        # Padding and truncation are the batcher's business; a tokenizer.json saved with
        # them on (MiniLM pads to 128) would otherwise pad or cut every encoded text.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._special_tokens = specials_from_added(added)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added (special) tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token name (``pad``, ``bos``, ``eos``, ``unk``, ``mask``, ``cls``, ``sep``)
        -> id, for the names this vocabulary has."""
        return dict(self._special_tokens)

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids for ``text``; special tokens only when ``add_special`` asks the
        tokenizer's post-processor for them (BERT's ``[CLS] ... [SEP]``)."""
        check_utf8_encodable(text, "text to encode")
        return self._tok.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text for ``ids``, special tokens dropped unless ``skip_special=False``.

        Ids outside ``[0, vocab_size)`` raise :class:`AttnkitError` (the library
        would silently drop them).
        """
        ids = check_ids(ids, self.vocab_size, self.kind)
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def with_specials(self, specials: Sequence[str]):
        """A copy with the named special tokens it lacks appended as ``<|name|>`` (existing
        ids unchanged); ``self`` when it has them all."""
        extra = missing(check_specials(specials), self._special_tokens)
        if not extra:
            return self
        tok = HFTokenizer.from_str(self._tok.to_str())
        tok.add_special_tokens([AddedToken(spelling(n), special=True, normalized=False)
                                for n in extra])
        return type(self)(tok)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``tokenizer.json`` content as a dict."""
        return json.loads(self._tok.to_str())

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of :meth:`to_dict`."""
        return cls.from_str(json.dumps(data))

    @classmethod
    def from_str(cls, text: str):
        """Load from Hugging Face ``tokenizer.json`` text."""
        try:
            tok = HFTokenizer.from_str(text)
        except Exception as exc:  # noqa: BLE001 -- the Rust side raises a bare Exception
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AttnkitError(
                f"invalid {cls._what} tokenizer JSON: {first_line} "
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
        return type(other) is type(self) and self._tok.to_str() == other._tok.to_str()

    __hash__ = None  # type: ignore[assignment]  # mutable wrapper: equality by content only

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class HuggingFaceTokenizer(HFBackedTokenizer):
    """Any Hugging Face ``tokenizer.json`` (kind ``hf``), used as it is.

    Not trained by attnkit: point ``--data.tokenizer`` at the file or its folder.
    ``decode(encode(s)) == s`` holds only as far as the tokenizer allows - a
    BERT WordPiece vocabulary lower-cases, strips accents and maps unknown
    characters to ``[UNK]``.
    """

    kind = "hf"

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              specials: Sequence[str] = ()) -> HuggingFaceTokenizer:
        raise AttnkitError("the hf tokenizer is loaded, not trained (set --data.tokenizer to a "
                           "path to a tokenizer.json, or a folder holding one)")

    @classmethod
    def from_file(cls, path: str | Path) -> HuggingFaceTokenizer:
        """Load ``path`` (a ``tokenizer.json``)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise AttnkitError(f"cannot read tokenizer file {path}: {reason} "
                               "(point at a readable tokenizer.json)") from None
        return cls.from_str(text)
