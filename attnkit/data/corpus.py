"""Reading training text: the built-in corpus, a UTF-8 file, or a folder of text files."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from attnkit.errors import AttnkitError

#: Names that select a built-in corpus instead of a path.
BUILTIN_NAMES: tuple[str, ...] = ("pydoc",)

#: File suffixes (compared case-insensitively) read from a corpus folder.
TEXT_SUFFIXES: frozenset[str] = frozenset({".txt", ".md", ".rst", ".text"})

# A NUL byte in the first few kB is the usual (``git``/``grep``) test for binary data.
_BINARY_PROBE_BYTES = 8192

# Documents are separated like paragraphs so no word spans two of them.
_SEPARATOR = "\n\n"

_FIX_PATH = "pass an existing UTF-8 text file or folder, or 'pydoc' for the built-in corpus"


def _is_builtin(path: str | os.PathLike[str] | None) -> bool:
    return path is None or (isinstance(path, str) and (path == "" or path in BUILTIN_NAMES))


def builtin_corpus() -> str:
    """The Python reference docs that ship with CPython (``pydoc_data.topics``).

    About 465 kB of English prose and code over ~79 topics, joined in sorted
    topic order with blank lines, so the result only depends on the Python
    version.
    """
    from pydoc_data.topics import topics  # imported lazily: ~0.5 MB of strings

    return _SEPARATOR.join(topics[key] for key in sorted(topics))


def _read_text_file(path: Path) -> str:
    """Contents of one file, strictly validated; problems raise :class:`AttnkitError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttnkitError(
            f"cannot read corpus file {path}: {exc.strerror or exc} "
            "(check the path and its permissions)"
        ) from None
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        raise AttnkitError(
            f"corpus file {path} looks binary (it contains NUL bytes) "
            "(pass a plain-text file, or remove it from the corpus folder)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AttnkitError(
            f"corpus file {path} is not valid UTF-8 (bad byte at offset {exc.start}) "
            f"(convert it to UTF-8, e.g. iconv -f latin1 -t utf-8)"
        ) from None
    # A byte-order mark is an encoding artefact, not text the model should learn.
    return text.removeprefix("\ufeff")


def _folder_files(root: Path) -> list[Path]:
    """Text files under ``root`` (recursive), sorted by relative path.

    Hidden files and folders (name starting with ".") are skipped: they hold
    tool state (``.git``, ``.ipynb_checkpoints``, virtualenvs), not corpus text.
    Symlinked folders are not followed, so the walk cannot loop.
    """
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in TEXT_SUFFIXES:
                continue
            full = Path(dirpath) / name
            if full.is_file():  # follows file symlinks; drops sockets, fifos, dangling links
                found.append((full.relative_to(root).as_posix(), full))
    found.sort(key=lambda item: item[0])
    return [full for _, full in found]


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise AttnkitError(f"corpus not found: {path} ({_FIX_PATH})")
    if not (p.is_file() or p.is_dir()):
        raise AttnkitError(f"corpus {path} is neither a regular file nor a folder ({_FIX_PATH})")
    return p


def read_corpus(path: str | os.PathLike[str] | None) -> str:
    """Return the training text named by ``path``.

    * ``None``, ``""`` or ``"pydoc"``: the built-in corpus (:func:`builtin_corpus`).
      A built-in name wins over a file of the same name; write ``./pydoc`` for the file.
    * a file: its contents as UTF-8 (a leading BOM is dropped, line endings kept).
    * a folder: every ``.txt``/``.md``/``.rst``/``.text`` file below it, in sorted
      relative-path order, joined with blank lines; empty files are skipped.

    Raises :class:`AttnkitError` (naming the path) for a missing path, an
    empty or whitespace-only file, a binary file (NUL bytes in the first
    8 kB), a file that is not valid UTF-8, or a folder with no text.
    Non-empty files inside a folder are held to the same rules: an offending
    file is an error, never silently skipped.
    """
    if _is_builtin(path):
        return builtin_corpus()
    assert path is not None  # for type checkers; handled by _is_builtin
    p = _existing(path)
    if p.is_file():
        text = _read_text_file(p)
        if not text.strip():
            what = "is empty" if not text else "contains only whitespace"
            raise AttnkitError(f"corpus file {path} {what} (pass a file with some text)")
        return text
    parts = []
    for file in _folder_files(p):
        text = _read_text_file(file)
        if text.strip():
            parts.append(text)
    if not parts:
        suffixes = ", ".join(sorted(TEXT_SUFFIXES))
        raise AttnkitError(
            f"corpus folder {path} has no non-empty text files "
            f"(put files ending in {suffixes} in it)"
        )
    return _SEPARATOR.join(parts)


def corpus_fingerprint(path: str | os.PathLike[str] | None) -> str:
    """A cheap, stable id of the corpus ``path`` names, for cache keys.

    Built-in: ``"pydoc:<python version>"``. File: resolved path, size and
    mtime (ns). Folder: resolved path plus a digest of every text file's
    relative path, size and mtime. Contents are not read, so an edit that
    keeps both size and mtime goes unnoticed (as with ``make``). A missing path
    raises :class:`AttnkitError`, as :func:`read_corpus` would.
    """
    if _is_builtin(path):
        return f"pydoc:{platform.python_version()}"
    assert path is not None
    p = _existing(path).resolve()
    if p.is_file():
        st = p.stat()
        return f"file:{p}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256()
    for file in _folder_files(p):
        st = file.stat()
        entry = f"{file.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
        # surrogateescape: file names need not be valid UTF-8 on POSIX.
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return f"dir:{p}:{digest.hexdigest()[:16]}"
