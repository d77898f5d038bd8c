"""Generation: prefill the prompt once, then decode one token at a time with the KV cache.

``attnkit.generate`` is both this module and a function: ``attnkit.generate(model,
"The ")`` returns the continuation as a string, and :func:`stream` yields it
piece by piece as it is produced.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import torch

from attnkit.errors import AttnkitError
from attnkit.generate.sampling import apply_temperature, sample, top_k_filter, top_p_filter


@torch.inference_mode()
def generate_ids(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> Iterator[int]:
    """Yield ``max_new_tokens`` token ids that continue ``prompt_ids``.

    The prompt is processed in one forward pass (prefill) that fills the KV
    cache; each new token then costs one forward pass over that token alone.
    When the sequence reaches the context length the window slides: the cache
    is refilled with the most recent ``context_length - 1`` tokens.
    """
    ctx = model.cfg.context_length
    if not prompt_ids:
        raise AttnkitError("the prompt is empty after tokenization (give at least one character)")
    if len(prompt_ids) > ctx:
        raise AttnkitError(f"the prompt is {len(prompt_ids)} tokens but the model's context is "
                           f"{ctx} (shorten the prompt)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    ids = list(prompt_ids)
    cache = model.new_cache(1)
    try:
        logits, _ = model(torch.tensor([ids], device=device), cache=cache)
        for _ in range(max_new_tokens):
            next_id = int(sample(logits[:, -1], temperature=temperature, top_k=top_k,
                                 top_p=top_p, generator=generator)[0])
            ids.append(next_id)
            yield next_id
            if cache.length >= ctx:  # slide the window
                cache.reset()
                window = ids[-(ctx - 1):]
                logits, _ = model(torch.tensor([window], device=device), cache=cache)
            else:
                logits, _ = model(torch.tensor([[next_id]], device=device), cache=cache)
    finally:
        model.train(was_training)


def stream(model: torch.nn.Module, prompt: str, max_new_tokens: int = 200, *,
           tokenizer=None, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None) -> Iterator[str]:
    """Yield the continuation of ``prompt`` as text pieces, as soon as each is complete.

    Byte-level tokens can end in the middle of a UTF-8 character; such a piece
    is held back until the character is complete.
    """
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise AttnkitError("no tokenizer: pass tokenizer=... or load the model with attnkit.load")
    prompt_ids = tokenizer.encode(prompt)
    new: list[int] = []
    emitted = ""
    for token in generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed):
        new.append(token)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(emitted):
            yield text[len(emitted):]
            emitted = text
    text = tokenizer.decode(new)
    if len(text) > len(emitted):
        yield text[len(emitted):]


def generate(model: torch.nn.Module, prompt: str, max_new_tokens: int = 200, **kwargs) -> str:
    """The continuation of ``prompt`` as one string; keyword arguments as :func:`stream`."""
    return "".join(stream(model, prompt, max_new_tokens, **kwargs))


class _CallableModule(types.ModuleType):
    """Lets ``attnkit.generate(model, prompt)`` call :func:`generate` while
    ``attnkit.generate.stream`` and friends stay reachable as module attributes."""

    def __call__(self, *args, **kwargs) -> str:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["generate", "generate_ids", "stream", "sample", "apply_temperature", "top_k_filter",
           "top_p_filter"]
