"""Tokenizers: turn text into integer ids and back.

Three kinds, all with the same interface (:class:`Tokenizer`):

* ``char`` -- one id per distinct character of the training text;
* ``byte`` -- one id per UTF-8 byte (vocabulary 256, no training needed);
* ``bpe``  -- byte-level BPE trained with the Hugging Face ``tokenizers`` library.

Each saves to one JSON file (``run_dir/tokenizer.json``) that
:func:`load_tokenizer` reads back, detecting the kind from the content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from attnkit.errors import AttnkitError
from attnkit.tokenizers.bpe import BPETokenizer
from attnkit.tokenizers.byte import ByteTokenizer
from attnkit.tokenizers.char import CharTokenizer

__all__ = [
    "TOKENIZERS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
    "train_tokenizer",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer provides.

    Contract: ``encode`` returns ids in ``[0, vocab_size)``;
    ``decode(encode(s)) == s`` for every string the tokenizer accepts (any
    string for ``byte``/``bpe``; strings of known characters for ``char``);
    ``tokenizer_from_dict(t.to_dict())`` is an equal tokenizer; ``save`` writes
    ``to_dict()`` as one JSON file. Bad input raises :class:`AttnkitError`.
    """

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def save(self, path: str | Path) -> None: ...


#: Tokenizer classes by kind name. Each class has ``train(text, vocab_size=None)``
#: and ``from_dict(data)`` class methods.
TOKENIZERS: dict[str, type[CharTokenizer | ByteTokenizer | BPETokenizer]] = {
    "char": CharTokenizer,
    "byte": ByteTokenizer,
    "bpe": BPETokenizer,
}


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise AttnkitError(
            f"unknown tokenizer {kind!r} "
            f"(use --data.tokenizer with one of: {', '.join(TOKENIZERS)})"
        )
    return kind


def train_tokenizer(kind: str, text: str, vocab_size: int | None = None) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char" | "byte" | "bpe") on ``text``.

    ``vocab_size`` is required for ``bpe`` (>= 257) and ignored by ``char``
    (the corpus decides) and ``byte`` (always 256).
    """
    return TOKENIZERS[_check_kind(kind)].train(text, vocab_size)


def tokenizer_from_dict(data: object) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output, detecting its kind.

    ``{"kind": "char" | "byte", ...}`` is ours; a Hugging Face tokenizer JSON is
    recognised by ``"model": {"type": "BPE", ...}``.
    """
    if not isinstance(data, dict):
        raise AttnkitError(
            "tokenizer description is not a JSON object "
            "(retrain the tokenizer or restore its tokenizer.json)"
        )
    kind = data.get("kind")
    if kind is not None:
        return TOKENIZERS[_check_kind(kind)].from_dict(data)
    model = data.get("model")
    if isinstance(model, dict) and model.get("type") == "BPE":
        return BPETokenizer.from_dict(data)
    raise AttnkitError(
        "unrecognised tokenizer description: neither a char/byte tokenizer nor a BPE "
        "tokenizer.json (retrain the tokenizer or restore its tokenizer.json)"
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved with :meth:`Tokenizer.save` (kind auto-detected).

    A missing, unreadable, non-JSON or unrecognised file raises :class:`AttnkitError`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AttnkitError(
            f"tokenizer file not found: {path} "
            "(point at the tokenizer.json in the run folder, or retrain)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AttnkitError(
            f"cannot read tokenizer file {path}: {reason} "
            "(restore the tokenizer.json from the run folder, or retrain)"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AttnkitError(
            f"tokenizer file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}) "
            "(restore the tokenizer.json from the run folder, or retrain)"
        ) from None
    try:
        return tokenizer_from_dict(data)
    except AttnkitError as exc:
        # Re-raise with the path, which the dict-level message cannot know.
        raise AttnkitError(f"{path}: {exc}") from None
