"""Generation: prefill the prompt once, then decode one token at a time with the KV cache.

``attnkit.generate`` is both this module and a function: ``attnkit.generate(model,
"The ")`` returns the continuation as a string, and :func:`stream` yields it
piece by piece as it is produced.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from attnkit.backends.compiled import compiled_step, static_cache
from attnkit.errors import AttnkitError
from attnkit.generate.batch import generate_batch, generate_batch_ids
from attnkit.generate.options import check_rules
from attnkit.generate.sampling import (
    apply_temperature,
    history_rules,
    min_p_filter,
    no_repeat_ngram,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)
from attnkit.generate.steps import check_compiles, last_hidden, last_logits, require
from attnkit.generate.stops import first_stop, held_back, need_tokenizer, stop_strings


@torch.inference_mode()
def generate_ids(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, min_p: float | None = None,
                 repetition_penalty: float | None = None,
                 no_repeat_ngram_size: int | None = None,
                 compile: bool = False) -> Iterator[int]:
    """Yield ``max_new_tokens`` token ids that continue ``prompt_ids``.

    The prompt is processed in one forward pass (prefill) that fills the KV
    cache; each new token then costs one forward pass over that token alone.
    When the sequence reaches the context length the window slides: the cache
    is refilled with the most recent ``context_length - 1`` tokens.

    ``repetition_penalty`` and ``no_repeat_ngram_size`` look at the prompt and the
    generated ids; they apply before greedy decoding too. Without them, greedy decoding
    (``temperature=0``) of a decoder asks its output layer for the argmax alone
    (:meth:`~attnkit.nn.head.OutputHead.greedy`), the same token for half the bytes read.

    ``model`` is any family that generates (``model.abilities.generates``).
    ``compile=True`` runs the layers of each one-token step through ``torch.compile`` (a
    family with ``abilities.compiles``), into a :class:`~attnkit.nn.kv_cache.StaticKVCache`; the prefill runs
    eagerly into a plain cache that is then copied over, and so does the output layer. The first call
    compiles (seconds to tens of seconds on a CPU); later calls reuse it. It pays where a
    step is many small operations rather than a few large reads: small models (see
    docs/benchmarks.md).
    """
    require(model, "generates", "generation")
    if compile:
        check_compiles(model)
    ctx = model.cfg.context_length
    if not prompt_ids:
        raise AttnkitError("the prompt is empty after tokenization (give at least one character)")
    if len(prompt_ids) > ctx:
        raise AttnkitError(f"the prompt is {len(prompt_ids)} tokens but the model's context is "
                           f"{ctx} (shorten the prompt)")
    check_rules(min_p, repetition_penalty, no_repeat_ngram_size)
    rep_penalty = repetition_penalty
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    ids = list(prompt_ids)
    step = compiled_step(model) if compile else None
    static = static_cache(model, 1) if compile else None
    # the prefill fills this one (compiled steps go on in `static`); sized to this run, not
    # to the whole context, unless the window will slide
    cache = model.new_cache(1, min(ctx, len(ids) + max_new_tokens))

    # plain greedy decoding asks the output layer for the argmax alone, which an accelerated
    # head finds reading half the bytes (DecodeHead.greedy); the loop then carries the last
    # position's hidden state (1, C) instead of its logits (1, V)
    greedy = temperature == 0 and rep_penalty in (None, 1.0) and not no_repeat_ngram_size

    def forward(tokens: list[int], c) -> torch.Tensor:
        x = torch.tensor([tokens], device=device)
        return (last_hidden if greedy else last_logits)(model, x, c)

    def prefill(window: list[int]) -> torch.Tensor:
        cache.reset()
        out = forward(window, cache)
        if static is not None:
            static.copy_from(cache)
        return out

    def choose(out: torch.Tensor) -> int:
        if greedy:
            return int(model.lm_head.greedy(out)[0])
        last = history_rules(out.float(), [ids], rep_penalty, no_repeat_ngram_size)
        return int(sample(last, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          generator=generator)[0])

    try:
        out = prefill(ids)  # the last position's logits, or its hidden state (see `greedy`)
        for i in range(max_new_tokens):
            next_id = choose(out)
            ids.append(next_id)
            yield next_id
            if i == max_new_tokens - 1:  # no forward pass for a token nobody will ask for
                break
            if (cache if static is None else static).length >= ctx:  # slide the window
                out = prefill(ids[-(ctx - 1):])
            elif step is not None:
                if device.type == "cuda":  # the last replay's outputs are no longer needed
                    torch.compiler.cudagraph_mark_step_begin()
                hidden = step(torch.tensor([[next_id]], device=device), static)[:, -1]
                out = hidden if greedy else model.lm_head(hidden)
            else:
                out = forward([next_id], cache)
    finally:
        model.train(was_training)


class Chunk(NamedTuple):
    """One item of ``stream(..., details=True)``: a text piece; on the last chunk only,
    why generation ended: ``"stop"`` (a stop string was produced) or ``"length"``
    (``max_new_tokens`` were generated); and ``tokens``, how many token ids the model has
    generated so far (the exact count for usage reports). The last chunk's text may be
    empty."""

    text: str
    finish_reason: str | None = None
    tokens: int = 0


def stream(model: torch.nn.Module, prompt: str, max_new_tokens: int = 200, *,
           tokenizer=None, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None, min_p: float | None = None,
           repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
           stop: Sequence[str] | str | None = None, details: bool = False,
           compile: bool = False) -> Iterator[str] | Iterator[Chunk]:
    """Yield the continuation of ``prompt`` as text pieces, as soon as each is complete.

    Byte-level tokens can end in the middle of a UTF-8 character; such a piece
    is held back until the character is complete. With ``stop`` strings, generation
    ends as soon as the text contains one, which is not emitted; text that could be the
    start of a stop string is held back until it is known not to be one.

    With ``details=True`` the items are :class:`Chunk` (text, finish_reason), the last
    one carrying ``"stop"`` or ``"length"``. ``compile`` as in :func:`generate_ids`.
    """
    tokenizer = need_tokenizer(tokenizer)
    stops = stop_strings(stop)
    prompt_ids = tokenizer.encode(prompt)
    new: list[int] = []
    emitted = 0

    def out(text: str, reason: str | None = None):
        return Chunk(text, reason, len(new)) if details else text

    for token in generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, min_p=min_p,
                              repetition_penalty=repetition_penalty,
                              no_repeat_ngram_size=no_repeat_ngram_size, compile=compile):
        new.append(token)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):
            continue
        at = first_stop(text, stops)
        if at >= 0:
            if at > emitted and not details:
                yield text[emitted:at]
            if details:
                yield out(text[emitted:at], "stop")
            return
        safe = len(text) - held_back(text, stops)
        if safe > emitted:
            yield out(text[emitted:safe])
            emitted = safe
    text = tokenizer.decode(new)
    if details:
        yield out(text[emitted:], "length")
    elif len(text) > emitted:
        yield text[emitted:]


def generate(model: torch.nn.Module, prompt: str, max_new_tokens: int = 200, **kwargs) -> str:
    """The continuation of ``prompt`` as one string; keyword arguments as :func:`stream`."""
    kwargs.pop("details", None)
    return "".join(stream(model, prompt, max_new_tokens, **kwargs))


class _CallableModule(types.ModuleType):
    """Lets ``attnkit.generate(model, prompt)`` call :func:`generate` while
    ``attnkit.generate.stream`` and friends stay reachable as module attributes."""

    def __call__(self, *args, **kwargs) -> str:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["generate", "generate_ids", "stream", "Chunk", "generate_batch", "generate_batch_ids",
           "sample", "apply_temperature", "top_k_filter", "top_p_filter", "min_p_filter",
           "repetition_penalty", "no_repeat_ngram", "history_rules"]
