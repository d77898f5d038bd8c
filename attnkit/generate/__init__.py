"""Generation: prefill the prompt once, then decode one token at a time with the KV cache.

``attnkit.generate`` is both this module and a function: ``attnkit.generate(model,
"The ")`` returns the continuation as a string, and :func:`stream` yields it
piece by piece as it is produced.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from attnkit.errors import AttnkitError
from attnkit.generate.options import PYTHON, check_sampling  # the CLI's and the server's check
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


def _check_rules(min_p, rep_penalty, ngram) -> None:
    check_sampling(min_p=min_p, repetition_penalty=rep_penalty, no_repeat_ngram=ngram,
                   names=PYTHON)


def last_only(model: torch.nn.Module) -> dict:
    """``{"last_only": True}`` for models whose forward can return the last position's logits
    alone (attnkit's decoders and the LSTM); ``{}`` for any other model with the
    ``model(ids, cache=...) -> (logits, loss)`` contract."""
    return {"last_only": True} if "last_only" in inspect.signature(model.forward).parameters \
        else {}


def _new_cache(model: torch.nn.Module, batch_size: int, max_len: int):
    """``model.new_cache(batch_size, max_len)``, or ``model.new_cache(batch_size)`` for a model
    whose cache takes no size."""
    params = inspect.signature(model.new_cache).parameters.values()
    if len(params) > 1 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return model.new_cache(batch_size, max_len)
    return model.new_cache(batch_size)


def compiled_step(model: torch.nn.Module):
    """``(token ids (B, 1), static cache) -> final hidden states (B, 1, C)``, compiled with
    ``torch.compile`` once per model and kept on it, with the :class:`StaticKVCache` it
    decodes into (one per batch size; reused, so the compiled step's guards keep holding).
    The output layer runs after it, eagerly, on its packed CPU path (a oneDNN-packed weight
    cannot be an input of a compiled graph)."""
    from attnkit.models import Decoder
    from attnkit.nn.kv_cache import StaticKVCache

    if not isinstance(model, Decoder):
        raise AttnkitError(f"compiled decoding is for Transformer decoders, not "
                           f"{type(model).__name__} (leave --compile off)")
    state = model.__dict__.setdefault("_compiled_decode", {})
    mode = compile_mode(model.tok_emb.weight.device)
    if "step" not in state or state["mode"] != mode:  # first call, or moved to another device
        def step(ids: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
            return model.hidden_states(ids, cache=cache)[0]

        state["step"], state["mode"] = torch.compile(step, dynamic=False, mode=mode), mode
    return state["step"]


def compile_mode(device: torch.device) -> str | None:
    """``torch.compile``'s mode for the decode step on ``device``: on CUDA "reduce-overhead",
    which also records the step as a CUDA graph and replays it, one launch a token instead of
    one per kernel (the static cache's buffers keep their addresses, as replays need); the
    default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


def static_cache(model: torch.nn.Module, batch_size: int):
    """The model's :class:`StaticKVCache` for ``batch_size`` rows, emptied (see
    :func:`compiled_step`); rebuilt when the model's device or dtype changed."""
    from attnkit.nn.kv_cache import StaticKVCache

    caches = model.__dict__.setdefault("_compiled_decode", {}).setdefault("caches", {})
    p = model.tok_emb.weight
    cache = caches.get(batch_size)
    if cache is None or cache.k[0].device != p.device or cache.k[0].dtype != p.dtype:
        cfg = model.cfg
        cache = caches[batch_size] = StaticKVCache(cfg.n_layers, batch_size, cfg.n_kv_heads,
                                                   cfg.head_size, cfg.context_length,
                                                   device=p.device, dtype=p.dtype)
        if compile_mode(p.device) == "reduce-overhead":  # written in place by the replays
            for buffer in [*cache.k, *cache.v, cache.pos]:
                torch._dynamo.mark_static_address(buffer)
    cache.reset()
    return cache


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

    ``compile=True`` runs the layers of each one-token step through ``torch.compile`` (a
    decoder only), into a :class:`~attnkit.nn.kv_cache.StaticKVCache`; the prefill runs
    eagerly into a plain cache that is then copied over, and so does the output layer. The first call
    compiles (seconds to tens of seconds on a CPU); later calls reuse it. It pays where a
    step is many small operations rather than a few large reads: small models (see
    docs/benchmarks.md).
    """
    ctx = model.cfg.context_length
    if not prompt_ids:
        raise AttnkitError("the prompt is empty after tokenization (give at least one character)")
    if len(prompt_ids) > ctx:
        raise AttnkitError(f"the prompt is {len(prompt_ids)} tokens but the model's context is "
                           f"{ctx} (shorten the prompt)")
    _check_rules(min_p, repetition_penalty, no_repeat_ngram_size)
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
    cache = _new_cache(model, 1, min(ctx, len(ids) + max_new_tokens))

    # plain greedy decoding of a decoder asks its output layer for the argmax alone, which it
    # can find reading half the bytes (OutputHead.greedy); the loop then carries the last
    # position's hidden state (1, C) instead of its logits (1, V)
    greedy = temperature == 0 and rep_penalty in (None, 1.0) and not no_repeat_ngram_size \
        and hasattr(getattr(model, "lm_head", None), "greedy") and hasattr(model, "hidden_states")

    def forward(tokens: list[int], c) -> torch.Tensor:
        x = torch.tensor([tokens], device=device)
        if greedy:
            return model.hidden_states(x, cache=c)[0][:, -1]
        return model(x, cache=c, **last_only(model))[0][:, -1]

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


def _held_back(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that begins some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Where the earliest stop string starts in ``text``, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def _tokenizer(model, tokenizer):
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise AttnkitError("no tokenizer: pass tokenizer=... or load the model with attnkit.load")
    return tokenizer


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in stops):
        raise AttnkitError("stop strings must not be empty")
    return stops


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
    tokenizer = _tokenizer(model, tokenizer)
    stops = _stops(stop)
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
        at = _first_stop(text, stops)
        if at >= 0:
            if at > emitted and not details:
                yield text[emitted:at]
            if details:
                yield out(text[emitted:at], "stop")
            return
        safe = len(text) - _held_back(text, stops)
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


from attnkit.generate.batch import generate_batch, generate_batch_ids  # noqa: E402


class _CallableModule(types.ModuleType):
    """Lets ``attnkit.generate(model, prompt)`` call :func:`generate` while
    ``attnkit.generate.stream`` and friends stay reachable as module attributes."""

    def __call__(self, *args, **kwargs) -> str:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["generate", "generate_ids", "stream", "Chunk", "generate_batch", "generate_batch_ids",
           "sample", "apply_temperature", "top_k_filter", "top_p_filter", "min_p_filter",
           "repetition_penalty", "no_repeat_ngram", "history_rules"]
