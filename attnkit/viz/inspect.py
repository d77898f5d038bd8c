"""The numbers behind ``attnkit inspect`` (torch only, no plotting).

- :func:`attention_weights`: the attention of every layer and head, (L, nh, T, T).
- :func:`attention_entropy`: per layer and head, the entropy of each query's attention row,
  averaged over the queries (nats; 0 = always one key, ``log T`` at most).
- :func:`next_token`: ``softmax(logits / T)`` at the last position for several temperatures.
- :func:`masked_logits`: an encoder's masked-LM logits at the masked positions, for the same
  per-temperature lists (the ``[MASK]`` view).
- :func:`embedding_pca`: the token embedding table projected on its first principal axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnkit.errors import AttnkitError

_SHOWN = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def token_label(tokenizer, token_id: int) -> str:
    """A printable label for one token: whitespace made visible, specials as ``<|name|>``."""
    if tokenizer is None or token_id >= tokenizer.vocab_size:
        return f"#{token_id}"
    try:
        text = tokenizer.decode([token_id], skip_special=False)
    except (AttnkitError, TypeError, ValueError, KeyError):
        return f"#{token_id}"
    if text == "":
        return f"#{token_id}"
    return "".join(_SHOWN.get(c, c if c.isprintable() else f"\\x{ord(c):02x}") for c in text)


@torch.no_grad()
def attention_weights(model, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights (L, nh, T, T) of the first sequence in ``ids`` (B, T), float32 on CPU."""
    maps = model.attention_maps(ids)
    return torch.stack([m[0].float().cpu() for m in maps])


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy in nats of the attention rows: (L, nh, T, T) -> (L, nh)."""
    p = weights.clamp_min(0)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (L, nh, T); 0 * log 0 counted as 0
    return ent.mean(-1)


def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float32; the temperature must be positive."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return torch.softmax(logits.float() / temperature, dim=-1)


@torch.no_grad()
def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits (V,) for the token after the first sequence of ``ids`` (B, T)."""
    logits, _ = model(ids)
    return logits[0, -1].float().cpu()


@torch.no_grad()
def masked_logits(model, ids: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Masked-LM logits (M, V) at ``positions`` of the first sequence of ``ids`` (B, T).

    ``model`` is an encoder with ``abilities.masked_lm``. Read from the masked-LM head
    directly: ``model(ids)`` would give class logits for an encoder that also has a
    classifier."""
    if not model.abilities.masked_lm:
        raise ValueError("this encoder has no masked-LM head")
    hidden, _ = model.hidden_states(ids)  # (B, T, C)
    return model.mlm_head(hidden[0, list(positions)]).float().cpu()  # (M, V)


def next_token(logits: torch.Tensor, temperatures: Sequence[float], top: int, tokenizer=None
               ) -> list[dict]:
    """For each temperature: the top ``top`` tokens with their probabilities, the highest
    probability, the mass of the top tokens and the entropy (nats) of the distribution."""
    out = []
    for t in temperatures:
        probs = temperature_probs(logits, t)
        k = min(top, probs.numel())
        values, idx = probs.topk(k)
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum()
        out.append({
            "temperature": float(t),
            "top": [{"id": int(i), "token": token_label(tokenizer, int(i)), "prob": float(v)}
                    for v, i in zip(values, idx)],
            "max_prob": float(values[0]),
            "top_mass": float(values.sum()),
            "entropy": float(entropy),
        })
    return out


@torch.no_grad()
def embedding_pca(weight: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``weight`` (V, C) on the first ``k`` principal axes -> (V, k) coordinates
    and the fraction of variance each axis explains (k,). Computed by an exact SVD of the
    centred table; each axis's sign is fixed so its largest loading is positive."""
    x = weight.detach().float().cpu()
    x = x - x.mean(0, keepdim=True)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(k, s.numel())
    axes = vh[:k]  # (k, C)
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    coords = (x @ axes.T) * signs
    total = (s ** 2).sum()
    explained = (s[:k] ** 2) / total if total > 0 else torch.zeros(k)
    return coords, explained


def max_entropy(n: int) -> float:
    """The largest possible entropy over ``n`` keys, ``log n``."""
    return math.log(n) if n > 0 else 0.0
