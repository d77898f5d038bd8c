"""Byte-level tokenizer: one token per UTF-8 byte, vocabulary of 256.

Also home to two helpers shared by the other tokenizers, because every
tokenizer ultimately deals in UTF-8 text and writes one small file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit.errors import AttnkitError
from attnkit.tokenizers.specials import check_ids, check_specials, missing, spelling


def check_utf8_encodable(text: str, what: str) -> None:
    """Raise :class:`AttnkitError` if ``text`` cannot be encoded as UTF-8.

    The only Python strings that cannot are those with unpaired surrogates,
    which appear when a command-line argument held bytes that were not valid
    UTF-8 (Python smuggles them in via ``surrogateescape``).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AttnkitError(
            f"{what} is not valid Unicode: unpaired surrogate {text[exc.start]!r} at "
            f"character {exc.start} (pass text that is valid UTF-8)"
        ) from None


def write_text_atomic(path: str | Path, text: str, what: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically, creating parent folders.

    Writes a temporary file in the same folder and ``os.replace``s it over the
    target, so a crash never leaves a half-written file that a later load would
    choke on. I/O failures become one-line :class:`AttnkitError`\\ s.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            # Never leave temporary litter next to the real file.
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise AttnkitError(
            f"cannot write {what} to {path}: {exc.strerror or exc} (choose a writable location)"
        ) from None


class ByteTokenizer:
    """Tokens are the UTF-8 bytes of the text: ids 0-255, then any special tokens.

    Needs no training and can encode any (valid Unicode) string. ``decode``
    replaces incomplete or invalid byte sequences with U+FFFD, so a model that
    samples a partial multi-byte character still yields printable text.
    """

    kind: str = "byte"

    def __init__(self, specials: Sequence[str] = ()) -> None:
        """``specials``: names of special tokens, given ids 256, 257, ... in order."""
        self._specials = check_specials(specials)

    @property
    def vocab_size(self) -> int:
        """256 plus the number of special tokens."""
        return 256 + len(self._specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token name -> id (from 256 on)."""
        return {name: 256 + i for i, name in enumerate(self._specials)}

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              specials: Sequence[str] = ()) -> ByteTokenizer:
        """Return a tokenizer; ``text`` and ``vocab_size`` are ignored (nothing to learn)."""
        del text, vocab_size
        return cls(specials)

    def with_specials(self, specials: Sequence[str]) -> ByteTokenizer:
        """This tokenizer with the named special tokens it lacks appended (ids unchanged)."""
        extra = missing(check_specials(specials), self.special_tokens)
        return ByteTokenizer(self._specials + extra) if extra else self

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as ints in ``[0, 256)``."""
        check_utf8_encodable(text, "text to encode")
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text for byte ids; invalid UTF-8 becomes U+FFFD. Ids outside [0, vocab_size) raise.

        Special tokens are dropped, or with ``skip_special=False`` written ``<|name|>``.
        """
        ids = check_ids(ids, self.vocab_size, "byte")
        if max(ids, default=0) < 256:
            return bytes(ids).decode("utf-8", errors="replace")
        # Decode each run of bytes on its own, so a special token splits the text there.
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            pieces.append(bytes(run).decode("utf-8", errors="replace"))
            run = []
            if not skip_special:
                pieces.append(spelling(self._specials[i - 256]))
        pieces.append(bytes(run).decode("utf-8", errors="replace"))
        return "".join(pieces)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"kind": "byte"}``, plus ``"specials": [names]`` when
        there are special tokens."""
        if self._specials:
            return {"kind": "byte", "specials": list(self._specials)}
        return {"kind": "byte"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ByteTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != "byte":
            raise AttnkitError(
                f"not a byte tokenizer description (kind={data.get('kind')!r}) "
                "(load it with attnkit.tokenizers.load_tokenizer)"
            )
        specials = data.get("specials", [])
        if not isinstance(specials, list):
            raise AttnkitError(
                'byte tokenizer "specials" must be a list of names '
                "(retrain the tokenizer or restore its tokenizer.json)"
            )
        return cls(specials)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically)."""
        write_text_atomic(path, json.dumps(self.to_dict()) + "\n", "tokenizer")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer) and self._specials == other._specials

    def __hash__(self) -> int:
        return hash(("byte", self._specials))

    def __repr__(self) -> str:
        return f"ByteTokenizer(specials={list(self._specials)})" if self._specials else \
            "ByteTokenizer()"
