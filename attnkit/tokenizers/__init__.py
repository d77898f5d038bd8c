"""Tokenizers: turn text into integer ids and back.

Six kinds, all with the same interface (:class:`Tokenizer`):

* ``char`` -- one id per distinct character of the training text;
* ``byte`` -- one id per UTF-8 byte (vocabulary 256, no training needed);
* ``bpe``  -- byte-level BPE trained with the Hugging Face ``tokenizers`` library;
* ``gpt2`` -- GPT-2's own BPE (50,257 tokens), built from the ranks file in ``openai-whisper``;
* ``hf``   -- any Hugging Face ``tokenizer.json`` (WordPiece, BPE, Unigram), used as it is;
* ``ids``  -- integer-token data (``--data.format=ids``): ids written as ``"12 7 99"``.

Special tokens are known by name (``pad``, ``bos``, ``eos``, ``unk``, ``mask``,
``cls``, ``sep``): ``tok.special_tokens`` maps the names a vocabulary has to
ids, ``train_tokenizer(..., specials=("pad", "eos"))`` appends them after the
vocabulary, plain text never encodes to them and ``decode`` skips them.

Each saves to one JSON file (``run_dir/tokenizer.json``) that
:func:`load_tokenizer` reads back, detecting the kind from the content;
:func:`resolve_tokenizer` turns a ``--data.tokenizer`` value (a kind or a
path) into a tokenizer.
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
from attnkit.tokenizers.gpt2 import GPT2Tokenizer, is_gpt2_json
from attnkit.tokenizers.hf import HuggingFaceTokenizer
from attnkit.tokenizers.ids import IdsTokenizer
from attnkit.tokenizers.specials import SPECIAL_NAMES, check_specials, spelling

__all__ = [
    "SPECIAL_NAMES",
    "TOKENIZERS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "HuggingFaceTokenizer",
    "IdsTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "resolve_tokenizer",
    "tokenizer_from_dict",
    "train_tokenizer",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer provides.

    Contract: ``encode`` returns ids in ``[0, vocab_size)`` and never the id of
    a special token; ``decode(encode(s)) == s`` for every string the tokenizer
    accepts (any string for ``byte``/``bpe``/``gpt2``; strings of known
    characters for ``char``; ``hf`` as far as its normaliser allows);
    ``decode`` drops special tokens unless ``skip_special=False``;
    ``special_tokens`` maps names to ids; ``tokenizer_from_dict(t.to_dict())``
    is an equal tokenizer; ``save`` writes ``to_dict()`` as one JSON file. Bad
    input raises :class:`AttnkitError`.
    """

    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...

    def with_specials(self, specials: Sequence[str]) -> Tokenizer: ...

    def to_dict(self) -> dict[str, Any]: ...

    def save(self, path: str | Path) -> None: ...


#: Tokenizer classes by kind name. Each class has ``train(text, vocab_size=None, specials=())``
#: and ``from_dict(data)`` class methods (``hf`` refuses to train: it is loaded from a file).
TOKENIZERS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "byte": ByteTokenizer,
    "bpe": BPETokenizer,
    "gpt2": GPT2Tokenizer,
    "hf": HuggingFaceTokenizer,
    "ids": IdsTokenizer,  # integer-token data (--data.format=ids), see attnkit/tokenizers/ids.py
}

#: The kinds ``--data.tokenizer`` accepts by name; anything else is a path.
TRAINABLE = ("char", "byte", "bpe", "gpt2")


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise AttnkitError(
            f"unknown tokenizer {kind!r} "
            f"(use --data.tokenizer with one of: {', '.join(TRAINABLE)}, or a path to a "
            f"tokenizer.json)"
        )
    return kind


def train_tokenizer(kind: str, text: str, vocab_size: int | None = None,
                    specials: Sequence[str] = ()) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char" | "byte" | "bpe" | "gpt2") on ``text``.

    ``vocab_size`` is required for ``bpe`` (>= 257) and ignored by ``char``
    (the corpus decides), ``byte`` (always 256) and ``gpt2`` (always 50,257).
    ``specials`` names special tokens (e.g. ``("pad", "bos", "eos")``) appended
    after the vocabulary in that order; the existing ids do not move.
    """
    kind = _check_kind(kind)
    return TOKENIZERS[kind].train(text, vocab_size, check_specials(specials))


def resolve_tokenizer(spec: str, text: str | None, vocab_size: int | None = None,
                      specials: Sequence[str] = ()) -> Tokenizer:
    """The tokenizer a ``--data.tokenizer`` value names.

    A kind (``char``, ``byte``, ``bpe``, ``gpt2``) is trained on ``text`` (which
    ``char`` and ``bpe`` need); anything else is a path to a ``tokenizer.json``
    (Hugging Face's or one attnkit saved) or a folder holding one. Missing
    ``specials`` are appended either way.
    """
    specials = check_specials(specials)
    if spec in TRAINABLE:
        if text is None and spec in ("char", "bpe"):
            raise AttnkitError(f"the {spec} tokenizer is trained on the corpus, but no text was "
                               f"given (pass the training text, or use --data.tokenizer=byte)")
        return train_tokenizer(spec, text or "", vocab_size, specials)
    path = Path(spec).expanduser()
    if not path.exists():
        raise AttnkitError(f"unknown tokenizer {spec!r}: not a kind and no such file (use "
                           f"{', '.join(TRAINABLE)}, or a path to a tokenizer.json or its folder)")
    return load_tokenizer(path).with_specials(specials)


def _is_attnkit_bpe(data: dict[str, Any]) -> bool:
    """Whether a BPE ``tokenizer.json`` has the shape :meth:`BPETokenizer.train` gives it:
    byte-level, nothing else attached, and only ``<|name|>`` special tokens added."""
    ours = {spelling(n) for n in SPECIAL_NAMES}
    pre, dec = data.get("pre_tokenizer"), data.get("decoder")
    added = data.get("added_tokens") or []
    return (data.get("normalizer") is None and data.get("post_processor") is None
            and (pre is None or isinstance(pre, dict) and pre.get("type") == "ByteLevel")
            and (dec is None or isinstance(dec, dict) and dec.get("type") == "ByteLevel")
            and isinstance(added, list)
            and all(isinstance(t, dict) and t.get("content") in ours for t in added))


def _from_parsed(data: object, text: str | None = None) -> Tokenizer:
    """The tokenizer described by ``data`` (parsed JSON); ``text`` is the same JSON unparsed,
    when at hand, which spares re-serialising a large vocabulary."""
    if not isinstance(data, dict):
        raise AttnkitError(
            "tokenizer description is not a JSON object "
            "(retrain the tokenizer or restore its tokenizer.json)"
        )
    kind = data.get("kind")
    if kind is not None:
        return TOKENIZERS[_check_kind(kind)].from_dict(data)
    model = data.get("model")
    if isinstance(model, dict) and "type" in model:
        if is_gpt2_json(data):
            cls = GPT2Tokenizer
        elif model.get("type") == "BPE" and _is_attnkit_bpe(data):
            cls = BPETokenizer
        else:
            cls = HuggingFaceTokenizer
        return cls.from_str(text) if text is not None else cls.from_dict(data)
    raise AttnkitError(
        "unrecognised tokenizer description: neither a char/byte tokenizer nor a Hugging Face "
        "tokenizer.json (retrain the tokenizer or restore its tokenizer.json)"
    )


def tokenizer_from_dict(data: object) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output, detecting its kind.

    ``{"kind": "char" | "byte", ...}`` is ours; a Hugging Face tokenizer JSON
    (``"model": {"type": ...}``) is ``gpt2`` when it is GPT-2's vocabulary,
    ``bpe`` when it has the shape attnkit trains, and ``hf`` otherwise.
    """
    return _from_parsed(data)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved with :meth:`Tokenizer.save`, or any Hugging Face
    ``tokenizer.json`` (kind auto-detected); ``path`` may be a folder holding one.

    A missing, unreadable, non-JSON or unrecognised file raises :class:`AttnkitError`.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise AttnkitError(f"{path} holds no tokenizer.json (point at a tokenizer.json file "
                               f"or a folder that has one)")
        path = path / "tokenizer.json"
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
        return _from_parsed(data, text)
    except AttnkitError as exc:
        # Re-raise with the path, which the dict-level message cannot know.
        raise AttnkitError(f"{path}: {exc}") from None
