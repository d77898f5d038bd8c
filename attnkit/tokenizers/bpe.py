"""Byte-level BPE tokenizer, trained locally with the Hugging Face ``tokenizers`` library.

Byte-level means the text is first turned into UTF-8 bytes (each shown as one
printable stand-in character) and BPE merges are learned over those. Because
all 256 byte symbols are forced into the initial alphabet, every Unicode
string can be encoded and decodes back exactly, and there is no unknown token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from attnkit.errors import AttnkitError
from attnkit.tokenizers.byte import check_utf8_encodable
from attnkit.tokenizers.hf import HFBackedTokenizer
from attnkit.tokenizers.specials import check_specials, spelling

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


class BPETokenizer(HFBackedTokenizer):
    """Wraps a ``tokenizers.Tokenizer`` whose model is BPE.

    Trained tokenizers use the byte-level pre-tokenizer (no prefix space) and
    decoder. ``vocab_size`` is the vocabulary actually learned, which can be
    smaller than the size requested when the corpus runs out of pairs to merge,
    plus the special tokens, which are added after the merges as ``<|name|>``.
    """

    kind: str = "bpe"
    _what: str = "bpe"

    def __init__(self, tokenizer: HFTokenizer) -> None:
        """Wrap an existing ``tokenizers.Tokenizer`` (its model must be BPE)."""
        model_type = type(tokenizer.model).__name__
        if model_type != "BPE":
            raise AttnkitError(
                f"tokenizer model is {model_type!r}, not BPE "
                "(train with --data.tokenizer=bpe or load a BPE tokenizer.json)"
            )
        super().__init__(tokenizer)

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              specials: Sequence[str] = ()) -> BPETokenizer:
        """Learn byte-level BPE merges from ``text`` up to ``vocab_size`` tokens (>= 257),
        then append the named ``specials``."""
        vocab_size = _validate_vocab_size(vocab_size)
        specials = check_specials(specials)
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
        # Added after training, so they take the ids after the learned vocabulary.
        tok.add_special_tokens([AddedToken(spelling(n), special=True, normalized=False)
                                for n in specials])
        return cls(tok)
