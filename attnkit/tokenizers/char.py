"""Character-level tokenizer: one token per character seen in the training text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit.errors import AttnkitError
from attnkit.tokenizers.byte import write_text_atomic
from attnkit.tokenizers.specials import check_ids, check_specials, missing, spelling

# How many unseen characters an error message lists before summarising the rest.
_MAX_LISTED = 10


class CharTokenizer:
    """Maps each distinct character of the training text to an id.

    The vocabulary is the sorted set of characters, so training is
    deterministic and id ``i`` is ``chars[i]``. Characters outside the
    vocabulary cannot be encoded (there is no "unknown" token): ``encode``
    raises :class:`AttnkitError` naming them, which is the honest answer for a
    model that has never seen them.

    Special tokens (``specials``, names such as ``"pad"``) take the ids after
    the characters, in the order given; no text encodes to them.
    """

    kind: str = "char"

    def __init__(self, chars: Sequence[str], specials: Sequence[str] = ()) -> None:
        """Build from the ordered vocabulary ``chars`` (distinct 1-character strings), then
        the special tokens named in ``specials``."""
        chars = list(chars)
        if not chars:
            raise AttnkitError(
                "char tokenizer has an empty vocabulary (train it on a non-empty corpus)"
            )
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise AttnkitError(
                "char tokenizer vocabulary must hold single characters "
                "(retrain the tokenizer or restore its tokenizer.json)"
            )
        if len(set(chars)) != len(chars):
            raise AttnkitError(
                "char tokenizer vocabulary has duplicate characters "
                "(retrain the tokenizer or restore its tokenizer.json)"
            )
        self._chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        self._specials = check_specials(specials)

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              specials: Sequence[str] = ()) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of ``text``, then ``specials``;
        ``vocab_size`` is ignored."""
        del vocab_size  # the corpus alone decides the vocabulary
        if not text:
            raise AttnkitError(
                "cannot train a char tokenizer on empty text (use a non-empty corpus)"
            )
        return cls(sorted(set(text)), specials)

    def with_specials(self, specials: Sequence[str]) -> CharTokenizer:
        """This tokenizer with the named special tokens it lacks appended (ids unchanged)."""
        extra = missing(check_specials(specials), self.special_tokens)
        return CharTokenizer(self._chars, self._specials + extra) if extra else self

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token name -> id; the specials follow the characters."""
        n = len(self._chars)
        return {name: n + i for i, name in enumerate(self._specials)}

    @property
    def chars(self) -> list[str]:
        """The vocabulary in id order (a copy)."""
        return list(self._chars)

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters plus the special tokens."""
        return len(self._chars) + len(self._specials)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; unseen characters raise :class:`AttnkitError`."""
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            pass
        # Slow path only on failure: collect every unseen character (in order of
        # first appearance) so the user can fix them all in one go.
        unseen = list(dict.fromkeys(c for c in text if c not in index))
        listed = ", ".join(repr(c) for c in unseen[:_MAX_LISTED])
        if len(unseen) > _MAX_LISTED:
            listed += f" and {len(unseen) - _MAX_LISTED} more"
        raise AttnkitError(
            f"prompt contains characters the char tokenizer never saw: {listed} "
            "(use only characters from the training corpus, "
            "or train with --data.tokenizer=byte)"
        )

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text for ``ids``; an id outside ``[0, vocab_size)`` raises :class:`AttnkitError`.

        Special tokens are dropped, or with ``skip_special=False`` written ``<|name|>``.
        """
        ids = check_ids(ids, self.vocab_size, "char")
        chars = self._chars
        if max(ids, default=-1) < len(chars):  # the common case: no special tokens
            return "".join([chars[i] for i in ids])
        names = self._specials
        specials = [None if skip_special else spelling(name) for name in names]
        pieces = [chars[i] if i < len(chars) else specials[i - len(chars)] for i in ids]
        return "".join(p for p in pieces if p is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"kind": "char", "chars": [...]}``, plus
        ``"specials": [names]`` when there are special tokens."""
        out: dict[str, Any] = {"kind": "char", "chars": list(self._chars)}
        if self._specials:
            out["specials"] = list(self._specials)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != "char" or not isinstance(data.get("chars"), list):
            raise AttnkitError(
                'not a char tokenizer description (expected {"kind": "char", "chars": '
                "[...]}) (retrain the tokenizer or restore its tokenizer.json)"
            )
        specials = data.get("specials", [])
        if not isinstance(specials, list):
            raise AttnkitError(
                "char tokenizer \"specials\" must be a list of names "
                "(retrain the tokenizer or restore its tokenizer.json)"
            )
        return cls(data["chars"], specials)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically)."""
        # ASCII escapes (the json default) keep even odd code points writable.
        write_text_atomic(path, json.dumps(self.to_dict()) + "\n", "tokenizer")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CharTokenizer) and self._chars == other._chars
                and self._specials == other._specials)

    def __hash__(self) -> int:
        return hash(("char", tuple(self._chars), self._specials))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
