"""Integer-token files (``--data.format=ids``): train on sequences that are already ids.

``data.path`` is one file or a folder of them (read in sorted name order, sub-folders included):

* ``.npy`` -- an integer array, memory-mapped (``np.load(mmap_mode="r")``), never read whole;
* ``.npz`` -- every array in the archive, in stored order (each is read into memory: a zip
  member cannot be mapped, so use ``.npy`` for large data);
* ``.txt`` -- whitespace-separated decimal ids, one document per line (blank lines skipped).

A 2-D array is one document per row, a 1-D array one stream. Documents (rows, lines, arrays,
files) are joined by the end-of-document id: ``data.separator_id`` when declared (then a 1-D
stream is taken as it is: its separators already mark its documents), else one extra id right
after the vocabulary (the ``eos`` special of the :class:`~attnkit.tokenizers.ids.IdsTokenizer`).

The vocabulary is ``data.vocab_size`` when declared (an id at or above it is an error naming the
file and position), else measured: the largest id (or the separator) plus one. Positions in
messages are numpy indices (0-based) for arrays, ``line L, word W`` (1-based, as an editor shows
them) for text.

The ids are validated in one pass and written in a second into the same token cache layout as
text (``train.bin``/``val.bin``/``meta.json``, see :mod:`attnkit.data.tokens`), a few million ids
at a time, so a file far larger than memory trains from a memory map.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from attnkit.data.tokens import (
    TokenData,
    check_val_fraction,
    default_cache_dir,
    open_tokens,
    token_dtype,
    write_token_cache,
)
from attnkit.errors import AttnkitError
from attnkit.tokenizers.ids import IdsTokenizer

SUFFIXES = (".npy", ".npz", ".txt")
#: ids checked or written per piece: bounds the memory a reader needs whatever the file size
CHUNK_IDS = 1 << 22
_CACHE_FORMAT = 1  # bump when the layout or the joining rule changes

Where = Callable[[int], str]  # position of the i-th id of a document, for messages


def id_files(path: str | Path) -> list[Path]:
    """The id files ``path`` names: itself, or the ``.npy``/``.npz``/``.txt`` files under it."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise AttnkitError(f"{path}: no .npy, .npz or .txt id files in this folder "
                               f"(--data.format=ids reads integer-id files)")
        return files
    if not path.is_file():
        raise AttnkitError(f"{path}: no such file or folder (point --data.path at a .npy, .npz or "
                           f".txt file of ids, or a folder of them)")
    if path.suffix not in SUFFIXES:
        raise AttnkitError(f"{path}: --data.format=ids reads .npy, .npz or .txt files, not "
                           f"{path.suffix or 'a file without a suffix'} (convert it, e.g. with "
                           f"numpy.save)")
    return [path]


def read_array(file: str | Path) -> np.ndarray:
    """The integer array in a ``.npy`` file, memory-mapped read-only (an ``np.memmap``)."""
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise AttnkitError(f"{file}: cannot read it as a .npy array ({_reason(exc)})") from None
    return _check_array(arr, str(file))


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _check_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise AttnkitError(f"{name}: holds {arr.dtype} values, not integer ids (save the ids with "
                           f"an integer dtype, e.g. arr.astype(np.int64))")
    if arr.ndim not in (1, 2):
        raise AttnkitError(f"{name}: a {arr.ndim}-D array; id files hold a 1-D stream or a 2-D "
                           f"array of one document per row")
    return arr


def _array_documents(arr: np.ndarray, name: str) -> Iterator[tuple[str, np.ndarray, Where]]:
    if arr.ndim == 1:
        yield name, arr, lambda i: f"position {i}"
    else:
        for r in range(arr.shape[0]):
            yield name, arr[r], lambda i, r=r: f"row {r}, column {i}"


def _text_documents(file: Path) -> Iterator[tuple[str, np.ndarray, Where]]:
    name = str(file)
    try:
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                words = line.split()
                if not words:
                    continue
                try:
                    ids = np.array([int(w) for w in words], dtype=np.int64)
                except (ValueError, OverflowError):
                    w = next(k for k, word in enumerate(words) if not _is_int(word))
                    raise AttnkitError(f"{name}: {words[w]!r} at line {lineno}, word {w + 1} is not "
                                       f"an integer id (write ids as whitespace-separated "
                                       f"integers)") from None
                yield name, ids, lambda i, n=lineno: f"line {n}, word {i + 1}"
    except (OSError, UnicodeDecodeError) as exc:
        raise AttnkitError(f"{name}: cannot read it as text of ids ({_reason(exc)})") from None


def _is_int(word: str) -> bool:
    try:
        return -(1 << 63) <= int(word) < 1 << 63
    except ValueError:
        return False


def documents(path: str | Path) -> Iterator[tuple[str, np.ndarray, Where]]:
    """``(file name, ids, where)`` for every document under ``path``, in order: ``ids`` is 1-D
    (for ``.npy`` a view of the memory map), ``where(i)`` names the position of ``ids[i]``."""
    for file in id_files(path):
        if file.suffix == ".npy":
            yield from _array_documents(read_array(file), str(file))
        elif file.suffix == ".npz":
            for label, arr, _ in _npz_arrays(file):
                yield from _array_documents(arr, label)
        else:
            yield from _text_documents(file)


Pos = Callable[[tuple[int, ...]], str]  # position of arr[index] in a unit, for messages


def _units(path: str | Path) -> Iterator[tuple[str, np.ndarray, Pos]]:
    """What the bulk passes read: each array whole (1-D, or 2-D: one document per row) and each
    text line, so a 2-D array is checked and written in blocks of rows, not row by row."""
    for file in id_files(path):
        if file.suffix == ".txt":
            for name, ids, where in _text_documents(file):
                yield name, ids, lambda index, w=where: w(index[0])
            continue
        if file.suffix == ".npy":
            arrays = [(str(file), read_array(file))]
        else:
            arrays = [(name, ids) for name, ids, _ in _npz_arrays(file)]
        for name, arr in arrays:
            if arr.ndim == 1:
                yield name, arr, lambda index: f"position {index[0]}"
            else:
                yield name, arr, lambda index: f"row {index[0]}, column {index[1]}"


def _npz_arrays(file: Path) -> list[tuple[str, np.ndarray, None]]:
    try:
        archive = np.load(file, allow_pickle=False)
        arrays = [(k, archive[k]) for k in archive.files]
    except (OSError, ValueError, EOFError) as exc:
        raise AttnkitError(f"{file}: cannot read it as a .npz archive ({_reason(exc)})") from None
    out = []
    for key, arr in arrays:
        label = f"{file} (array {key!r})" if len(arrays) > 1 else str(file)
        out.append((label, _check_array(arr, label), None))
    return out


def _blocks(arr: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """``(index of the block's first id, block)``: about :data:`CHUNK_IDS` ids at a time, whole
    rows of a 2-D array; each block is read into memory, then the map's pages are handed back."""
    if arr.ndim == 1:
        for start in range(0, len(arr), CHUNK_IDS):
            yield (start,), np.asarray(arr[start:start + CHUNK_IDS])
            _drop_pages(arr)
    else:
        step = max(1, CHUNK_IDS // max(arr.shape[1], 1))
        for start in range(0, arr.shape[0], step):
            yield (start, 0), np.asarray(arr[start:start + step])
            _drop_pages(arr)


def _drop_pages(ids: np.ndarray) -> None:
    """Let the kernel take back the pages of a memory map that has been read: mapped file pages
    count as the process's resident memory until then (best effort: a no-op elsewhere)."""
    base = ids
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    m = getattr(base, "_mmap", None)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def scan(path: str | Path, vocab_size: int | None = None,
         separator_id: int | None = None) -> IdsTokenizer:
    """Validate every id under ``path``; return the tokenizer of its vocabulary (see module doc).

    Negative ids, ids at or above a declared ``vocab_size`` and unreadable files raise a
    one-line :class:`AttnkitError` naming the file and the first bad position.
    """
    if vocab_size is not None and separator_id is not None and separator_id >= vocab_size:
        raise AttnkitError(f"data.separator_id={separator_id} is outside the vocabulary of "
                           f"{vocab_size} (raise --data.vocab_size or lower --data.separator_id)")
    top, n = -1, 0
    for name, arr, where in _units(path):
        for offset, block in _blocks(arr):
            if block.size == 0:
                continue
            lo, hi = int(block.min()), int(block.max())
            if lo < 0:
                bad, why = block < 0, "is negative (ids are non-negative integers)"
            elif vocab_size is not None and hi >= vocab_size:
                bad, why = block >= vocab_size, (f"is outside the vocabulary of {vocab_size} "
                                                 f"(raise --data.vocab_size)")
            else:
                bad = None
            if bad is not None:
                at = np.unravel_index(int(np.argmax(bad)), block.shape)
                index = tuple(o + int(i) for o, i in zip(offset, at, strict=True))
                raise AttnkitError(f"{name}: id {int(block[at])} at {where(index)} {why}")
            top, n = max(top, hi), n + block.size
    if n == 0:
        raise AttnkitError(f"{path}: holds no ids (give a file with at least one id)")
    n_ids = vocab_size if vocab_size is not None else max(top, -1 if separator_id is None
                                                          else separator_id) + 1
    return IdsTokenizer(n_ids, () if separator_id is not None else ("eos",))


def separator_of(tokenizer: IdsTokenizer, separator_id: int | None) -> int:
    """The id that joins documents: the declared one, else the tokenizer's ``eos``."""
    return separator_id if separator_id is not None else tokenizer.special_tokens["eos"]


def iter_stream(path: str | Path, tokenizer: IdsTokenizer,
                separator_id: int | None = None) -> Iterator[np.ndarray]:
    """The training stream in pieces of about :data:`CHUNK_IDS` ids (dtype
    :func:`~attnkit.data.tokens.token_dtype`): the documents joined by the separator."""
    dtype = token_dtype(tokenizer.vocab_size)
    sep = separator_of(tokenizer, separator_id)
    first = True  # every document but the first is preceded by the separator
    for _, arr, _ in _units(path):
        if arr.ndim == 1:
            if not first:
                yield np.array([sep], dtype=dtype)
            first = False
            for _, block in _blocks(arr):
                yield block.astype(dtype, copy=False)
            continue
        for _, block in _blocks(arr):
            if not block.shape[0]:
                continue
            out = np.empty((block.shape[0], block.shape[1] + 1), dtype=dtype)  # (rows, 1 + cols)
            out[:, 0], out[:, 1:] = sep, block
            flat = out.reshape(-1)
            yield flat[1:] if first else flat
            first = False


def read_stream(path: str | Path, vocab_size: int | None = None,
                separator_id: int | None = None) -> tuple[np.ndarray, IdsTokenizer]:
    """The whole training stream in memory, and its tokenizer (for small data and tests)."""
    tok = scan(path, vocab_size, separator_id)
    pieces = list(iter_stream(path, tok, separator_id))
    return np.concatenate(pieces), tok


def _fingerprint(path: str | Path) -> list[list[object]]:
    out = []
    for f in id_files(path):
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _load(entry: Path) -> tuple[TokenData, IdsTokenizer] | None:
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        tok = IdsTokenizer.from_dict(meta["tokenizer"])
        dtype = token_dtype(tok.vocab_size)
        if meta.get("format") != _CACHE_FORMAT or meta.get("dtype") != dtype.name:
            return None
        counts = {s: meta[f"n_{s}"] for s in ("train", "val")}
        for s, n in counts.items():
            if not isinstance(n, int) or (entry / f"{s}.bin").stat().st_size != n * dtype.itemsize:
                return None
        data = TokenData(open_tokens(entry / "train.bin", dtype, counts["train"]),
                         open_tokens(entry / "val.bin", dtype, counts["val"]), tok.vocab_size, entry)
        return data, tok
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AttnkitError):
        return None  # missing or damaged: rebuild


def _write(entry: Path, path: str | Path, tok: IdsTokenizer, separator_id: int | None,
           val_fraction: float) -> None:
    """Stream the ids into ``entry`` piece by piece (the text cache's writer)."""
    write_token_cache(entry, iter_stream(path, tok, separator_id), token_dtype(tok.vocab_size),
                      val_fraction, {"format": _CACHE_FORMAT, "tokenizer": tok.to_dict(),
                                     "separator_id": separator_of(tok, separator_id),
                                     "source": str(path)})


def prepare_ids(path: str | Path, vocab_size: int | None = None, separator_id: int | None = None,
                cache_dir: Path | None = None, val_fraction: float = 0.1,
                tokenizer: IdsTokenizer | None = None) -> tuple[TokenData, IdsTokenizer]:
    """The id files under ``path`` as memory-mapped train/val splits, and their tokenizer.

    Validated and cached once per (files, sizes, mtimes, ``vocab_size``, ``separator_id``,
    ``val_fraction``); later calls map the cache without reading the files. ``tokenizer`` (a
    resumed run's) must match what the data gives.
    """
    val_fraction = check_val_fraction(val_fraction)
    blob = json.dumps({"format": _CACHE_FORMAT, "kind": "ids", "files": _fingerprint(path),
                       "vocab_size": vocab_size, "separator_id": separator_id,
                       "val_fraction": val_fraction}, sort_keys=True)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    cached = _load(entry)
    if cached is None:
        tok = scan(path, vocab_size, separator_id)
        try:
            _write(entry, path, tok, separator_id, val_fraction)
        except OSError as exc:
            raise AttnkitError(f"cannot write the token cache in {root}: {exc.strerror or exc} "
                               f"(free some disk space, or set ATTNKIT_CACHE to a writable "
                               f"folder)") from None
        cached = _load(entry)
        if cached is None:
            raise AttnkitError(f"token cache entry {entry} is unreadable right after writing it "
                               f"(delete that folder and retry)")
    data, tok = cached
    if tokenizer is not None and tokenizer != tok:
        raise AttnkitError(f"{path}: the ids now give a vocabulary of {tok.vocab_size}, but the "
                           f"run was trained with {tokenizer.vocab_size} (resume on the same "
                           f"data, or declare --data.vocab_size)")
    return data, tok


__all__ = ["CHUNK_IDS", "SUFFIXES", "documents", "id_files", "iter_stream", "prepare_ids", "prompt_from_ids",
           "read_array", "read_stream", "scan", "separator_of"]


def prompt_from_ids(spec: str, tokenizer) -> str:
    """``--prompt-ids 1,2,3`` (commas and/or spaces) as the text the ids tokenizer reads."""
    if getattr(tokenizer, "kind", None) != "ids":
        raise AttnkitError(f"--prompt-ids needs a run trained with --data.format=ids, but this "
                           f"run's tokenizer is {getattr(tokenizer, 'kind', '?')} (use --prompt)")
    text = " ".join(spec.replace(",", " ").split())
    if not text:
        raise AttnkitError("--prompt-ids is empty (give ids such as --prompt-ids 1,2,3)")
    tokenizer.encode(text)  # refuses a non-integer or out-of-vocabulary id with one line
    return text
