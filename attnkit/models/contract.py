"""The contract every model family keeps, so that no caller checks a class, a family name or
a signature.

A caller asks a model what it can do through ``model.abilities`` and then calls the methods
that ability promises::

    logits, loss = model(input_ids, targets=None, **inputs)    # every family

    if model.abilities.generates:          # decoder, lstm: "predict, sample, repeat"
        cache = model.new_cache(batch_size, max_len)
        hidden = model.hidden(ids, cache=cache)  # (B, T, C) final hidden states; cache grows by T
        logits = model.lm_head(hidden)     # (B, T, V)
        tokens = model.lm_head.greedy(hidden[:, -1])  # (B,), the argmax of those logits

    if model.abilities.compiles:           # decoder: a cache of fixed shapes for torch.compile
        static = model.new_cache(batch_size, static=True)

    if model.abilities.translates:         # seq2seq: a source, then the target token by token
        cache = model.new_cache(batch_size, max_len)
        memory = model.encode(src_ids, src_mask)          # (B, S, C)
        logits = model.decode(ids, memory, src_mask, cache=cache)   # (B, T, V)
        maps = model.attention_maps(src_ids, ids, src_mask)  # {"encoder", "decoder", "cross"}

    if model.abilities.embeds:             # encoder: sentence vectors
        vectors = model.embed(input_ids, attention_mask)  # (B, C)

    if model.abilities.attention_maps:     # decoder, encoder: self-attention over one input
        maps = model.attention_maps(input_ids, **inputs)  # [(B, nh, T, T)] per layer

The forward pass returns ``(logits, loss)``: ``loss`` is None without targets. ``logits`` is
always the model's output, with one exception that a caller opts into: a model accelerated
for training by :func:`attnkit.backends.accelerate` (``purpose="train"``) fuses its output
layer with the loss when ``targets`` are given in training mode and returns ``(None, loss)``,
because a training step reads only the loss and the (B, T, V) logits are the largest tensor of a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Abilities:
    """What a model can do beyond ``forward``; each flag promises the methods named in the
    module doc."""

    generates: bool = False  # decode one token after another from a cache
    compiles: bool = False  # a compiled decode step: new_cache(B, static=True), fixed shapes
    translates: bool = False  # encode a source, decode a target (needs ``src_ids``)
    embeds: bool = False  # sentence vectors (``embed``)
    attention_maps: bool = False  # self-attention weights of every layer over one input
    masked_lm: bool = False  # logits at [MASK] positions (``forward`` without labels)
    classifies: bool = False  # class logits (``forward(..., labels=)``)
    images: bool = False  # reads images: ``forward(pixel_values (B, C, H, W), labels=None)``


@runtime_checkable
class Family(Protocol):
    """What every family is: a module with a config, its abilities and the shared forward."""

    cfg: Any
    abilities: Abilities

    def __call__(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                 **inputs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def num_params(self, non_embedding: bool = True) -> int: ...

    def describe(self) -> str: ...
