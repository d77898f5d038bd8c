"""The ``ids`` tokenizer: integer-token data, where the text *is* the ids.

Runs trained with ``--data.format=ids`` (see :mod:`attnkit.data.ids`) have no characters, only
integer ids. This tokenizer lets every text path (``sample``, ``inspect``, ``serve``) work on
them unchanged: an id sequence is written as the text ``"12 7 99"`` (decimal ids separated by
single spaces) and :meth:`IdsTokenizer.encode` parses any whitespace-separated ids back.

The end-of-document id that joins documents, when the data declared none, is the special token
``eos`` right after the ids (id ``n_ids``): plain text never encodes to it, and ``decode``
drops it (or writes ``<|eos|>`` with ``skip_special=False``), so ``decode`` of a prefix is
always a prefix of ``decode`` of the whole, which is what streaming needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit.errors import AttnkitError
from attnkit.tokenizers.byte import write_text_atomic
from attnkit.tokenizers.specials import check_ids, check_specials, missing, spelling

_FIX = "(retrain the tokenizer or restore its tokenizer.json)"


class IdsTokenizer:
    """Ids ``0 .. n_ids - 1`` spelled as decimal numbers, then the named special tokens."""

    kind: str = "ids"

    def __init__(self, n_ids: int, specials: Sequence[str] = ()) -> None:
        if isinstance(n_ids, bool) or not isinstance(n_ids, int) or n_ids < 1:
            raise AttnkitError(f"ids tokenizer needs a positive number of ids, got {n_ids!r} {_FIX}")
        self._n = n_ids
        self._specials = check_specials(specials)

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              specials: Sequence[str] = ()) -> IdsTokenizer:
        """``vocab_size`` ids (required: integer data declares or measures its vocabulary);
        ``text`` is ignored."""
        del text
        if vocab_size is None:
            raise AttnkitError("the ids tokenizer needs a vocabulary size (use --data.format=ids, "
                               "which measures it, or set --data.vocab_size)")
        return cls(vocab_size, specials)

    def with_specials(self, specials: Sequence[str]) -> IdsTokenizer:
        extra = missing(check_specials(specials), self.special_tokens)
        return IdsTokenizer(self._n, self._specials + extra) if extra else self

    @property
    def n_ids(self) -> int:
        """How many plain ids there are (the specials follow them)."""
        return self._n

    @property
    def special_tokens(self) -> dict[str, int]:
        return {name: self._n + i for i, name in enumerate(self._specials)}

    @property
    def vocab_size(self) -> int:
        return self._n + len(self._specials)

    def encode(self, text: str) -> list[int]:
        """The ids written in ``text`` (decimal, separated by whitespace); anything else, or an id
        outside ``[0, n_ids)``, raises :class:`AttnkitError`."""
        out = []
        for word in text.split():
            if not word.isdecimal() or not word.isascii():
                raise AttnkitError(f"{word!r} is not a token id: this run reads integer ids "
                                   f"(write them as space-separated integers, e.g. \"12 7 99\")")
            i = int(word)
            if i >= self._n:
                raise AttnkitError(f"token id {i} is outside the vocabulary of {self._n} ids "
                                   f"(use ids below {self._n})")
            out.append(i)
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """``"12 7 99"``: the ids in decimal, one space apart; specials dropped, or with
        ``skip_special=False`` written ``<|name|>``."""
        ids = check_ids(ids, self.vocab_size, "ids")
        n, names = self._n, self._specials
        words = [str(i) if i < n else None if skip_special else spelling(names[i - n]) for i in ids]
        return " ".join(w for w in words if w is not None)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "ids", "n_ids": N}``, plus ``"specials": [names]`` when there are any."""
        out: dict[str, Any] = {"kind": "ids", "n_ids": self._n}
        if self._specials:
            out["specials"] = list(self._specials)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdsTokenizer:
        n, specials = data.get("n_ids"), data.get("specials", [])
        if data.get("kind") != "ids" or isinstance(n, bool) or not isinstance(n, int):
            raise AttnkitError(f'not an ids tokenizer description (expected {{"kind": "ids", '
                               f'"n_ids": N}}) {_FIX}')
        if not isinstance(specials, list):
            raise AttnkitError(f'ids tokenizer "specials" must be a list of names {_FIX}')
        return cls(n, specials)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict()) + "\n", "tokenizer")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdsTokenizer) and (self._n, self._specials) == (other._n, other._specials)

    def __hash__(self) -> int:
        return hash(("ids", self._n, self._specials))

    def __repr__(self) -> str:
        return f"IdsTokenizer(vocab_size={self.vocab_size})"
