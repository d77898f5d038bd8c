"""A decoder-only Transformer (GPT-2 / Llama style) built from one composable block.

Every architectural choice in :class:`~attnkit.config.ModelConfig` is a name
looked up in a table beside the classes that implement it, so the model reads
top to bottom the same way whatever the knobs.

Contract shared by every family (:mod:`attnkit.models.contract`):
``logits, loss = model(input_ids, targets=None)``; a decoder generates
(``abilities.generates``): ``hidden(ids, cache=...)`` then ``lm_head``.

Plain PyTorch throughout; the CPU speed-ups are applied afterwards by
:func:`attnkit.backends.accelerate`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnkit.config import ModelConfig
from attnkit.models.common import (
    describe,
    init_weights,
    make_additive_positions,
    make_blocks,
    make_final_norm,
    make_rope,
    scale_residual_projections,
)
from attnkit.models.contract import Abilities
from attnkit.nn import KVCache, OutputHead
from attnkit.nn.kv_cache import StaticKVCache
from attnkit.nn.positional import LearnedPositional


class Decoder(nn.Module):
    abilities = Abilities(generates=True, compiles=True, attention_maps=True)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set before building a model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = make_additive_positions(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = make_blocks(cfg, cfg.n_layers, causal=True, rope=make_rope(cfg))
        self.final_norm = make_final_norm(cfg)
        self.lm_head = OutputHead(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # Press & Wolf (2017); the 2017 paper shares them too
            self.lm_head.weight = self.tok_emb.weight
        self.apply(lambda m: init_weights(m, cfg.init_std))
        scale_residual_projections(self, cfg.init_std, cfg.n_layers)
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        if cfg.scale_embeddings:  # unit scale after the sqrt(d_model) factor (2017, 3.4)
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.d_model ** -0.5)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, positions: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``input_ids`` (B, T) -> logits (B, T, V) and, with ``targets`` (B, T), the mean
        cross-entropy (positions whose target is -100 are ignored). ``cache``, ``positions``
        and ``key_padding_mask`` as in :meth:`hidden_states`."""
        x = self.hidden(input_ids, cache=cache, positions=positions,
                        key_padding_mask=key_padding_mask)  # (B, T, C)
        if targets is None:
            return self.lm_head(x), None  # (B, T, V)
        return self.lm_head.logits_and_loss(x, targets)

    def hidden(self, input_ids: torch.Tensor, *, cache: KVCache | None = None,
               positions: torch.Tensor | None = None,
               key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C), before the output layer; see :meth:`hidden_states`."""
        return self.hidden_states(input_ids, cache=cache, positions=positions,
                                  key_padding_mask=key_padding_mask)[0]

    def hidden_states(self, input_ids: torch.Tensor, *, cache: KVCache | None = None,
                      need_weights: bool = False, positions: torch.Tensor | None = None,
                      key_padding_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final hidden states (B, T, C), and with ``need_weights`` the attention weights
        of every layer, each (B, nh, T, S), computed on the eager path.

        With a ``cache``, ``input_ids`` are the tokens that follow the cached ones; the cache
        grows by T. For batches of left-padded sequences: ``positions`` (B, T) are each row's
        token positions (0 at its first real token; default cache.length + 0 .. T - 1 for
        every row) and ``key_padding_mask`` (B, S), S = cached + T, is True at real tokens.
        """
        B, T = input_ids.shape
        if self.pos_emb is not None and self.cfg.pos == "learned" and \
                not (cache is not None and cache.static):  # a static cache is sized to fit
            start = cache.length if cache is not None else 0
            last = start + T - 1 if positions is None else int(positions.max())
            if last >= self.cfg.context_length:
                raise ValueError(f"sequence of {last + 1} tokens exceeds the learned position "
                                 f"table of {self.cfg.context_length}")
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.emb_scale != 1.0:
            x = x * self.emb_scale
        if self.pos_emb is not None:
            pos = positions if positions is not None else \
                cache.positions(T, input_ids.device) if cache is not None else \
                torch.arange(T, device=input_ids.device)
            x = x + self.pos_emb(pos)  # (T, C) or (B, T, C)
        x = self.drop(x)
        weights = []
        for i, block in enumerate(self.blocks):
            x, w = block(x, cache=cache, layer=i, need_weights=need_weights,
                         key_padding_mask=key_padding_mask, positions=positions)
            weights += w
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x), weights

    @torch.no_grad()
    def attention_maps(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer, (B, nh, T, T) each, whatever the training back-end."""
        return self.hidden_states(input_ids, need_weights=True)[1]

    def new_cache(self, batch_size: int, max_len: int | None = None, *, static: bool = False
                  ) -> KVCache:
        """An empty KV cache on the model's device and dtype for up to ``max_len`` tokens
        (default ``context_length``); ``static``: a :class:`StaticKVCache` of the whole
        context, for a compiled decode step."""
        p = self.tok_emb.weight
        cache = StaticKVCache if static else KVCache
        return cache(self.cfg.n_layers, batch_size, self.cfg.n_kv_heads, self.cfg.head_size,
                     self.cfg.context_length if static else max_len or self.cfg.context_length,
                     device=p.device, dtype=p.dtype)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; tied weights once, learned position table excluded if asked."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and isinstance(self.pos_emb, LearnedPositional):
            n -= self.pos_emb.weight.numel()
        return n

    def describe(self) -> str:
        return describe(self, f"{self.cfg.n_layers} layers")
