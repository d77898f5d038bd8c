"""The encoder-decoder Transformer of *Attention Is All You Need* (Vaswani et al., 2017).

```
src_ids (B, S) ─ emb·√C + pos ─ n_encoder_layers × [self-attention (padding masked), FFN]
                                   └─ memory (B, S, C)
input_ids (B, T) ─ emb·√C + pos ─ n_decoder_layers × [causal self-attention,
                                                       cross-attention over memory, FFN]
                                   └─ lm_head (tied to the embeddings) -> logits (B, T, V)
```

Every knob of the decoder-only model applies to both stacks (``norm``,
``norm_position``, ``ffn``, ``pos``, ``n_kv_heads``, ``bias``, ``attention``,
``dropout``); the defaults are the paper's: post-LN, sinusoidal positions, ReLU,
one embedding matrix shared by source, target and output (3.4), embeddings
scaled by √d_model (3.4), label smoothing 0.1 (5.4).

Contract: ``logits, loss = model(input_ids, targets=None, *, src_ids, src_mask=None,
cache=None)``. ``input_ids`` are the decoder inputs (BOS + target[:-1]), ``targets``
the target shifted by one with -100 at padding, ``src_mask`` (B, S) is 1/True for
real source tokens and 0/False for padding. ``encode`` and ``decode`` are the two
halves; with a cache from ``new_cache`` the source is encoded once and each
decoding step costs one token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.config import Seq2SeqConfig
from attnkit.models.common import (
    ADDITIVE_POSITIONS,
    describe,
    init_weights,
    make_ffn,
    make_rope,
    make_self_attention,
    scale_residual_projections,
)
from attnkit.models.common import make_norm as make_norm_for
from attnkit.models.contract import Abilities
from attnkit.nn import Attention, Block, OutputHead
from attnkit.nn.cross_attention import CrossAttention, EncoderDecoderCache
from attnkit.nn.positional import LearnedPositional


class Seq2Seq(nn.Module):
    abilities = Abilities(translates=True)  # its attention maps pair a source and a target

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("Seq2SeqConfig.vocab_size must be set before building a model")
        self.cfg = cfg
        C = cfg.d_model

        def make_norm() -> nn.Module:
            return make_norm_for(cfg)

        # One vocabulary: with share_embeddings the source, target and output matrices are
        # one tensor (3.4); without, three.
        self.src_emb = nn.Embedding(cfg.vocab_size, C)
        self.tgt_emb = self.src_emb if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, C)
        self.emb_scale = math.sqrt(C) if cfg.scale_embeddings else 1.0
        pos_cls = ADDITIVE_POSITIONS.get(cfg.pos)
        self.src_pos = pos_cls(cfg.context_length, C) if pos_cls else None
        self.tgt_pos = pos_cls(cfg.context_length, C) if pos_cls else None
        self.src_emb_norm = make_norm() if cfg.embedding_norm else nn.Identity()
        self.tgt_emb_norm = make_norm() if cfg.embedding_norm else nn.Identity()
        rope = make_rope(cfg)
        self.drop = nn.Dropout(cfg.dropout)

        def self_attn(causal: bool) -> Attention:
            return make_self_attention(cfg, causal, rope)

        # The same Block as every family; a decoder layer adds cross-attention over the memory.
        self.encoder = nn.ModuleList(
            Block(self_attn(causal=False), make_ffn(cfg), make_norm(), make_norm(),
                  cfg.norm_position, cfg.dropout)
            for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(
            Block(self_attn(causal=True), make_ffn(cfg), make_norm(), make_norm(),
                  cfg.norm_position, cfg.dropout,
                  cross_attn=CrossAttention(C, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias,
                                            dropout=cfg.dropout, backend=cfg.attention),
                  cross_norm=make_norm())
            for _ in range(cfg.n_decoder_layers))
        # Post-LN already ends every layer with a norm; pre-LN needs one after each stack.
        pre = cfg.norm_position == "pre"
        self.encoder_norm = make_norm() if pre else nn.Identity()
        self.decoder_norm = make_norm() if pre else nn.Identity()
        self.lm_head = OutputHead(C, cfg.vocab_size, bias=False)
        self.apply(lambda m: init_weights(m, cfg.init_std))
        for stack, depth in ((self.encoder, cfg.n_encoder_layers), (self.decoder, cfg.n_decoder_layers)):
            scale_residual_projections(stack, cfg.init_std, depth)  # GPT-2's scaling, per stack
        if cfg.scale_embeddings:
            # tensor2tensor / fairseq: N(0, 1/C), so that the embedding scaled by sqrt(C) has
            # unit variance, the scale of the sinusoids it is added to.
            for emb in {self.src_emb, self.tgt_emb}:
                nn.init.normal_(emb.weight, mean=0.0, std=C ** -0.5)
        if cfg.share_embeddings:
            self.lm_head.weight = self.src_emb.weight

    # --- the two stacks -----------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, emb: nn.Embedding, pos: nn.Module | None,
               norm: nn.Module, start: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if self.cfg.pos == "learned" and start + T > self.cfg.context_length:
            raise ValueError(f"sequence of {start + T} tokens exceeds the learned position "
                             f"table of {self.cfg.context_length}")
        x = emb(ids) * self.emb_scale  # (B, T, C)
        if pos is not None:
            x = x + pos(torch.arange(start, start + T, device=ids.device))
        return self.drop(norm(x))

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None, *,
               need_weights: bool = False) -> torch.Tensor:
        """The encoder output ("memory") (B, S, C) for ``src_ids`` (B, S). Rows at padded
        positions are computed but meaningless; cross-attention never looks at them."""
        return self._encode(src_ids, src_mask, need_weights)[0]

    def _encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None, need_weights: bool
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self._embed(src_ids, self.src_emb, self.src_pos, self.src_emb_norm)
        keep = None if src_mask is None else src_mask.bool()  # (B, S)
        weights = []
        for block in self.encoder:
            x, w = block(x, key_padding_mask=keep, need_weights=need_weights)
            weights += w
        return self.encoder_norm(x), weights

    def decode(self, input_ids: torch.Tensor, memory: torch.Tensor | None,
               src_mask: torch.Tensor | None = None, *, cache: EncoderDecoderCache | None = None
               ) -> torch.Tensor:
        """Logits (B, T, V) for the decoder inputs ``input_ids`` (B, T) given the ``memory``.

        With a ``cache``, ``input_ids`` follow the cached tokens and the cache grows by
        T; the first call stores the cross-attention keys/values and ``src_mask``, and
        later calls may pass ``memory=None``.
        """
        x, _ = self._decode(input_ids, memory, src_mask, cache, need_weights=False)
        return self.lm_head(x)

    def _decode(self, input_ids: torch.Tensor, memory: torch.Tensor | None,
                src_mask: torch.Tensor | None, cache: EncoderDecoderCache | None, need_weights: bool
                ) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]]:
        start = cache.length if cache is not None else 0
        keep = None if src_mask is None else src_mask.bool()  # (B, S)
        if cache is not None:
            if cache.has_memory:
                keep = cache.memory_mask
            else:
                cache.memory_mask = keep
        x = self._embed(input_ids, self.tgt_emb, self.tgt_pos, self.tgt_emb_norm, start)
        self_w, cross_w = [], []
        for i, block in enumerate(self.decoder):
            x, w = block(x, cache=cache, layer=i, need_weights=need_weights, memory=memory,
                         memory_mask=keep)
            if w:  # [self, cross] with need_weights
                self_w.append(w[0])
                cross_w.append(w[1])
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.decoder_norm(x), (self_w, cross_w)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                src_ids: torch.Tensor | None = None, src_mask: torch.Tensor | None = None,
                cache: EncoderDecoderCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder inputs (B, T) and source (B, S) -> logits (B, T, V) and, with ``targets``
        (B, T), the label-smoothed mean cross-entropy over targets that are not -100.

        With a ``cache`` that already holds the source (every call after the first),
        ``src_ids`` may be omitted and the source is not encoded again.
        """
        memory = None
        if cache is None or not cache.has_memory:
            if src_ids is None:
                raise ValueError("an encoder-decoder needs src_ids (the source sequence), unless "
                                 "the cache already holds it")
            memory = self.encode(src_ids, src_mask)
        logits = self.decode(input_ids, memory, src_mask, cache=cache)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   ignore_index=-100, label_smoothing=self.cfg.label_smoothing)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, src_ids: torch.Tensor, input_ids: torch.Tensor,
                       src_mask: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        """Attention weights of every layer on the eager path, whatever the training back-end:
        ``encoder`` (B, nh, S, S), ``decoder`` (B, nh, T, T) and ``cross`` (B, nh, T, S)."""
        memory, enc_w = self._encode(src_ids, src_mask, need_weights=True)
        _, (self_w, cross_w) = self._decode(input_ids, memory, src_mask, None, need_weights=True)
        return {"encoder": enc_w, "decoder": self_w, "cross": cross_w}

    def new_cache(self, batch_size: int, max_len: int | None = None) -> EncoderDecoderCache:
        """An empty cache for ``batch_size`` sources and up to ``max_len`` decoder tokens
        (default ``context_length``), on the model's device and dtype."""
        p = self.src_emb.weight
        return EncoderDecoderCache(self.cfg.n_decoder_layers, batch_size, self.cfg.n_kv_heads,
                                   self.cfg.head_size, max_len or self.cfg.context_length,
                                   device=p.device, dtype=p.dtype)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; shared weights once, learned position tables excluded if asked."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and isinstance(self.src_pos, LearnedPositional):
            n -= self.src_pos.weight.numel() + self.tgt_pos.weight.numel()
        return n

    def describe(self) -> str:
        return describe(self, f"{self.cfg.n_encoder_layers}+{self.cfg.n_decoder_layers} layers")
