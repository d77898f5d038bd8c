"""Back-ends: the speed-ups, applied to a plain model after it is built.

attnkit's models (:mod:`attnkit.nn`, :mod:`attnkit.models`) are plain PyTorch: ``nn.Linear``,
``F.scaled_dot_product_attention``, ``F.cross_entropy``. A back-end makes the same model
faster on one kind of hardware by swapping the class of some of its modules for a subclass
that computes the same function another way (the parameters, the state-dict keys and every
result to float rounding stay the same), the way :mod:`attnkit.train.distributed` wraps a
model for DDP/FSDP afterwards::

    model = build_model(cfg)
    accelerate(model, purpose="train")     # or "decode"; backend="plain" leaves it as it is

The table of swaps, for the ``onednn`` back-end (a CPU with PyTorch's oneDNN):

- ``nn.Linear`` -> :class:`~attnkit.backends.onednn.OneDNNLinear` (both purposes): products by
  oneDNN, packed weights for decode steps;
- :class:`~attnkit.nn.Attention` -> :class:`~attnkit.backends.attention.OneDNNAttention` (both):
  the block-causal kernel, one stacked packed q/k/v product;
- :class:`~attnkit.nn.OutputHead` -> :class:`~attnkit.backends.head.TrainHead` (train: the
  fused chunked loss) or :class:`~attnkit.backends.head.DecodeHead` (decode: the bf16 greedy
  screen).

Each fast class checks at every call that its case holds (fp32 or native bf16, a CPU,
outside ``torch.compile``, ...) and otherwise runs the plain code, so an accelerated model
stays correct wherever it is moved. The compiled (CUDA-graph) decode step is
:mod:`attnkit.backends.compiled`, asked for by ``generate(..., compile=True)``.

``backend="auto"`` picks ``onednn`` where PyTorch has it and ``plain`` elsewhere;
``ATTNKIT_BACKEND=plain`` in the environment makes ``auto`` mean ``plain`` everywhere (the
trainer's ``--train.backend`` and the commands' default follow it).
"""

from __future__ import annotations

import os
from typing import Literal

from torch import nn

from attnkit.backends.attention import OneDNNAttention
from attnkit.backends.head import DecodeHead, TrainHead
from attnkit.backends.onednn import PACKING, OneDNNLinear
from attnkit.config import BACKENDS
from attnkit.errors import AttnkitError
from attnkit.nn import Attention, OutputHead

PURPOSES = ("train", "decode")

# plain class -> fast class, per purpose; only these exact classes are swapped (a subclass
# such as CrossAttention has its own forward and stays as it is)
SWAPS: dict[str, dict[str, dict[type[nn.Module], type[nn.Module]]]] = {
    "onednn": {
        "train": {nn.Linear: OneDNNLinear, Attention: OneDNNAttention, OutputHead: TrainHead},
        "decode": {nn.Linear: OneDNNLinear, Attention: OneDNNAttention, OutputHead: DecodeHead},
    },
}


def plain_classes() -> dict[type[nn.Module], type[nn.Module]]:
    """fast class -> the plain class it replaces, over every back-end in :data:`SWAPS`."""
    return {fast: plain for table in SWAPS.values() for swaps in table.values()
            for plain, fast in swaps.items()}


KEPT = ("_packed", "_qkv", "_screen")  # copies a fast module derives from its weights


def resolve(backend: str = "auto") -> str:
    """The back-end ``backend`` names here: ``auto`` is ``onednn`` where PyTorch has oneDNN
    (unless ``ATTNKIT_BACKEND=plain``), else ``plain``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown back-end {backend!r} (choose one of {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = os.environ.get("ATTNKIT_BACKEND", "auto")
        if backend not in BACKENDS:
            raise AttnkitError(f"ATTNKIT_BACKEND={backend!r} is not a back-end (choose one of "
                             f"{', '.join(BACKENDS)})")
    if backend == "auto":
        return "onednn" if PACKING else "plain"
    return backend


def accelerate(model: nn.Module, purpose: Literal["train", "decode"] = "decode",
               backend: str = "auto") -> nn.Module:
    """Apply ``backend`` to ``model`` in place for ``purpose`` and return it. A model that
    was accelerated before is first made plain again, so a second call switches purpose."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    name = resolve(backend)
    make_plain(model)
    swaps = SWAPS.get(name, {}).get(purpose, {})
    for module in model.modules():
        fast = swaps.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model


def make_plain(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate`: every swapped module back to its plain class, the copies it
    kept dropped."""
    plain_of = plain_classes()
    for module in model.modules():
        plain = plain_of.get(type(module))
        if plain is not None:
            for name in KEPT:
                module.__dict__.pop(name, None)
            module.__class__ = plain
    return model


def backend_of(model: nn.Module) -> str:
    """The back-end whose classes ``model`` holds (``onednn``), or ``plain``."""
    fast = {f: name for name, table in SWAPS.items() for swaps in table.values()
            for f in swaps.values()}
    return next((fast[type(m)] for m in model.modules() if type(m) in fast), "plain")


__all__ = ["accelerate", "make_plain", "backend_of", "resolve", "BACKENDS", "PURPOSES"]
