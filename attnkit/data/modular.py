"""Modular arithmetic, the task on which Power et al. (2022) saw grokking: ``data.path=modular:OP``.

Every equation ``a OP b = c (mod p)`` for ``a, b`` in ``0..p-1`` occurs exactly once; a
seeded shuffle gives the first ``train`` fraction of them to training and holds out all the
rest. An example is four tokens ``[a, OP, b, =]`` and its one target, ``c``. ``/`` is
multiplication by the inverse, so it needs a prime ``p`` and ``b != 0`` (those pairs are left
out, as in the paper).

The spec takes options after the operation: ``modular:add``, ``modular:sub:p=59:train=0.4``,
``modular:div:p=97:train=0.5:seed=1``. ``p`` defaults to 97, ``train`` to 0.5, ``seed`` to 0.

Tokens: ids ``0..p-1`` are the numbers themselves, then the four operations, then ``=``.
The run's tokenizer is an ordinary char tokenizer over that vocabulary (so it saves, loads and
resumes like any other); number ``i`` is spelled by the character ``chr(NUMBER_BASE + i)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnkit.errors import AttnkitError

PREFIX = "modular:"
#: operation name -> (symbol, c = f(a, b, p)); division is a * b^(p-2) (Fermat's little theorem).
OPS: dict[str, tuple[str, Callable[[int, int, int], int]]] = {
    "add": ("+", lambda a, b, p: (a + b) % p),
    "sub": ("-", lambda a, b, p: (a - b) % p),
    "mul": ("*", lambda a, b, p: (a * b) % p),
    "div": ("/", lambda a, b, p: (a * pow(b, p - 2, p)) % p),
}
EQUALS = "="
NUMBER_BASE = 0x100  # number i is chr(0x100 + i): Latin Extended-A onwards, clear of the symbols
DEFAULTS = {"p": 97, "train": 0.5, "seed": 0}


@dataclass(frozen=True)
class ModularSpec:
    op: str = "add"
    p: int = 97
    train_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise AttnkitError(f"unknown modular operation '{self.op}' (choose "
                               f"{', '.join(PREFIX + n for n in OPS)})")
        if self.p < 2:
            raise AttnkitError(f"modular: p must be at least 2, got {self.p}")
        if self.op == "div" and any(self.p % d == 0 for d in range(2, int(self.p ** 0.5) + 1)):
            raise AttnkitError(f"modular:div needs a prime p (every b != 0 invertible), got {self.p}")
        if not 0.0 < self.train_fraction < 1.0:
            raise AttnkitError(f"modular: train must be in (0, 1), got {self.train_fraction}")

    @property
    def symbol(self) -> str:
        return OPS[self.op][0]

    def __str__(self) -> str:
        return f"{PREFIX}{self.op}:p={self.p}:train={self.train_fraction:g}:seed={self.seed}"


def is_modular(path: str) -> bool:
    return path.startswith(PREFIX)


def parse_spec(path: str) -> ModularSpec:
    """``modular:OP[:key=value...]`` with keys ``p``, ``train`` and ``seed``."""
    if not is_modular(path):
        raise AttnkitError(f"not a modular task: {path!r} (expected {PREFIX}OP[:p=97:train=0.5])")
    op, *options = path[len(PREFIX):].split(":")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in DEFAULTS:
            raise AttnkitError(f"bad option {option!r} in {path!r} (options: p=INT, train=FRACTION, "
                               f"seed=INT)")
        values[key] = value
    try:
        return ModularSpec(op=op, p=int(values.get("p", DEFAULTS["p"])),
                           train_fraction=float(values.get("train", DEFAULTS["train"])),
                           seed=int(values.get("seed", DEFAULTS["seed"])))
    except ValueError as e:
        raise AttnkitError(f"bad option value in {path!r}: {e}") from None


def vocabulary(p: int) -> list[str]:
    """The char vocabulary in id order: the p numbers, the operation symbols, ``=``."""
    return [chr(NUMBER_BASE + i) for i in range(p)] + [s for s, _ in OPS.values()] + [EQUALS]


def equations(spec: ModularSpec) -> list[tuple[int, int, int]]:
    """Every ``(a, b, c)`` with ``c = a OP b mod p``, in order of ``(a, b)``."""
    f = OPS[spec.op][1]
    return [(a, b, f(a, b, spec.p)) for a in range(spec.p) for b in range(spec.p)
            if not (spec.op == "div" and b == 0)]


def split(spec: ModularSpec) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(train, held-out) equations: a shuffle seeded by ``spec.seed`` (and the task), cut at
    ``round(train_fraction * n)``. Every equation is in exactly one of the two."""
    eqs = equations(spec)
    random.Random(f"attnkit.modular:{spec.op}:{spec.p}:{spec.seed}").shuffle(eqs)
    n_train = min(len(eqs) - 1, max(1, round(spec.train_fraction * len(eqs))))
    return eqs[:n_train], eqs[n_train:]


def as_tensors(eqs: list[tuple[int, int, int]], spec: ModularSpec
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(N, 4)`` = ``[a, OP, b, =]`` as token ids, and answers ``(N,)``."""
    vocab = vocabulary(spec.p)
    op_id, eq_id = vocab.index(spec.symbol), vocab.index(EQUALS)
    abc = torch.tensor(eqs, dtype=torch.long).reshape(-1, 3)  # (N, 3)
    n = abc.shape[0]
    inputs = torch.stack([abc[:, 0], torch.full((n,), op_id), abc[:, 1], torch.full((n,), eq_id)],
                         dim=1)  # (N, 4)
    return inputs, abc[:, 2]


def accuracy(logits: torch.Tensor, answers: torch.Tensor) -> float:
    """Exact-match accuracy of the most likely token at the last position: logits ``(N, T, V)``
    (or ``(N, V)``), answers ``(N,)``."""
    last = logits[:, -1] if logits.dim() == 3 else logits  # (N, V)
    return (last.argmax(-1) == answers).float().mean().item()
