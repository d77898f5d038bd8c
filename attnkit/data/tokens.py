"""Token streams: tokenize a corpus once, cache it on disk, and sample training batches.

Layout of the cache (one folder per corpus x tokenizer x split fraction)::

    <cache_dir>/<key>/train.bin   raw little-endian uint16 (or uint32) token ids
    <cache_dir>/<key>/val.bin     the same, for the validation split
    <cache_dir>/<key>/meta.json   dtype, token counts, what was tokenized

``key`` is the first 16 hex digits of a SHA-256 over the corpus fingerprint,
the tokenizer JSON and the validation fraction, so changing any of them makes
a fresh entry. ``meta.json`` is written last: an entry without a valid one is
incomplete and is rebuilt. Old entries are never deleted automatically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnkit.data.corpus import corpus_fingerprint, read_corpus
from attnkit.errors import AttnkitError
from attnkit.tokenizers import Tokenizer

#: Text is tokenized in pieces of about this many characters, so memory for the
#: Python id lists stays bounded however large the corpus is.
CHUNK_CHARS = 1 << 20

# Bump when the on-disk format or the tokenization procedure changes, so stale
# cache entries are ignored rather than misread.
_CACHE_FORMAT = 1

# A safe place to cut text into chunks: after a single newline that ends a
# non-blank line and before a non-space character. At such a cut the newline is
# a pre-token of its own under the GPT-2 splitting rules that byte-level BPE
# uses, and merges never cross pre-tokens, so tokenizing the chunks separately
# gives exactly the ids of tokenizing the whole text (char and byte tokenizers
# are trivially unaffected by any cut).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")

_SPLITS = ("train", "val")


@dataclass
class TokenData:
    """The tokenized corpus, split in two.

    ``train`` and ``val`` are 1-D arrays of token ids with dtype
    :func:`token_dtype` of ``vocab_size`` (uint16 below 65536, else uint32);
    they may be read-only ``np.memmap``\\ s. ``val`` is the *tail* of the token
    stream. ``path`` is the cache folder they came from, if any.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    path: Path | None = None


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """Smallest unsigned dtype that stores ids below ``vocab_size``: uint16 or uint32."""
    return np.dtype(np.uint16) if vocab_size < 1 << 16 else np.dtype(np.uint32)


def default_cache_dir() -> Path:
    """``$ATTNKIT_CACHE/tokens`` if that variable is set, else ``~/.cache/attnkit/tokens``."""
    root = os.environ.get("ATTNKIT_CACHE")
    if root:
        return Path(root).expanduser() / "tokens"
    return Path.home() / ".cache" / "attnkit" / "tokens"


def text_chunks(text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Yield consecutive pieces of ``text`` that concatenate back to it.

    Each piece is at least ``chunk_chars`` long (except the last) and ends at a
    tokenization-neutral cut (see ``_SAFE_CUT``); text with no such cut
    comes out as one piece.
    """
    start, n = 0, len(text)
    while start < n:
        m = _SAFE_CUT.search(text, start + chunk_chars) if start + chunk_chars < n else None
        end = m.start() if m else n
        yield text[start:end]
        start = end


def iter_token_chunks(
    text: str, tokenizer: Tokenizer, chunk_chars: int = CHUNK_CHARS
) -> Iterator[np.ndarray]:
    """Token ids of ``text`` as a sequence of 1-D arrays (dtype :func:`token_dtype`).

    Concatenated, they equal ``tokenizer.encode(text)``.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    for piece in text_chunks(text, chunk_chars):
        yield np.asarray(tokenizer.encode(piece), dtype=dtype)


def check_val_fraction(val_fraction: float) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise AttnkitError(
            f"val_fraction must be a number, got {val_fraction!r} "
            "(set --data.val_fraction between 0 and 1, e.g. 0.1)"
        )
    if not 0.0 < val_fraction < 1.0:
        raise AttnkitError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction} "
            "(set --data.val_fraction between 0 and 1, e.g. 0.1)"
        )
    return float(val_fraction)


def split_sizes(n_tokens: int, val_fraction: float) -> tuple[int, int]:
    """Split sizes ``(n_train, n_val)`` of ``n_tokens``: ``n_val = round(n_tokens * val_fraction)``.

    The split is positional, as in nanoGPT: the first ``n_train`` tokens train,
    the last ``n_val`` validate. No shuffling, so it is fully deterministic.
    """
    n_val = round(n_tokens * check_val_fraction(val_fraction))
    return n_tokens - n_val, n_val


def tokenize_to_arrays(text: str, tokenizer: Tokenizer, val_fraction: float = 0.1) -> TokenData:
    """Tokenize ``text`` in memory and split it like :func:`prepare_tokens` (no cache).

    Returns in-memory arrays, identical to those :func:`prepare_tokens` would
    cache for the same text, tokenizer and ``val_fraction``.
    """
    check_val_fraction(val_fraction)
    dtype = token_dtype(tokenizer.vocab_size)
    chunks = list(iter_token_chunks(text, tokenizer))
    ids = np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)
    n_train, _ = split_sizes(len(ids), val_fraction)
    return TokenData(train=ids[:n_train], val=ids[n_train:], vocab_size=tokenizer.vocab_size)


def _cache_key(fingerprint: str, tokenizer: Tokenizer, val_fraction: float) -> str:
    blob = json.dumps(
        {
            "format": _CACHE_FORMAT,
            "corpus": fingerprint,
            "tokenizer": tokenizer.to_dict(),
            "val_fraction": val_fraction,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def open_tokens(path: Path, dtype: np.dtype[Any], n: int) -> np.ndarray:
    # mmap cannot map an empty file, and an empty split needs no file access anyway.
    if n == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _load_cached(entry: Path, tokenizer: Tokenizer) -> TokenData | None:
    """The cached split in ``entry``, or None when it is absent, incomplete or inconsistent."""
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        dtype = token_dtype(tokenizer.vocab_size)
        if (
            meta.get("format") != _CACHE_FORMAT
            or meta.get("dtype") != dtype.name
            or meta.get("vocab_size") != tokenizer.vocab_size
        ):
            return None
        counts = {split: meta[f"n_{split}"] for split in _SPLITS}
        for split, n in counts.items():
            if (
                not isinstance(n, int)
                or (entry / f"{split}.bin").stat().st_size != n * dtype.itemsize
            ):
                return None
        return TokenData(
            train=open_tokens(entry / "train.bin", dtype, counts["train"]),
            val=open_tokens(entry / "val.bin", dtype, counts["val"]),
            vocab_size=tokenizer.vocab_size,
            path=entry,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # Missing or damaged entry (json errors are ValueErrors): rebuild it.
        return None


def write_token_cache(entry: Path, pieces, dtype: np.dtype[Any], val_fraction: float,
                      meta: dict[str, Any]) -> None:
    """Stream the id arrays ``pieces`` into ``entry``: ``train.bin`` / ``val.bin`` (the last
    ``val_fraction``) and ``meta.json`` (the format, dtype and split sizes, then ``meta``,
    which may set its own ``format``),
    every file landing atomically and ``meta.json`` last: a complete one marks the entry usable."""
    entry.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []

    def temp(name: str) -> str:
        # Unique temporary names make concurrent writers (e.g. several ranks) safe:
        # each replaces the final files with identical content.
        fd, tmp = tempfile.mkstemp(dir=entry, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        temps.append(tmp)
        return tmp

    try:
        # Stream every token to one file, then move the tail into val.bin and
        # truncate: the split point is only known once the stream has ended.
        all_tmp = temp("train.bin")
        n = 0
        with open(all_tmp, "wb") as f:
            for ids in pieces:
                np.asarray(ids, dtype=dtype).tofile(f)
                n += ids.size
        n_train, n_val = split_sizes(n, val_fraction)
        val_tmp = temp("val.bin")
        with open(all_tmp, "rb") as src, open(val_tmp, "wb") as dst:
            src.seek(n_train * dtype.itemsize)
            shutil.copyfileobj(src, dst)
        os.truncate(all_tmp, n_train * dtype.itemsize)
        meta = {"format": _CACHE_FORMAT, "dtype": dtype.name, "n_train": n_train, "n_val": n_val,
                **meta, "val_fraction": val_fraction}
        meta_tmp = temp("meta.json")
        Path(meta_tmp).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(all_tmp, entry / "train.bin")
        os.replace(val_tmp, entry / "val.bin")
        os.replace(meta_tmp, entry / "meta.json")
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)


def _write_cache(
    entry: Path, text: str, tokenizer: Tokenizer, val_fraction: float, fingerprint: str
) -> None:
    """Tokenize ``text`` chunk by chunk into ``entry``."""
    write_token_cache(entry, iter_token_chunks(text, tokenizer), token_dtype(tokenizer.vocab_size),
                      val_fraction, {"vocab_size": tokenizer.vocab_size,
                                     "tokenizer_kind": tokenizer.kind, "corpus": fingerprint})


def prepare_tokens(
    text_source: str | None,
    tokenizer: Tokenizer,
    cache_dir: Path | None = None,
    val_fraction: float = 0.1,
) -> TokenData:
    """Tokenize the corpus ``text_source`` (see :func:`~attnkit.data.corpus.read_corpus`) once.

    The first call writes ``train.bin``/``val.bin``/``meta.json`` under
    ``cache_dir / <key>`` (``cache_dir`` defaults to :func:`default_cache_dir`);
    later calls with the same corpus fingerprint, tokenizer and
    ``val_fraction`` memory-map those files read-only without reading or
    tokenizing the corpus. The last ``val_fraction`` of the token stream is the
    validation split (:func:`split_sizes`). Corpus, tokenizer and cache
    problems raise :class:`AttnkitError`. Call :func:`check_length` before
    sampling batches.
    """
    val_fraction = check_val_fraction(val_fraction)
    fingerprint = corpus_fingerprint(text_source)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / _cache_key(fingerprint, tokenizer, val_fraction)
    cached = _load_cached(entry, tokenizer)
    if cached is not None:
        return cached
    text = read_corpus(text_source)
    try:
        _write_cache(entry, text, tokenizer, val_fraction, fingerprint)
    except OSError as exc:
        raise AttnkitError(
            f"cannot write the token cache in {root}: {exc.strerror or exc} "
            "(free some disk space, or set ATTNKIT_CACHE to a writable folder)"
        ) from None
    del text  # the memory-mapped copy below replaces it
    loaded = _load_cached(entry, tokenizer)
    if loaded is None:  # only if something else damaged the entry in the meantime
        raise AttnkitError(
            f"token cache entry {entry} is unreadable right after writing it "
            "(delete that folder and retry)"
        )
    return loaded


def check_length(data: TokenData, context_length: int) -> None:
    """Raise :class:`AttnkitError` unless both splits hold ``context_length + 1`` tokens.

    One window needs ``context_length`` inputs plus the next token as target.
    """
    for name, tokens in (("training", data.train), ("validation", data.val)):
        if len(tokens) < context_length + 1:
            fix = "use a longer corpus or lower --model.context_length"
            if name == "validation":
                fix += ", or raise --data.val_fraction"
            raise AttnkitError(
                f"corpus too short: {name} split has {len(tokens)} tokens but context_length "
                f"is {context_length} (needs at least {context_length + 1}; {fix})"
            )


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    context_length: int,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Sample ``batch_size`` random windows from ``tokens``.

    Returns ``(x, y)``, both int64 of shape ``(batch_size, context_length)`` on
    ``device``, with ``y[b, t] == tokens[s_b + t + 1]`` when ``x[b, t] ==
    tokens[s_b + t]``: ``y`` is ``x`` shifted left by one. Start indices
    ``s_b`` are uniform over every full window, drawn with ``torch.randint``
    from ``generator`` (a CPU generator), so the batch is a pure function of
    ``tokens`` and the generator state (see :func:`batch_generator`).
    """
    n = len(tokens)
    if n < context_length + 1:
        raise AttnkitError(
            f"corpus too short: split has {n} tokens but context_length is {context_length} "
            f"(needs at least {context_length + 1}; use a longer corpus or lower "
            "--model.context_length)"
        )
    # high is exclusive: the last start leaves room for the final target token.
    starts = torch.randint(n - context_length, (batch_size,), generator=generator).numpy()
    window = starts[:, None] + np.arange(context_length + 1)
    buf = torch.from_numpy(np.asarray(tokens[window], dtype=np.int64))
    x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()
    device = torch.device(device)
    if device.type == "cuda":
        # Pinned host memory lets the copy overlap with GPU work.
        return (
            x.pin_memory().to(device, non_blocking=True),
            y.pin_memory().to(device, non_blocking=True),
        )
    return x.to(device), y.to(device)


def batch_generator(
    seed: int, step: int, micro_step: int, split: str, rank: int = 0
) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded from ``(seed, step, micro_step, split, rank)``.

    The seed is the first 63 bits of a SHA-256 of those values, so it is the
    same in every process and Python version, and nearby steps get unrelated
    streams. Seeding one generator per (micro)step makes the data order
    reproducible, including after resuming from a checkpoint, with no
    generator state to save. ``rank`` separates data-parallel workers.
    """
    key = f"attnkit.batch\0{int(seed)}\0{int(step)}\0{int(micro_step)}\0{split}\0{int(rank)}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return gen
