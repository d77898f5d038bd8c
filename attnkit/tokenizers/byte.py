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
    """Tokens are the UTF-8 bytes of the text, so ``vocab_size`` is always 256.

    Needs no training and can encode any (valid Unicode) string. ``decode``
    replaces incomplete or invalid byte sequences with U+FFFD, so a model that
    samples a partial multi-byte character still yields printable text.
    """

    kind: str = "byte"

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None) -> ByteTokenizer:
        """Return a tokenizer; ``text`` and ``vocab_size`` are ignored (nothing to learn)."""
        del text, vocab_size
        return cls()

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as ints in ``[0, 256)``."""
        check_utf8_encodable(text, "text to encode")
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text for byte ids; invalid UTF-8 becomes U+FFFD. Ids outside [0, 256) raise."""
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) > 255):
            bad = next(i for i in ids if not 0 <= i <= 255)
            raise AttnkitError(
                f"token id {bad} is out of range for the byte tokenizer (vocab_size 256) "
                "(use the tokenizer.json saved with the checkpoint)"
            )
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"kind": "byte"}``."""
        return {"kind": "byte"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ByteTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != "byte":
            raise AttnkitError(
                f"not a byte tokenizer description (kind={data.get('kind')!r}) "
                "(load it with attnkit.tokenizers.load_tokenizer)"
            )
        return cls()

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically)."""
        write_text_atomic(path, json.dumps(self.to_dict()) + "\n", "tokenizer")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("byte")

    def __repr__(self) -> str:
        return "ByteTokenizer()"
