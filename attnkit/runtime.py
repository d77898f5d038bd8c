"""Process-wide settings that make PyTorch faster on a CPU.

``keep_freed_memory()``: glibc's malloc gives every large block (above 128 KB to 32 MB) its
own ``mmap`` and returns it to the operating system on ``free``. A training step allocates
and frees the same large activations every step, so each one is faulted in again, a 4 KB page
at a time, and zeroed by the kernel. On this project's 2-core machines that cost more than
the arithmetic: allocating and filling a fresh (1024, 50257) fp32 tensor took 57 ms against
14 ms for a reused one, and Hugging Face's GPT2LMHeadModel trained 1.5x (gpt2-124m, bf16)
to 4x (``tiny``) faster once freed memory was kept. The function turns ``mmap`` off for
the heap and stops it from trimming, so freed memory is reused by the next step; the
process's resident memory then stays near its peak instead of falling between steps.
(jemalloc or tcmalloc loaded with ``LD_PRELOAD`` achieve the same.)

The ``attnkit`` command calls it once at start; ``ATTNKIT_MALLOC=default`` leaves glibc's
settings alone. It does nothing where the C library is not glibc (macOS, Windows, musl).

``huge_pages()``: decoding one token reads every weight of the model from memory, 4 KB page
by 4 KB page, and on this project's machines the page-table walks cost part of that
bandwidth. PyTorch backs tensors of 2 MB and more with the kernel's transparent huge pages
when ``THP_MEM_ALLOC_ENABLE=1`` is in its environment as it starts (read once, at its first
allocation); Linux then maps them 2 MB at a time wherever THP is ``madvise`` or ``always``.
A sum over 500 MB ran at 48 GB/s against 44, and gpt2-124m decoded in fp32 about 7% faster
(``benchmarks/generate.py``, four runs each way). The decoding commands (``sample``,
``serve``, ``translate``) call it; training does not: it made the first steps of gpt2-124m
slower (the pages are faulted and compacted 2 MB at a time) and its peak memory 15% larger,
for 2% per step. ``ATTNKIT_MALLOC=default`` skips this too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_TOP_PAD = -2
M_MMAP_MAX = -4

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed memory in the process for reuse (glibc only); True if the settings took."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("ATTNKIT_MALLOC", "") == "default":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1  # every block from the heap, none from its own mmap
    ok = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok  # never give the heap's top back
    ok = mallopt(M_TOP_PAD, 256 * 2**20) == 1 and ok  # grow the heap 256 MB at a time
    _done = ok
    return _done


def huge_pages() -> bool:
    """Ask PyTorch for transparent huge pages behind its large tensors (see the module doc).
    It must run before ``import torch``; True if the setting will take effect (an explicit
    ``THP_MEM_ALLOC_ENABLE`` in the environment is left as it is)."""
    if os.environ.get("ATTNKIT_MALLOC", "") == "default" or "torch" in sys.modules:
        return False
    return os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1") == "1"
