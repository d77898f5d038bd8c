"""One check of the sampling options, for every way in: ``attnkit sample``'s flags, the server's
JSON fields and the Python keywords.

Each way in names the options its own way (``--top-k``, ``'top_k'``, ``top_k``), so
:func:`check_sampling` takes a :class:`Spelling` and names the option in its message the way the
caller wrote it. The checks run before anything is loaded or streamed, so a bad value is one
line on the command line, or a 400 before the first byte of a response.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attnkit.errors import AttnkitError

#: Seeds are 0..2**64-1: what ``torch.Generator.manual_seed`` takes without wrapping around
#: (it also takes negatives, as their two's complement, which would make two seeds one).
SEED_MAX = 2**64 - 1


class OptionError(AttnkitError):
    """A sampling option out of range; ``option`` is its name as the caller spells it."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Spelling:
    """How a caller names the options: ``names`` maps each keyword of :func:`check_sampling`
    to the caller's name; ``quote`` puts the name in quotes in messages (a JSON key)."""

    names: Mapping[str, str]
    quote: bool = False

    def __call__(self, key: str) -> str:
        name = self.names.get(key, key)
        return f"'{name}'" if self.quote else name


CLI = Spelling({"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
                "min_p": "--min-p", "repetition_penalty": "--repetition-penalty",
                "no_repeat_ngram": "--no-repeat-ngram", "seed": "--seed", "n": "--num-samples",
                "stop": "--stop", "max_new_tokens": "--max-new-tokens"})
API = Spelling({"max_new_tokens": "max_tokens", "no_repeat_ngram": "no_repeat_ngram_size"},
               quote=True)
PYTHON = Spelling({"no_repeat_ngram": "no_repeat_ngram_size"})  # attnkit.generate's keywords


def check_sampling(*, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None,
                   repetition_penalty: float | None = None, no_repeat_ngram: int | None = None,
                   seed: int | None = None, n: int | None = None,
                   stop: Sequence[str] | None = None, max_new_tokens: int | None = None,
                   max_temperature: float | None = None, max_n: int | None = None,
                   max_new_tokens_limit: int | None = None, names: Spelling = CLI) -> None:
    """Raise :class:`OptionError` (an :class:`AttnkitError`) for the first option out of range.

    ``None`` skips an option. Numbers are compared as given, never converted, so a huge
    integer from JSON is refused rather than overflowing a float. ``seed`` is the first of
    ``n`` consecutive seeds (``attnkit sample --num-samples``), all of which must be in
    0..:data:`SEED_MAX`. The ``max_*`` limits are the server's (OpenAI's temperature range,
    one choice per request, ``--max-tokens-limit``); the command line has none.
    """
    def fail(key: str, problem: str, value: object, fix: str | None = None) -> None:
        got = "" if value is None else f", got {value}"
        raise OptionError(f"{names(key)} {problem}{got}{f' ({fix})' if fix else ''}",
                          names.names.get(key, key))

    for key, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p),
                       ("repetition_penalty", repetition_penalty)):
        if isinstance(value, float) and not math.isfinite(value):  # nan slips past every range
            fail(key, "must be a finite number", value)
    if max_new_tokens is not None:
        if max_new_tokens_limit is not None and not 0 <= max_new_tokens <= max_new_tokens_limit:
            fail("max_new_tokens", f"must be between 0 and {max_new_tokens_limit}", max_new_tokens)
        if max_new_tokens < 0:
            fail("max_new_tokens", "must be 0 or more", max_new_tokens)
    if temperature is not None:
        if max_temperature is not None and not 0 <= temperature <= max_temperature:
            fail("temperature", f"must be between 0 and {max_temperature:g}", temperature)
        if temperature < 0:
            fail("temperature", "must be 0 (greedy) or positive", temperature)
    if top_k is not None and top_k < 1:
        fail("top_k", "must be at least 1", top_k, "leave it out for no top-k")
    if top_p is not None and not 0 < top_p <= 1:
        fail("top_p", "must be in (0, 1]", top_p)
    if min_p is not None and not 0 <= min_p <= 1:
        fail("min_p", "must be in [0, 1]", min_p)
    if repetition_penalty is not None and repetition_penalty <= 0:
        fail("repetition_penalty", "must be positive (1 is off)", repetition_penalty)
    if no_repeat_ngram is not None and no_repeat_ngram < 0:
        fail("no_repeat_ngram", "must be 0 (off) or more", no_repeat_ngram)
    if n is not None:
        if n < 1:
            fail("n", "must be at least 1", n)
        if max_n is not None and n > max_n:
            fail("n", f"must be at most {max_n}", n)
    if seed is not None:
        if not 0 <= seed <= SEED_MAX:
            fail("seed", f"must be between 0 and 2**64-1 = {SEED_MAX}", seed)
        if n is not None and seed + n - 1 > SEED_MAX:  # the samples take seeds seed, seed+1, ...
            fail("seed", f"plus {names('n')} {n} must stay within 2**64-1 = {SEED_MAX}", seed,
                 f"use a smaller {names('seed')}")
    if stop is not None and any(not s for s in stop):
        fail("stop", "must not be empty", None)


def check_rules(min_p: float | None, repetition_penalty: float | None,
                no_repeat_ngram_size: int | None) -> None:
    """The checks of the history rules, named as ``attnkit.generate``'s keywords."""
    check_sampling(min_p=min_p, repetition_penalty=repetition_penalty,
                   no_repeat_ngram=no_repeat_ngram_size, names=PYTHON)
