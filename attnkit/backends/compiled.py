"""The compiled decode step: a model's one-token step through ``torch.compile``, on CUDA
recorded as a CUDA graph and replayed.

A decode step of a small model is hundreds of small kernels, each launched from Python;
compiled, it is a few fused kernels, and on CUDA ``mode="reduce-overhead"`` records the step
as a CUDA graph and replays it, one launch a token. Replays need every input at a fixed
address, so the step decodes into a :class:`~attnkit.nn.kv_cache.StaticKVCache` (fixed shapes,
written in place) that is kept per model and batch size and reused, so the compiled step's
guards keep holding. What is kept lives here, keyed weakly by the model: nothing is stored on
the model itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from attnkit.nn.kv_cache import StaticKVCache


class _Compiled:
    """What one model's compiled decoding keeps: the step, its mode, and a cache per batch."""

    def __init__(self) -> None:
        self.step: Callable | None = None
        self.mode: str | None = None
        self.caches: dict[int, StaticKVCache] = {}


_kept: weakref.WeakKeyDictionary[nn.Module, _Compiled] = weakref.WeakKeyDictionary()


def compile_mode(device: torch.device) -> str | None:
    """``torch.compile``'s mode for the decode step on ``device``: "reduce-overhead" (CUDA
    graphs) on CUDA, the default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


def compiled_step(model: nn.Module) -> Callable[[torch.Tensor, StaticKVCache], torch.Tensor]:
    """``(token ids (B, 1), static cache) -> final hidden states (B, 1, C)``, compiled once
    per model (again when it moved to a device of another kind). The output layer runs
    after it, eagerly: a oneDNN-packed weight cannot be an input of a compiled graph."""
    kept = _kept.setdefault(model, _Compiled())
    mode = compile_mode(next(model.parameters()).device)
    if kept.step is None or kept.mode != mode:
        def step(ids: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
            return model.hidden(ids, cache=cache)

        kept.step, kept.mode = torch.compile(step, dynamic=False, mode=mode), mode
    return kept.step


def static_cache(model: nn.Module, batch_size: int) -> StaticKVCache:
    """The model's :class:`StaticKVCache` for ``batch_size`` rows (``model.new_cache(...,
    static=True)``, which models with ``abilities.compiles`` have), emptied; rebuilt when
    the model's device or dtype changed."""
    kept = _kept.setdefault(model, _Compiled())
    p = next(model.parameters())
    cache = kept.caches.get(batch_size)
    if cache is None or cache.k[0].device != p.device or cache.k[0].dtype != p.dtype:
        cache = kept.caches[batch_size] = model.new_cache(batch_size, static=True)
        if compile_mode(p.device) == "reduce-overhead":  # written in place by the replays
            for buffer in [*cache.k, *cache.v, cache.pos]:
                torch._dynamo.mark_static_address(buffer)
    cache.reset()
    return cache
