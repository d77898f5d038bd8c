"""Special tokens: the names every tokenizer uses for them, and how to find them in HF files.

A special token is known to attnkit by a *name* (``pad``, ``bos``, ...), never by
its spelling, because each vocabulary spells them differently (``[PAD]``,
``<pad>``, ``<|endoftext|>``). Tokenizers attnkit builds spell them
``<|name|>``; a Hugging Face ``tokenizer.json`` is read through
:data:`HF_SPELLINGS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attnkit.errors import AttnkitError

#: The special-token names attnkit knows, in the order they are listed to users.
SPECIAL_NAMES: tuple[str, ...] = ("pad", "bos", "eos", "unk", "mask", "cls", "sep")

#: name -> the spellings that mean it in Hugging Face tokenizer files, most specific first.
#: One token may serve two names: BART's ``<s>`` is both bos and cls, GPT-2's
#: ``<|endoftext|>`` both bos and eos.
HF_SPELLINGS: dict[str, tuple[str, ...]] = {
    "pad": ("<|pad|>", "[PAD]", "<pad>", "<|padding|>"),
    "bos": ("<|bos|>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("<|eos|>", "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "unk": ("<|unk|>", "[UNK]", "<unk>"),
    "mask": ("<|mask|>", "[MASK]", "<mask>"),
    "cls": ("<|cls|>", "[CLS]", "<s>"),
    "sep": ("<|sep|>", "[SEP]", "</s>"),
}


def spelling(name: str) -> str:
    """How tokenizers built by attnkit spell the special token ``name``: ``<|name|>``."""
    return f"<|{name}|>"


def check_specials(specials: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate requested special-token names; return them as a tuple (order kept)."""
    if specials is None:
        return ()
    if isinstance(specials, str):  # a lone "pad" would otherwise become ("p", "a", "d")
        specials = (specials,)
    out = tuple(specials)
    for name in out:
        if name not in SPECIAL_NAMES:
            raise AttnkitError(f"unknown special token {name!r} "
                               f"(choose from {', '.join(SPECIAL_NAMES)})")
    if len(set(out)) != len(out):
        dup = next(n for n in out if out.count(n) > 1)
        raise AttnkitError(f"special token {dup!r} is requested twice (list each name once)")
    return out


def specials_from_added(added: dict[int, str]) -> dict[str, int]:
    """Map a tokenizer's added tokens (id -> content) to attnkit names (name -> id).

    Names no added token spells are absent; when several spellings of a name are
    present, the most specific (earliest in :data:`HF_SPELLINGS`) wins.
    """
    by_content: dict[str, int] = {}
    for i, content in sorted(added.items()):
        by_content.setdefault(content, i)
    out: dict[str, int] = {}
    for name, spellings in HF_SPELLINGS.items():
        for s in spellings:
            if s in by_content:
                out[name] = by_content[s]
                break
    return out


def names_of_ids(specials: dict[str, int]) -> dict[int, str]:
    """Inverse of a ``special_tokens`` mapping (an id serving two names keeps the first)."""
    out: dict[int, str] = {}
    for name, i in specials.items():
        out.setdefault(i, name)
    return out


def missing(specials: Sequence[str], present: dict[str, int]) -> tuple[str, ...]:
    """The requested names a tokenizer does not have yet."""
    return tuple(n for n in specials if n not in present)


def check_ids(ids: Sequence[int], vocab_size: int, kind: str) -> list[int]:
    """``ids`` as ints, or :class:`AttnkitError` naming the first outside ``[0, vocab_size)``
    (checked explicitly: Python lists accept negative indices, and the HF library drops bad ids)."""
    ids = [int(i) for i in ids]
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise AttnkitError(f"token id {bad} is out of range for the {kind} tokenizer "
                           f"(vocab_size {vocab_size}) (use the tokenizer.json saved with the checkpoint)")
    return ids
