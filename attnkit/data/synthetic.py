"""Built-in sequence-to-sequence tasks that need no download: ``data.path=synthetic:NAME``.

- ``reverse``: a random string of 1-12 lowercase letters -> the same string reversed;
- ``sort``: a random string of 1-12 digits -> its digits in ascending order;
- ``add``: ``"123+45"`` (two numbers of 1-3 digits) -> ``"168"``.

Each task is a pure function of a seed: the same seed gives the same pairs in
every process and Python version (``random.Random``). A source's split is fixed
by a hash of its text, so no test or validation source is ever seen in training.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable

Pair = tuple[str, str]

MAX_LETTERS = 12  # reverse
MAX_DIGITS = 12  # sort
MAX_ADDEND_DIGITS = 3  # add

#: Split sizes of every synthetic task: (train, valid, test).
SIZES = (50_000, 500, 1_000)


def _reverse(rng: random.Random) -> Pair:
    src = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, MAX_LETTERS)))
    return src, src[::-1]


def _sort(rng: random.Random) -> Pair:
    src = "".join(rng.choices(string.digits, k=rng.randint(1, MAX_DIGITS)))
    return src, "".join(sorted(src))


def _add(rng: random.Random) -> Pair:
    def number() -> int:
        digits = rng.randint(1, MAX_ADDEND_DIGITS)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    a, b = number(), number()
    return f"{a}+{b}", str(a + b)


#: name -> a function drawing one (source, target) pair from a ``random.Random``.
SYNTHETIC: dict[str, Callable[[random.Random], Pair]] = {
    "reverse": _reverse, "sort": _sort, "add": _add,
}


def split_of(source: str) -> str:
    """The split a source belongs to, from a hash of its text: 5% test, 5% valid, 90% train.

    Assigning by source rather than by draw keeps every split close to the task's natural
    distribution: a small space such as the 100 one-digit sums is shared out 5/5/90 too,
    instead of being used up by whichever split is drawn first.
    """
    bucket = zlib.crc32(source.encode("utf-8")) % 100
    return "test" if bucket < 5 else "valid" if bucket < 10 else "train"


def synthetic_splits(name: str, seed: int = 0, sizes: tuple[int, int, int] = SIZES
                     ) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, valid, test) pairs of task ``name``, drawn from one seeded stream.

    No source occurs in two splits (see :func:`split_of`). Validation and test sources
    are distinct; training pairs follow the task's distribution, so short sources may
    repeat there. Each split keeps the first pairs the stream routes to it, so the
    validation and test pairs do not depend on the size of the training set.
    ``name`` must be a key of :data:`SYNTHETIC` (the caller reports unknown names).
    """
    draw = SYNTHETIC[name]
    rng = random.Random(f"attnkit.synthetic:{name}:{seed}")
    want = dict(zip(("train", "valid", "test"), sizes))
    out: dict[str, list[Pair]] = {split: [] for split in want}
    held_out: set[str] = set()
    for _ in range(100 * sum(sizes) + 10_000):
        if all(len(out[s]) >= n for s, n in want.items()):
            return out["train"], out["valid"], out["test"]
        src, tgt = draw(rng)
        split = split_of(src)
        if len(out[split]) >= want[split] or (split != "train" and src in held_out):
            continue
        if split != "train":
            held_out.add(src)
        out[split].append((src, tgt))
    raise ValueError(f"synthetic:{name} has too few distinct sources for {sizes}")
