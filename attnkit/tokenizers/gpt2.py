"""GPT-2's own byte-level BPE (kind ``gpt2``), rebuilt from its ranks file.

The vocabulary ships as ``gpt2.tiktoken`` inside the ``openai-whisper`` wheel:
one line per token, the token's bytes in base64, a space, and its rank. The
rank is the token's id, and BPE applies merges in rank order, so the file is
the whole tokenizer - but a ``tokenizers`` BPE model wants merges, not ranks.
They are recovered from the ranks: every token of two or more bytes was made
by exactly one merge, and running BPE on its bytes with only the lower-ranked
tokens stops at the two parts that merge made.

Pre-tokenization is GPT-2's regular expression (``ByteLevel(use_regex=True)``,
no prefix space); ``<|endoftext|>`` is id 50256, GPT-2's bos and eos.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from attnkit.errors import AttnkitError
from attnkit.tokenizers.hf import HuggingFaceTokenizer

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256


def ranks_file() -> Path:
    """``gpt2.tiktoken`` from the installed ``openai-whisper`` (found without importing it:
    whisper's ``__init__`` pulls in numba)."""
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.origin).parent / "assets" / "gpt2.tiktoken" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise AttnkitError("the gpt2 tokenizer needs GPT-2's vocabulary from openai-whisper "
                           "(pip install --no-deps openai-whisper)")
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes -> rank from a ``.tiktoken`` file."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise AttnkitError(f"{path} line {n} is not 'base64 rank' (reinstall openai-whisper: "
                               f"pip install --no-deps --force-reinstall openai-whisper)") from None
    return ranks


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte.

    Bytes that are printable Latin-1 characters stand for themselves; the other
    68 (controls, space, a few Latin-1 gaps) take the code points from 256 on,
    in byte order - so a space is 'Ġ' (256 + 32) and a newline 'Ċ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order.

    BPE over the token's bytes, allowed only tokens ranked below it, stops at
    exactly two parts: the pair whose merge is the token.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = rank, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1], rank)
                if r < best:
                    best, at = r, i
            if at < 0:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise AttnkitError(f"GPT-2 ranks file is inconsistent at rank {rank} (reinstall "
                               f"openai-whisper: pip install --no-deps openai-whisper)")
        merges.append((parts[0], parts[1]))
    return merges


@functools.cache
def _gpt2_json() -> str:
    """GPT-2's tokenizer as ``tokenizer.json`` text, built once per process (~0.5 s)."""
    ranks = read_ranks(ranks_file())
    table = byte_to_unicode()

    def show(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {show(token): rank for token, rank in ranks.items()}
    merges = [(show(a), show(b)) for a, b in merges_from_ranks(ranks)]
    tok = HFTokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(END_OF_TEXT, special=True, normalized=False)])
    if tok.token_to_id(END_OF_TEXT) != END_OF_TEXT_ID:
        raise AttnkitError(f"GPT-2 ranks file has {len(vocab)} tokens, expected {END_OF_TEXT_ID} "
                           f"(reinstall openai-whisper: pip install --no-deps openai-whisper)")
    return tok.to_str()


def is_gpt2_json(data: dict) -> bool:
    """Whether a parsed ``tokenizer.json`` is GPT-2's vocabulary (ours or the Hub's)."""
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return False
    vocab = model.get("vocab")
    added = data.get("added_tokens") or []
    return (isinstance(vocab, dict) and len(vocab) == END_OF_TEXT_ID
            and vocab.get("Hello") == 15496 and vocab.get("Ġworld") == 995
            and any(isinstance(t, dict) and t.get("content") == END_OF_TEXT
                    and t.get("id") == END_OF_TEXT_ID for t in added))


class GPT2Tokenizer(HuggingFaceTokenizer):
    """GPT-2's vocabulary of 50,257 tokens; nothing to train.

    ``encode("Hello world") == [15496, 995]``; any string round-trips. Saved
    into a run as a standard ``tokenizer.json`` that Hugging Face loads too.
    """

    kind = "gpt2"
    _what = "gpt2"

    @classmethod
    def train(cls, text: str | None = None, vocab_size: int | None = None,
              specials: Sequence[str] = ()) -> GPT2Tokenizer:
        """GPT-2's tokenizer; ``text`` and ``vocab_size`` are ignored. ``bos``/``eos`` are
        ``<|endoftext|>``; other ``specials`` are appended after it."""
        del text, vocab_size
        return cls(HFTokenizer.from_str(_gpt2_json())).with_specials(specials)
