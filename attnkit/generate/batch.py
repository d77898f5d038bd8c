"""Several prompts at once: left-pad them to one length and decode all rows together.

Row ``b`` with ``pad_b`` padding tokens on its left sees its first real token at
position 0, exactly as when it runs alone: the model gets per-row ``positions`` and a
key padding mask, so learned, sinusoidal, RoPE and ALiBi positions all line up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.errors import AttnkitError
from attnkit.generate.sampling import no_repeat_ngram, sample
from attnkit.generate.sampling import repetition_penalty as penalize_repeats


@torch.inference_mode()
def generate_batch_ids(model: torch.nn.Module, prompts_ids: Sequence[Sequence[int]],
                       max_new_tokens: int, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None,
                       seed: int | None = None, min_p: float | None = None,
                       repetition_penalty: float | None = None,
                       no_repeat_ngram_size: int | None = None,
                       done=None) -> list[list[int]]:
    """The new ids of every prompt, decoded together with one KV cache.

    Row ``i`` samples with its own generator seeded ``seed + i``. The longest prompt plus
    ``max_new_tokens`` must fit in the context (no sliding window in a batch).
    ``done(i, ids)``, optional, says when row ``i`` may stop; generation ends when
    every row is done.
    """
    from attnkit.generate import _check_rules

    ctx = model.cfg.context_length
    if not prompts_ids:
        return []
    if any(len(p) == 0 for p in prompts_ids):
        raise AttnkitError("a prompt is empty after tokenization (give at least one character)")
    longest = max(len(p) for p in prompts_ids)
    if longest + max_new_tokens > ctx:
        raise AttnkitError(f"the longest prompt ({longest} tokens) plus {max_new_tokens} new "
                           f"tokens exceeds the model's context of {ctx} (batched generation "
                           f"does not slide the window; shorten the prompt or generate fewer)")
    _check_rules(min_p, repetition_penalty, no_repeat_ngram_size)
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
    cache = model.new_cache(B, longest + max_new_tokens)
    from attnkit.generate import last_only  # the package imports this module at its end

    try:
        logits, _ = model(ids, cache=cache, positions=positions, key_padding_mask=keep,
                          **last_only(model))
        for i in range(max_new_tokens):
            last = no_repeat_ngram(penalize_repeats(logits[:, -1].float(), history, rep_penalty),
                                   history, no_repeat_ngram_size)
            step = [int(sample(last[b:b + 1], temperature=temperature, top_k=top_k, top_p=top_p,
                               min_p=min_p, generator=generators[b])[0]) for b in range(B)]
            for b, token in enumerate(step):
                if not finished[b]:
                    new[b].append(token)
                    history[b].append(token)
                    finished[b] = done is not None and done(b, new[b])
            if all(finished) or i == max_new_tokens - 1:  # no forward pass past the last token
                break
            keep = torch.cat([keep, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            logits, _ = model(torch.tensor(step, device=device)[:, None], cache=cache,
                              positions=positions, key_padding_mask=keep)
    finally:
        model.train(was_training)
    return new


def generate_batch(model: torch.nn.Module, prompts: Sequence[str], max_new_tokens: int = 200, *,
                   tokenizer=None, stop: Sequence[str] | str | None = None, **kwargs) -> list[str]:
    """The continuation of every prompt, as :func:`attnkit.generate` would give for each alone
    (greedy results are identical), but computed as one left-padded batch.

    Keyword arguments as :func:`attnkit.generate.stream` (``details`` aside); with a ``seed``,
    row ``i`` samples with seed ``seed + i``. Each row stops at its first stop string.
    """
    from attnkit.generate import _first_stop, _stops, _tokenizer

    tokenizer = _tokenizer(model, tokenizer)
    stops = _stops(stop)
    done = None
    if stops:
        def done(i: int, ids: list[int]) -> bool:
            return _first_stop(tokenizer.decode(ids), stops) >= 0
    rows = generate_batch_ids(model, [tokenizer.encode(p) for p in prompts], max_new_tokens,
                              done=done, **kwargs)
    texts = []
    for ids in rows:
        text = tokenizer.decode(ids)
        at = _first_stop(text, stops)
        texts.append(text if at < 0 else text[:at])
    return texts
