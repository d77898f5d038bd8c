"""Character-level tokenizer: one token per character seen in the training text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit.errors import AttnkitError
from attnkit.tokenizers.byte import write_text_atomic

# How many unseen characters an error message lists before summarising the rest.
_MAX_LISTED = 10


class CharTokenizer:
    """Maps each distinct character of the training text to an id.

    The vocabulary is the sorted set of characters, so training is
    deterministic and id ``i`` is ``chars[i]``. Characters outside the
    vocabulary cannot be encoded (there is no "unknown" token): ``encode``
    raises :class:`AttnkitError` naming them, which is the honest answer for a
    model that has never seen them.
    """

    kind: str = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        """Build from the ordered vocabulary ``chars`` (distinct 1-character strings)."""
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

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of ``text``; ``vocab_size`` is ignored."""
        del vocab_size  # the corpus alone decides the vocabulary
        if not text:
            raise AttnkitError(
                "cannot train a char tokenizer on empty text (use a non-empty corpus)"
            )
        return cls(sorted(set(text)))

    @property
    def chars(self) -> list[str]:
        """The vocabulary in id order (a copy)."""
        return list(self._chars)

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self._chars)

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

    def decode(self, ids: Sequence[int]) -> str:
        """Text for ``ids``; an id outside ``[0, vocab_size)`` raises :class:`AttnkitError`."""
        ids = [int(i) for i in ids]
        n = len(self._chars)
        # Checked explicitly because Python would silently accept negative indices.
        if ids and (min(ids) < 0 or max(ids) >= n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise AttnkitError(
                f"token id {bad} is out of range for the char tokenizer (vocab_size {n}) "
                "(use the tokenizer.json saved with the checkpoint)"
            )
        chars = self._chars
        return "".join([chars[i] for i in ids])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"kind": "char", "chars": [...]}``."""
        return {"kind": "char", "chars": list(self._chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != "char" or not isinstance(data.get("chars"), list):
            raise AttnkitError(
                'not a char tokenizer description (expected {"kind": "char", "chars": '
                "[...]}) (retrain the tokenizer or restore its tokenizer.json)"
            )
        return cls(data["chars"])

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically)."""
        # ASCII escapes (the json default) keep even odd code points writable.
        write_text_atomic(path, json.dumps(self.to_dict()) + "\n", "tokenizer")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self._chars == other._chars

    def __hash__(self) -> int:
        return hash(("char", tuple(self._chars)))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
