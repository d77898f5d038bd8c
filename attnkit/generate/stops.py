"""Stop strings and the tokenizer a text-in, text-out call needs: written once, used by
``generate``/``stream``, the batch and beam decoders, the CLI and the server."""

from __future__ import annotations

from collections.abc import Sequence

from attnkit.errors import AttnkitError


def stop_strings(stop: Sequence[str] | str | None) -> list[str]:
    """``stop`` as a list (one string, several, or none); an empty string is refused."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in stops):
        raise AttnkitError("stop strings must not be empty")
    return stops


def first_stop(text: str, stops: Sequence[str]) -> int:
    """Where the earliest stop string starts in ``text``, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) its first stop string."""
    at = first_stop(text, stops)
    return text if at < 0 else text[:at]


def held_back(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that begins some stop string (text that may
    still turn out to be a stop, so not shown yet)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def need_tokenizer(tokenizer):
    """``tokenizer``, or the error that says where one comes from."""
    if tokenizer is None:
        raise AttnkitError("no tokenizer: pass tokenizer=... (attnkit.load(path).tokenizer), "
                           "or call run.generate(...) on what attnkit.load returned")
    return tokenizer
