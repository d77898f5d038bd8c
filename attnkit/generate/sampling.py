"""Sampling rules as small pure functions on logits.

Each takes logits of shape (..., V) and returns logits of the same shape in
which excluded tokens are ``-inf``, so the rules compose in any order before
one final softmax. "Predict, sample, repeat": the model predicts these
logits, :func:`sample` draws one token, and the caller appends it and asks again.
"""

from collections.abc import Sequence

import torch


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by T: T < 1 sharpens the distribution towards the argmax, T > 1 flattens it."""
    if temperature <= 0:
        raise ValueError("temperature must be positive; use greedy decoding for T = 0")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits (ties at the k-th value are all kept)."""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set of most likely
    tokens whose probabilities sum to at least p. The most likely token always survives."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly ahead of each token
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float | None) -> torch.Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times that of the most likely
    token (min-p sampling). The most likely token always survives; 0 or None is a no-op."""
    if min_p is None or min_p <= 0:
        return logits
    if min_p > 1:
        raise ValueError("min_p must be in [0, 1]")
    probs = logits.float().softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (..., 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def _per_row(previous_ids, logits: torch.Tensor) -> list[list[int]]:
    """``previous_ids`` as one id list per row of ``logits`` flattened to (N, V): a flat
    sequence applies to every row; a nested one (or a 2-D tensor) gives one list per row."""
    if isinstance(previous_ids, torch.Tensor):
        previous_ids = previous_ids.tolist()
    previous_ids = list(previous_ids)
    n_rows = logits[..., 0].numel()
    if previous_ids and isinstance(previous_ids[0], Sequence):
        if len(previous_ids) != n_rows:
            raise ValueError(f"{len(previous_ids)} id lists for {n_rows} rows of logits")
        return [list(map(int, row)) for row in previous_ids]
    return [list(map(int, previous_ids))] * n_rows


def repetition_penalty(logits: torch.Tensor, previous_ids: Sequence | torch.Tensor,
                       penalty: float | None) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019): the logit of every token already in
    ``previous_ids`` is divided by ``penalty`` if positive and multiplied by it if negative,
    so ``penalty > 1`` makes repeats less likely. 1 or None is a no-op."""
    if penalty is None or penalty == 1.0:
        return logits
    if penalty <= 0:
        raise ValueError("repetition_penalty must be positive")
    rows = _per_row(previous_ids, logits)
    flat = logits.reshape(-1, logits.shape[-1]).clone()
    for r, ids in enumerate(rows):
        if not ids:
            continue
        seen = torch.tensor(sorted(set(ids)), device=logits.device)
        x = flat[r, seen]
        flat[r, seen] = torch.where(x > 0, x / penalty, x * penalty)
    return flat.view_as(logits)


def no_repeat_ngram(logits: torch.Tensor, previous_ids: Sequence | torch.Tensor,
                    n: int | None) -> torch.Tensor:
    """Ban every token that would complete an ``n``-gram already present in ``previous_ids``
    (the last ``n - 1`` ids are the prefix of the next n-gram). 0 or None is a no-op. A row in
    which every token would be banned is left as it was, so some token can always be drawn."""
    if not n or n <= 0:
        return logits
    rows = _per_row(previous_ids, logits)
    flat = logits.reshape(-1, logits.shape[-1]).clone()
    for r, ids in enumerate(rows):
        if len(ids) < n:
            continue
        prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
        banned = {ids[i + n - 1] for i in range(len(ids) - n + 1)
                  if tuple(ids[i:i + n - 1]) == prefix}
        if not banned:
            continue
        row = flat[r].index_fill(0, torch.tensor(sorted(banned), device=logits.device),
                                 float("-inf"))
        if torch.isfinite(row).any():
            flat[r] = row
    return flat.view_as(logits)


def history_rules(logits: torch.Tensor, history: Sequence | torch.Tensor,
                  rep_penalty: float | None, ngram: int | None) -> torch.Tensor:
    """The rules that depend on the ids so far: :func:`repetition_penalty`, then
    :func:`no_repeat_ngram`, with ``history`` as their ``previous_ids`` (the prompt and the
    output; one list per row). Sampling, batched generation and beam search (each beam
    with its own history) all apply them through this one function, before :func:`sample`
    or the beam's log-softmax."""
    return no_repeat_ngram(repetition_penalty(logits, history, rep_penalty), history, ngram)


def sample(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None,
           min_p: float | None = None) -> torch.Tensor:
    """Draw one token id per row of ``logits`` (B, V) -> (B,). ``temperature == 0`` is greedy.

    The rules apply in the order temperature, top-k, top-p, min-p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    logits = min_p_filter(top_p_filter(top_k_filter(logits, top_k), top_p), min_p)
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (B, V), index i with probability probs[..., i]: the
    inverse of the cumulative distribution (sums in float64, a uniform draw, a binary search).
    ~40 us for GPT-2's 50257 tokens on a CPU, where ``torch.multinomial`` took ~790 us, most
    of a small model's sampled decode step. A token of probability 0 is never drawn."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    u = torch.rand(cdf[..., :1].shape, dtype=torch.float64, device=probs.device,
                   generator=generator) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)
    idx = idx.squeeze(-1)  # (B,)
    # u * total can round up to the total itself, past every token; then the last token of
    # non-zero probability (probabilities are never negative) is the one the draw ends in
    stray = probs.gather(-1, idx[..., None]).squeeze(-1) == 0
    if bool(stray.any()):
        last = (probs > 0).cumsum(dim=-1).argmax(dim=-1)  # first index of the final count
        idx = torch.where(stray, last, idx)
    return idx
