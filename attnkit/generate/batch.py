"""Several prompts at once: left-pad them to one length and decode all rows together.

Row ``b`` with ``pad_b`` padding tokens on its left sees its first real token at
position 0, exactly as when it runs alone: the model gets per-row ``positions`` and a
key padding mask, so learned, sinusoidal, RoPE and ALiBi positions all line up.

Past the context each row slides its window as :func:`attnkit.generate.generate_ids` does
alone, at its own moment: its cache slots are refilled with its most recent
``context_length - 1`` tokens, right-aligned so that its keys stay contiguous and end at the
newest slot (causal masking and ALiBi measure distances in cache slots).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.errors import AttnkitError
from attnkit.generate.options import check_rules
from attnkit.generate.sampling import history_rules, sample
from attnkit.generate.steps import last_logits, require
from attnkit.generate.stops import cut_at_stop, first_stop, need_tokenizer, stop_strings


def _keep_last(cache, keep: torch.Tensor, n: int) -> torch.Tensor:
    """Move the last ``n`` filled slots of ``cache`` to its front, for every row and layer,
    and return ``keep`` (B, S) cut the same way, (B, n): room for the next tokens once every
    row's real keys fit in ``n`` slots."""
    S = cache.length
    for buf in (*cache.k, *cache.v):  # each (B, nkv, max_len, hs)
        buf[:, :, :n] = buf[:, :, S - n:S].clone()  # the ranges may overlap
    cache.length = n
    return keep[:, S - n:]


@torch.inference_mode()
def generate_batch_ids(model: torch.nn.Module, prompts_ids: Sequence[Sequence[int]],
                       max_new_tokens: int, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None,
                       seed: int | None = None, min_p: float | None = None,
                       repetition_penalty: float | None = None,
                       no_repeat_ngram_size: int | None = None,
                       done=None) -> list[list[int]]:
    """The new ids of every prompt, decoded together with one KV cache.

    Row ``i`` samples with its own generator seeded ``seed + i``. Every prompt must fit in
    the context; generation may run past it, each row sliding its window as it would alone
    (greedy rows give the tokens of :func:`~attnkit.generate.generate_ids`).
    ``done(i, ids)``, optional, says when row ``i`` may stop; generation ends when
    every row is done.
    """
    require(model, "generates", "generation")
    ctx = model.cfg.context_length
    if not prompts_ids:
        return []
    if any(len(p) == 0 for p in prompts_ids):
        raise AttnkitError("a prompt is empty after tokenization (give at least one character)")
    longest = max(len(p) for p in prompts_ids)
    if longest > ctx:
        raise AttnkitError(f"the prompt is {longest} tokens but the model's context is "
                           f"{ctx} (shorten the prompt)")
    check_rules(min_p, repetition_penalty, no_repeat_ngram_size)
    rep_penalty = repetition_penalty
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    B = len(prompts_ids)
    pads = torch.tensor([longest - len(p) for p in prompts_ids], device=device)  # (B,)
    ids = torch.tensor([[0] * (longest - len(p)) + list(p) for p in prompts_ids], device=device)
    keep = torch.arange(longest, device=device)[None, :] >= pads[:, None]  # (B, T) real tokens
    positions = (torch.arange(longest, device=device)[None, :] - pads[:, None]).clamp(min=0)
    generators = [None] * B
    if seed is not None:
        generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(B)]
    history = [list(p) for p in prompts_ids]
    new: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    filled = [len(p) for p in prompts_ids]  # each row's tokens in the cache, as if alone
    # Without a slide the cache needs the longest prompt plus the new tokens. With one it
    # needs ctx slots and is compacted when full, so a margin of ctx more slots makes that
    # once per ctx steps rather than every step.
    cache = model.new_cache(B, min(longest + max_new_tokens, 2 * ctx))
    try:
        logits = last_logits(model, ids, cache, positions=positions, key_padding_mask=keep)
        for i in range(max_new_tokens):
            last = history_rules(logits.float(), history, rep_penalty, no_repeat_ngram_size)
            step = [int(sample(last[b:b + 1], temperature=temperature, top_k=top_k, top_p=top_p,
                               min_p=min_p, generator=generators[b])[0]) for b in range(B)]
            for b, token in enumerate(step):
                if not finished[b]:
                    new[b].append(token)
                    history[b].append(token)
                    finished[b] = done is not None and done(b, new[b])
            if all(finished) or i == max_new_tokens - 1:  # no forward pass past the last token
                break
            # a full row slides (generate_ids's rule: its cache holds ctx tokens); a finished
            # row just rides along, its outputs unused
            slide = [b for b in range(B) if not finished[b] and filled[b] >= ctx]
            if cache.length == cache.max_len:  # every other row's keys fit in ctx - 1 slots
                keep = _keep_last(cache, keep, ctx - 1)
            keep = torch.cat([keep, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            # the new token's position in each row's window; a sliding or finished row's is
            # any valid one (its slot is overwritten or never read)
            positions = torch.tensor([[min(n, ctx - 1)] for n in filled], device=device)
            logits = last_logits(model, torch.tensor(step, device=device)[:, None], cache,
                                 positions=positions, key_padding_mask=keep)  # (B, V)
            filled = [n + 1 for n in filled]
            if slide:
                logits = _refill(model, cache, keep, logits, slide,
                                 [history[b][-(ctx - 1):] for b in slide])
                for b in slide:
                    filled[b] = ctx - 1
    finally:
        model.train(was_training)
    return new


def _refill(model: torch.nn.Module, cache, keep: torch.Tensor, logits: torch.Tensor,
            rows: list[int], windows: list[list[int]]) -> torch.Tensor:
    """Run ``windows`` (each ``ctx - 1`` ids) through ``model`` from an empty cache, as a
    lone row's slide does, and put their keys and values into the last slots of ``rows`` of
    ``cache`` (the slots before them masked out in ``keep``, in place); returns ``logits``
    (B, V) with those rows' replaced by the windows' last."""
    W = len(windows[0])
    fresh = model.new_cache(len(rows), W)
    out = last_logits(model, torch.tensor(windows, device=logits.device), fresh)  # (n, V)
    at = torch.tensor(rows, device=logits.device)
    S = cache.length
    for mine, theirs in zip(cache.k + cache.v, fresh.k + fresh.v, strict=True):
        mine[at, :, S - W:S] = theirs[:, :, :W]
    keep[at, :S - W] = False
    logits = logits.clone()
    logits[at] = out.to(logits.dtype)
    return logits


def generate_batch(model: torch.nn.Module, prompts: Sequence[str], max_new_tokens: int = 200, *,
                   tokenizer=None, stop: Sequence[str] | str | None = None, **kwargs) -> list[str]:
    """The continuation of every prompt, as :func:`attnkit.generate` would give for each alone
    (greedy results are identical), but computed as one left-padded batch.

    Keyword arguments as :func:`attnkit.generate.stream` (``details`` aside); with a ``seed``,
    row ``i`` samples with seed ``seed + i``. Each row stops at its first stop string.
    """
    tokenizer = need_tokenizer(tokenizer)
    stops = stop_strings(stop)
    done = None
    if stops:
        def done(i: int, ids: list[int]) -> bool:
            return first_stop(tokenizer.decode(ids), stops) >= 0
    rows = generate_batch_ids(model, [tokenizer.encode(p) for p in prompts], max_new_tokens,
                              done=done, **kwargs)
    return [cut_at_stop(tokenizer.decode(ids), stops) for ids in rows]
