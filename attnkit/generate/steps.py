"""One decoding step through the family contract (:mod:`attnkit.models.contract`): what a
generating model is asked for, written once for the single, batch and beam decoders."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.errors import AttnkitError


def require(model: nn.Module, ability: str, what: str) -> None:
    """Raise a one-line error unless ``model.abilities`` has ``ability``."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        raise AttnkitError(f"{what} takes the model, not what attnkit.load returned: pass "
                           f"run.model with tokenizer=run.tokenizer, or call run.generate(...)")
    abilities = getattr(model, "abilities", None)
    if abilities is None or not getattr(abilities, ability):
        raise AttnkitError(f"{what} needs a model that {ability.replace('_', ' ')}; a "
                           f"{type(model).__name__} does not")


def last_hidden(model: nn.Module, ids: torch.Tensor, cache, **inputs) -> torch.Tensor:
    """The final hidden state at the last position (B, C) of ``ids`` (B, T) after ``cache``;
    ``inputs`` are ``positions`` / ``key_padding_mask`` for a left-padded batch."""
    return model.hidden(ids, cache=cache, **inputs)[:, -1]


def last_logits(model: nn.Module, ids: torch.Tensor, cache, **inputs) -> torch.Tensor:
    """The next-token logits (B, V) after ``ids`` (B, T): the output layer on the last
    position alone (a (B, T, V) tensor is never made)."""
    return model.lm_head(last_hidden(model, ids, cache, **inputs))


def check_compiles(model: nn.Module) -> None:
    """Refuse ``compile=True`` for a model without a compiled decode step."""
    if not model.abilities.compiles:
        raise AttnkitError(f"compiled decoding is for Transformer decoders, not "
                           f"{type(model).__name__} (leave --compile off)")
